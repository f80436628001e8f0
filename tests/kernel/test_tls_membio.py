"""TLS over OpenSSL memory BIOs: programs that never make a socket call
inside SSL_read/SSL_write (Node.js https, Python asyncio), traced with
their SSL objects bound to sockets by the bytes of their TLS records."""
from __future__ import annotations

import shutil
import sys
import subprocess

import pytest

from agent.capture.tls_membio import RESULTS
from agent.spans.model import KIND_CLIENT, KIND_SERVER
from conftest import LOADER_ARGS, PEERS, free_port, wait_for_port
from databases import (DB_COLLECTION_NAME, DB_NAMESPACE, DB_OPERATION_NAME, DB_SYSTEM_NAME,
                       PG_USER, wait_sql_spans)
from databases import postgres_fixture  # noqa: F401  (fixture)
from test_http1_e2e import TRACE_ID, wait_spans

REQUESTS = 20
TRACEPARENT_PREFIX = f"00-{TRACE_ID}-"


@pytest.fixture(params=list(LOADER_ARGS))
def agent_loader(request) -> str:
    """Both front ends build the memory-BIO binding (bpf/tls_membio.h)."""
    return request.param


def parent_id(i: int) -> str:
    return f"{i:016x}"


def on_port(port: int, kind: int):
    return lambda s: s.kind == kind and s.attributes.get("server.port") == port


def tls_unmapped(agent) -> float:
    return (agent.metric("otel_ebpf_kernel_tls_unmapped_total", probe="ssl_read")
            + agent.metric("otel_ebpf_kernel_tls_unmapped_total", probe="ssl_write"))


BINDINGS = "otel_ebpf_kernel_tls_membio_bindings_total"


def bindings(agent) -> dict[str, float]:
    """The binding counter by result, as /metrics shows it."""
    return {result: agent.metric(BINDINGS, result=result) for result in RESULTS}


def assert_bindings_at_zero(agent) -> None:
    """Every result is on /metrics from the start, at 0 (rate() and alerts
    work before the first binding)."""
    text = agent.metrics()
    for result in RESULTS:
        assert f'{BINDINGS}{{result="{result}"}} 0.0' in text, \
            [line for line in text.splitlines() if BINDINGS in line]


@pytest.fixture
def node():
    path = shutil.which("node") or shutil.which("nodejs")
    if not path:
        pytest.skip("Debian's nodejs is not installed (make setup installs it)")
    return path


def start_node_pair(node: str, tls_certificate) -> tuple:
    """A Node HTTPS server and its client, waiting for "go": (server, client, port)."""
    port = free_port()
    server = subprocess.Popen([node, str(PEERS / "node_https.js"), "server", str(port),
                               str(tls_certificate.cert), str(tls_certificate.key)],
                              stdout=subprocess.PIPE, text=True)
    client = subprocess.Popen([node, str(PEERS / "node_https.js"), "client",
                               f"https://127.0.0.1:{port}/orders/7?x=1", str(REQUESTS),
                               str(tls_certificate.cert), TRACEPARENT_PREFIX],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return server, client, port


def test_node_https_server_and_client(receiver, start_agent, tls_certificate, node, agent_loader):
    # Both processes run before the agent starts: it finds OpenSSL in the
    # node executable in its start-up scan.  The server accepts with no peer
    # address asked for (libuv's accept4(fd, NULL, NULL)): the BCC build
    # places that connection by its first read (bpf/capture_bcc.h).
    server, client, port = start_node_pair(node, tls_certificate)
    check_traced_https_pair(receiver, start_agent, server, client, port, name="node")


@pytest.mark.parametrize("agent_loader", ["core"])
def test_node_https_exchanges_are_paired_in_the_probes(receiver, start_agent, tls_certificate,
                                                       node, agent_loader):
    """With --http-exchanges, memory-BIO TLS plaintext goes through the
    probes' pairing too.  Node answers with chunked bodies, which the probes
    cannot frame: they hand the first request of each end over with its
    connection, and every exchange is the payload path's span."""
    server, client, port = start_node_pair(node, tls_certificate)
    agent = check_traced_https_pair(receiver, start_agent, server, client, port, "node",
                                    "--http-exchanges")
    # Node answers chunked: each end's connection goes to the payload path
    # at its first response, its kept request handed over, nothing dropped.
    assert agent.metric("otel_ebpf_kernel_http_fallbacks_total", reason="response_end") == 2
    assert agent.metric("otel_ebpf_kernel_http_requests_dropped_total") == 0


def check_traced_https_pair(receiver, start_agent, server, client, port: int,
                            name: str, *agent_args: str):
    """Trace a running server and a client waiting for "go" on stdin; the
    client then sends REQUESTS requests to https://127.0.0.1:PORT/orders/7?x=1
    on one keep-alive connection and prints each status, then "done".  A
    server started with a stdout pipe says "ready" on it first."""
    try:
        if server.stdout is not None:
            assert server.stdout.readline().strip() == "ready"
        wait_for_port(port, process=server, name=name)
        agent = start_agent("--pid", str(server.pid), "--pid", str(client.pid), *agent_args)
        assert_bindings_at_zero(agent)
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=60)
        assert out.split() == ["200"] * REQUESTS + ["done"], out
        servers = wait_spans(receiver, on_port(port, KIND_SERVER), REQUESTS)
        clients = wait_spans(receiver, on_port(port, KIND_CLIENT), REQUESTS)
    finally:
        for proc in (client, server):
            proc.kill()
            proc.wait()
    # One SSL per end of the one connection, each bound by its first record.
    assert bindings(agent) == {**dict.fromkeys(RESULTS, 0), "bound": 2}
    check_http_spans(servers, clients, f"https://127.0.0.1:{port}/orders/7?x=1")
    assert tls_unmapped(agent) == 0, \
        [line for line in agent.metrics().splitlines() if "tls_unmapped" in line]
    return agent


# CO-RE only: the BCC build does not trace connections opened before the
# agent started at all (docs/limits.md).
@pytest.mark.parametrize("agent_loader", ["core"])
def test_ssl_set_up_before_the_agent_is_counted_unbound(receiver, start_agent, tls_certificate,
                                                        node, agent_loader):
    """A keep-alive connection whose TLS handshake ran before the agent
    started: its write BIOs were never seen, so neither end can be bound.
    The user sees why on /metrics: no_matching_record once per connection
    end, and the plaintext counted as unmapped, not silently lost."""
    port = free_port()
    server = subprocess.Popen([node, str(PEERS / "node_https.js"), "server", str(port),
                               str(tls_certificate.cert), str(tls_certificate.key)],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    client = subprocess.Popen([node, str(PEERS / "node_https.js"), "client",
                               f"https://127.0.0.1:{port}/orders/7?x=1", str(REQUESTS),
                               str(tls_certificate.cert), TRACEPARENT_PREFIX, "warm"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "warm"
        agent = start_agent("--pid", str(server.pid), "--pid", str(client.pid))
        assert_bindings_at_zero(agent)
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=60)
        assert out.split() == ["200"] * REQUESTS + ["done"], out
    finally:
        for proc in (client, server):
            proc.kill()
            proc.wait()
    assert bindings(agent) == {**dict.fromkeys(RESULTS, 0), "no_matching_record": 2}
    for probe in ("ssl_read", "ssl_write"):
        assert agent.metric("otel_ebpf_kernel_tls_unmapped_total", probe=probe) >= 2 * REQUESTS
    assert not [s for s in receiver.spans if s.attributes.get("server.port") == port]


def check_http_spans(servers, clients, url: str) -> None:
    """What a user checks of REQUESTS exchanges: one server and one client
    span each, the fields right, every traceparent honoured."""
    assert len(servers) == REQUESTS and len(clients) == REQUESTS, (servers, clients)
    for span in servers:
        assert span.trace_id == TRACE_ID
        assert span.attributes["url.scheme"] == "https"
        assert span.attributes["url.path"] == "/orders/7"
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["http.response.status_code"] == 200
    expected = [parent_id(i) for i in range(1, REQUESTS + 1)]
    assert sorted(s.parent_span_id for s in servers) == expected
    assert sorted(s.span_id for s in clients) == expected
    for span in clients:
        assert span.attributes["url.full"] == url
        assert span.attributes["http.response.status_code"] == 200


def test_uvicorn_ssl_called_by_aiohttp(receiver, start_agent, tls_certificate):
    pytest.importorskip("uvicorn")
    pytest.importorskip("aiohttp")
    port = free_port()
    url = f"https://127.0.0.1:{port}/orders/7?x=1"
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS),
                               "asgi_app:app", "--host", "127.0.0.1", "--port", str(port),
                               "--ssl-keyfile", str(tls_certificate.key),
                               "--ssl-certfile", str(tls_certificate.cert), "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = subprocess.Popen([sys.executable, str(PEERS / "aiohttp_client.py"), url,
                               str(REQUESTS), str(tls_certificate.cert), TRACEPARENT_PREFIX],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    check_traced_https_pair(receiver, start_agent, server, client, port, name="uvicorn")


def test_asyncpg_over_tls_gives_database_spans(receiver, start_agent, postgres):
    pytest.importorskip("asyncpg")
    postgres.execute("DROP TABLE IF EXISTS tls_orders", "CREATE TABLE tls_orders (id int)",
                     "INSERT INTO tls_orders SELECT generate_series(1, 100)")
    client = subprocess.Popen([sys.executable, str(PEERS / "asyncpg_client.py"), postgres.host,
                               str(postgres.port), PG_USER, postgres.database, str(REQUESTS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        agent = start_agent("--pid", str(client.pid))
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=60)
        assert out.split() == [str(100 - i) for i in range(1, REQUESTS + 1)] + ["done"], out
        selects = wait_sql_spans(receiver, postgres.port, REQUESTS,
                                 where=lambda s: s.attributes.get(DB_OPERATION_NAME) == "SELECT")
    finally:
        client.kill()
        client.wait()
    assert len(selects) == REQUESTS, [s.name for s in receiver.spans]
    for span in selects:
        assert span.attributes[DB_SYSTEM_NAME] == "postgresql"
        assert span.attributes.get(DB_NAMESPACE) == postgres.database
        assert span.attributes.get(DB_COLLECTION_NAME) == "tls_orders"
        assert span.resource.get("process.pid") == client.pid
    assert tls_unmapped(agent) == 0, \
        [line for line in agent.metrics().splitlines() if "tls_unmapped" in line]
