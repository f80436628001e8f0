"""The recorded SQL conversations replayed whole, in pieces and pipelined: queries, times,
trace context, errors, namespace and system."""
from __future__ import annotations

import pytest

from agent.protocols.router import ProtocolRouter
from agent.protocols.sql_base import COUNTERS as SQL_COUNTERS
from sql_replay import (CASES, IDS, ITEM_SQL_EXCHANGE, ITEM_SQL_PREPARED, ITEM_SQL_REQUEST, MY, MY_ERRORS,
                        MY_EXPECTED, PG, PG_ERRORS, PG_EXPECTED, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN,
                        TRACEPARENT, Replay, check_case, check_pairing, exchanged, feed, login_length,
                        my_writes, pg_writes, replay, writes)


def test_count_keys_registered():
    counts = ProtocolRouter().counts
    assert {c.key for c in SQL_COUNTERS} <= set(counts)
    assert all(c.key.startswith("sql_") and c.metric.name.startswith("sql_")
               for c in SQL_COUNTERS)


@pytest.mark.parametrize("protocol,name", CASES, ids=IDS)
@pytest.mark.parametrize("side,role", [("client", None), ("client", ROLE_UNKNOWN),
                                       ("server", None), ("server", ROLE_UNKNOWN)],
                         ids=["client", "client-inferred", "server", "server-inferred"])
def test_fixture_conversations(protocol, name, side, role):
    handler, out, counts, errors = replay(protocol, name, side, role)
    check_case(protocol, name, out, counts, errors)
    conn = out[0][1]
    assert conn.role == (ROLE_CLIENT if side == "client" else ROLE_SERVER)
    assert counts["connections_opened"] == 1 and len(handler) == 1
    out2 = []
    handler.close(7, out2)
    assert out2 == [] and len(handler) == 0 and counts["connections_closed"] == 1
    assert counts["sql_requests_without_response"] == 0


@pytest.mark.parametrize("protocol,name", CASES, ids=IDS)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_fixture_conversations_in_pieces(protocol, name, chunk):
    """Each write split into reads of `chunk` bytes: messages are put
    together across events."""
    _, out, counts, errors = replay(protocol, name, "server", chunk=chunk)
    check_case(protocol, name, out, counts, errors)


def test_times_client_and_server_side():
    conversation = pg_writes("psycopg_simple")
    # Events: 1 startup, 2 auth..Z, 3 Q, 4 its answer, 5 Q, 6 its answer, 7 Terminate.
    _, out, _, _ = replay(PG, "psycopg_simple", "client")
    first, second = exchanged(out)
    assert (first.start_ns, first.end_ns) == (3000, 4500)
    assert (second.start_ns, second.end_ns) == (5000, 6500)
    assert first.tid == 301        # the thread that wrote it
    _, out, _, _ = replay(PG, "psycopg_simple", "server")
    first, second = exchanged(out)
    assert (first.start_ns, first.end_ns) == (3500, 4500)   # after the read, to the write
    assert first.tid == 301        # the thread that read it
    assert len(conversation) == 7


def test_mysql_times_and_items_order():
    _, out, _, _ = replay(MY, "pymysql_text", "client")
    kinds = [item[0] for item in out]
    assert kinds == [ITEM_SQL_REQUEST, ITEM_SQL_EXCHANGE] * 7
    for q in exchanged(out):
        assert q.start_ns % 1000 == 0 and q.end_ns == q.start_ns + 1500


def test_sqlcommenter_trace_context():
    _, out, counts, errors = replay(PG, "psycopg_sqlcommenter")
    (q,) = check_pairing(out)
    assert q.traceparent == TRACEPARENT
    assert q.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert "/*action=" in q.text          # the raw text: the span factory sanitises
    _, out, _, _ = replay(PG, "psycopg_simple")
    assert all(q.traceparent is None and q.tracestate is None for q in exchanged(out))


def test_pg_errors_are_error_codes_only():
    _, out, _, _ = replay(PG, "psycopg_errors")
    done = exchanged(out)
    assert [q.error_code for q in done] == ["23505", "42601", None]
    for q in done:      # the messages quote values: not kept
        assert "duplicate" not in repr([getattr(q, slot) for slot in q.__slots__])


def test_mysql_init_db_changes_namespace():
    handler, out, _, _ = replay(MY, "pymysql_init_db")
    done = exchanged(out)
    assert [q.namespace for q in done] == [None, None, "shop"]
    assert handler.connections[7].namespace == "other"
    assert len(out) == 6       # COM_INIT_DB, COM_PING and COM_QUIT make no items


def test_mysql_system_from_greeting():
    conversation = my_writes("pymysql_text")
    greeting = conversation[0][1].replace(b"MariaDB", b"Mxxxxxx")
    r = Replay(MY)
    r.extend([("s", greeting)] + conversation[1:])
    _, out = feed(r.records)
    assert {q.system for q in exchanged(out)} == {"mysql"}


def test_pg_namespace_defaults_to_user():
    body = b"user\0alice\0\0"
    startup = (8 + len(body)).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + body
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend([("c", startup)] + conversation[1:])
    _, out = feed(r.records)
    assert {q.namespace for q in exchanged(out)} == {"alice"}


# A MySQL client learns a statement's id from the answer to its prepare:
# it cannot send the execute before reading that.
PIPELINED = [(p, n) for p, n in CASES if n != "connector_prepared"]


@pytest.mark.parametrize("protocol,name", PIPELINED,
                         ids=[i for i, c in zip(IDS, CASES) if c in PIPELINED])
def test_pipelined(protocol, name):
    """Every request written before any answer (after the login), and all
    the answers in one read: each completes, in order."""
    conversation = writes(protocol, name)
    setup = login_length(protocol, conversation)
    head, rest = conversation[:setup], conversation[setup:]
    requests = b"".join(d for s, d in rest if s == "c")
    answers = b"".join(d for s, d in rest if s == "s")
    r = Replay(protocol, "client")
    r.extend(head + [("c", requests), ("s", answers)])
    _, out = feed(r.records)
    done = check_pairing(out)
    expected = (PG_EXPECTED if protocol == PG else MY_EXPECTED)[name]
    assert len(done) == (expected if isinstance(expected, int) else len(expected))
    if not isinstance(expected, int):
        assert [q.text for q in done] == expected
    codes = (PG_ERRORS if protocol == PG else MY_ERRORS).get(name, [None] * len(done))
    assert [q.error_code for q in done] == codes
    # A prepare (Parse, Sync: psycopg's and pgbench's) is a request that
    # ends without a span; the statement it prepared runs later.
    prepared = [item[2] for item in out if item[0] == ITEM_SQL_PREPARED]
    assert {q.text for q in prepared} <= {q.text for q in done}
    prepares = len(prepared)
    kinds = [item[0] for item in out if item[0] != ITEM_SQL_PREPARED]
    assert kinds == [ITEM_SQL_REQUEST] * (len(done) + prepares) + [ITEM_SQL_EXCHANGE] * len(done)


def test_pg_pipelined_error_skips_rest_of_unit():
    """Executes after a failed one in the same Sync unit get no item."""
    def msg(kind, body):
        return kind + (len(body) + 4).to_bytes(4, "big") + body
    parse = msg(b"P", b"\0SELECT 1/0\0\0\0")
    bind = msg(b"B", b"\0\0\0\0\0\0\0\0")
    execute = msg(b"E", b"\0\0\0\0\0")
    sync = msg(b"S", b"")
    error = msg(b"E", b"SERROR\0C22012\0Mdivision by zero\0\0")
    answer = msg(b"1", b"") + msg(b"2", b"") + error + msg(b"Z", b"I")
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:2])
    r.add("c", parse + bind + execute + bind + execute + sync)
    r.add("s", answer)
    r.extend(conversation[2:4])
    counts = {}
    _, out = feed(r.records, counts=counts)
    done = exchanged(out)
    assert [(q.text, q.error_code) for q in done] == [("SELECT 1/0", "22012"),
                                                        (PG_EXPECTED["psycopg_simple"][0], None)]
    assert counts["sql_executes_skipped"] == 1
    assert len([i for i in out if i[0] == ITEM_SQL_REQUEST]) == 3
