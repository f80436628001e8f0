"""`otel_ebpf_parse_errors_total{protocol, reason}` is exported at 0 for
every reason a handler declares (agent/counters.py ParseErrors), from the
agent's start; the declarations cover every reason the handlers and their
parsers can give."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.protocols.http1 import Http1Handler
from agent.protocols.http2 import Http2Handler
from agent.protocols.memcached import MemcachedHandler
from agent.protocols.mysql import MysqlHandler
from agent.protocols.postgres import PostgresHandler
from agent.protocols.redis import RedisHandler
from agent.protocols.router import HANDLERS, ProtocolRouter
from agent.runtime.metrics import parse_error_samples

AGENT = Path(__file__).resolve().parents[2] / "agent"
# The modules whose reasons reach each handler's parse_error().
SOURCES = {
    Http1Handler: ("parsers/http1.py", "protocols/http1.py"),
    Http2Handler: ("parsers/h2_frames.py", "parsers/http2.py", "protocols/http2.py"),
    PostgresHandler: ("parsers/postgres.py", "protocols/postgres.py", "protocols/sql_base.py"),
    MysqlHandler: ("parsers/mysql.py", "parsers/mysql_wire.py", "protocols/mysql.py",
                   "protocols/sql_base.py"),
    RedisHandler: ("parsers/resp.py", "parsers/redis.py", "protocols/redis.py",
                   "protocols/cache_base.py"),
    MemcachedHandler: ("parsers/memcached.py", "protocols/memcached.py",
                       "protocols/cache_base.py"),
}
_REASON_CALLS = {"parse_error", "_lose_sync"}


def _strings(node) -> set[str]:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and n.value}


def reasons_in(path: Path) -> set[str]:
    """The reason literals of a module: in a tuple returned with INVALID or
    INVALID_BYTES, returned by a function named *error*, assigned to
    `error` or `self._reason`, or passed to parse_error() / _lose_sync()."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        for node in ast.walk(func):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and any(
                    isinstance(e, ast.Name) and e.id in ("INVALID", "INVALID_BYTES")
                    for e in node.value.elts):
                found |= {e.value for e in node.value.elts
                          if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value}
            elif isinstance(node, ast.Return) and "error" in func.name and \
                    isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                found |= _strings(node.value)
            elif isinstance(node, ast.Assign) and any(
                    (isinstance(t, ast.Name) and t.id == "error")
                    or (isinstance(t, ast.Attribute) and t.attr == "_reason")
                    for t in node.targets):
                found |= _strings(node.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in _REASON_CALLS and node.args:
                found |= _strings(node.args[0])
    return found


@pytest.mark.parametrize("handler", HANDLERS, ids=[h.NAME for h in HANDLERS])
def test_each_handler_declares_every_reason_it_can_count(handler):
    declared = handler.PARSE_ERRORS
    assert declared is not None and declared.protocol == handler.NAME
    assert len(set(declared.reasons)) == len(declared.reasons) > 0
    found = set().union(*(reasons_in(AGENT / source) for source in SOURCES[handler]))
    assert found, handler
    assert found <= set(declared.reasons), sorted(found - set(declared.reasons))


def test_a_fresh_router_exports_every_declared_reason_at_zero():
    router = ProtocolRouter()
    samples = dict(parse_error_samples(router.parse_error_declarations, router.parse_errors))
    assert {protocol for protocol, _ in samples} == {"http1", "http2", "postgresql", "mysql",
                                                 "redis", "memcached"}
    assert set(samples.values()) == {0}
    for handler in HANDLERS:
        for reason in handler.PARSE_ERRORS.reasons:
            assert samples[(handler.NAME, reason)] == 0
    assert ("http2", "resync") in samples and ("postgresql", "bad_parse") in samples


def test_counted_and_undeclared_reasons_show_with_their_values():
    router = ProtocolRouter()
    router.parse_errors[("http2", "resync")] = 3
    router.parse_errors[("http1", "something_new")] = 1
    samples = dict(parse_error_samples(router.parse_error_declarations, router.parse_errors))
    assert samples[("http2", "resync")] == 3
    assert samples[("http1", "something_new")] == 1
    assert samples[("http2", "bad_frame")] == 0
