"""End-to-end HTTP/1.x: real servers, real clients, real BPF programs, spans
checked at an OTLP receiver the way a user would check them in a backend."""
from __future__ import annotations

import socket
import time

import pytest

from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET
from conftest import LOADER_ARGS, TIME_SCALE, capture_programs_of, programs_still_loaded, curl

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "tracestate: vendor=abc,other=xyz"


@pytest.fixture(params=list(LOADER_ARGS))
def agent_loader(request) -> str:
    """The spine runs under both front ends: CO-RE, and BCC compiled against
    kernel headers that need not match this kernel."""
    return request.param


def server_spans(receiver, port: int):
    return [s for s in receiver.spans
            if s.kind == KIND_SERVER and s.attributes.get("server.port") == port]


def wait_spans(receiver, predicate, count: int, timeout: float = 10.0):
    assert receiver.wait_for(lambda spans: len([s for s in spans if predicate(s)]) >= count,
                             timeout), \
        f"expected {count} spans, got {[s for s in receiver.spans if predicate(s)]}"
    return [s for s in receiver.spans if predicate(s)]


@pytest.mark.parametrize("server", ["python", "nginx"])
def test_server_span_joins_incoming_trace(server, receiver, start_agent, backend, start_nginx):
    if server == "python":
        port, path, service = backend, "/items/42", "test-backend"
    else:
        port, path, service = start_nginx().port, "/index.html", "unknown_service:nginx"
    start_agent("--port", str(port))
    timing = curl(f"http://127.0.0.1:{port}{path}?color=blue", TRACEPARENT, TRACESTATE)
    assert timing["status"] == 200

    spans = wait_spans(receiver, lambda s: s.kind == KIND_SERVER and s.attributes.get("server.port") == port, 1)
    assert len(spans) == 1
    span = spans[0]
    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == PARENT_ID
    assert span.span_id not in (PARENT_ID, "0" * 16)
    assert span.name == "GET"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.path"] == path
    assert span.attributes["url.query"] == "color=blue"
    assert span.attributes["url.scheme"] == "http"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["network.peer.port"] == timing["local_port"]
    assert span.attributes["client.address"] == "127.0.0.1"
    assert span.attributes["user_agent.original"].startswith("curl/")
    assert span.attributes["network.protocol.version"] == "1.1"
    assert span.trace_state == "vendor=abc,other=xyz"
    assert span.status_code == STATUS_UNSET
    assert span.resource["service.name"] == service
    assert span.resource["process.pid"] > 0
    duration_s = (span.end_ns - span.start_ns) / 1e9
    assert 0 < duration_s <= timing["time_total"], (duration_s, timing)
    # The span happened now, not at some epoch offset.
    assert abs(span.start_ns / 1e9 - time.time()) < 30

    # curl itself is traced too: its client span carries the id it sent.
    client = wait_spans(receiver, lambda s: s.kind == KIND_CLIENT and s.attributes.get("server.port") == port, 1)
    assert client[0].span_id == PARENT_ID
    assert client[0].trace_id == TRACE_ID
    assert client[0].attributes["url.full"] == f"http://127.0.0.1:{port}{path}?color=blue"


def test_status_and_new_trace_without_traceparent(receiver, start_agent, backend):
    start_agent("--port", str(backend))
    assert curl(f"http://127.0.0.1:{backend}/status/503")["status"] == 503
    assert curl(f"http://127.0.0.1:{backend}/status/404")["status"] == 404
    spans = wait_spans(receiver, lambda s: s.attributes.get("server.port") == backend, 4)
    by_kind_status = {(s.kind, s.attributes["http.response.status_code"]): s for s in spans}
    server_503 = by_kind_status[(KIND_SERVER, 503)]
    server_404 = by_kind_status[(KIND_SERVER, 404)]
    client_404 = by_kind_status[(KIND_CLIENT, 404)]
    # 5xx is an error on both sides; 4xx only on the client side.
    assert server_503.status_code == STATUS_ERROR and server_503.attributes["error.type"] == "503"
    assert server_404.status_code == STATUS_UNSET
    assert client_404.status_code == STATUS_ERROR
    # No incoming context: the client starts a trace and the server joins it
    # through the connection both ends share.
    client_503 = by_kind_status[(KIND_CLIENT, 503)]
    assert server_503.trace_id == client_503.trace_id
    assert server_503.parent_span_id == client_503.span_id
    assert client_503.parent_span_id == ""
    assert server_503.trace_id != server_404.trace_id


def test_keepalive_and_pipelining(receiver, start_agent, backend):
    """Three pipelined requests on one connection: three exchanges, in order."""
    start_agent("--port", str(backend))
    with socket.create_connection(("127.0.0.1", backend)) as sock:
        sock.sendall(b"".join(
            f"GET /p{i} HTTP/1.1\r\nHost: localhost\r\n"
            f"traceparent: 00-{TRACE_ID}-{i:016x}-01\r\n\r\n".encode() for i in range(1, 4)))
        received = b""
        deadline = time.monotonic() + 5
        while received.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            received += sock.recv(65536)
    spans = wait_spans(receiver, lambda s: s.kind == KIND_SERVER and s.attributes.get("server.port") == backend, 3)
    paths = {s.attributes["url.path"]: s.parent_span_id for s in spans}
    assert paths == {"/p1": f"{1:016x}", "/p2": f"{2:016x}", "/p3": f"{3:016x}"}


def test_two_hops_form_one_trace(receiver, start_agent, backend, start_nginx):
    """client -> nginx (reverse proxy) -> Python backend: one trace with
    client -> nginx server -> nginx client -> backend server."""
    nginx = start_nginx(backend_port=backend)
    start_agent("--port", str(nginx.port), "--port", str(backend))
    assert curl(f"http://127.0.0.1:{nginx.port}/api/orders", TRACEPARENT)["status"] == 200
    spans = wait_spans(receiver, lambda s: s.trace_id == TRACE_ID, 4)
    assert len(spans) == 4, spans
    curl_client = next(s for s in spans if s.kind == KIND_CLIENT and s.attributes["server.port"] == nginx.port)
    nginx_server = next(s for s in spans if s.kind == KIND_SERVER and s.attributes["server.port"] == nginx.port)
    nginx_client = next(s for s in spans if s.kind == KIND_CLIENT and s.attributes["server.port"] == backend)
    backend_server = next(s for s in spans if s.kind == KIND_SERVER and s.attributes["server.port"] == backend)
    assert curl_client.span_id == PARENT_ID
    assert nginx_server.parent_span_id == curl_client.span_id
    assert nginx_client.parent_span_id == nginx_server.span_id
    assert backend_server.parent_span_id == nginx_client.span_id
    assert len({s.span_id for s in spans}) == 4
    assert nginx_server.resource["process.executable.name"] == "nginx"
    assert backend_server.resource["service.name"] == "test-backend"
    assert backend_server.attributes["url.path"] == "/api/orders"
    # Time nests: each child inside its parent.
    for parent, child in ((nginx_server, nginx_client), (nginx_client, backend_server)):
        assert parent.start_ns <= child.start_ns and child.end_ns <= parent.end_ns


def test_malformed_traffic_is_counted_and_loop_survives(receiver, start_agent, backend):
    agent = start_agent("--port", str(backend))
    hostile = [
        b"GET /\x00\x01\x02 HTTP/9.9\r\n\r\n",                       # bad request line
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n",  # oversized head
        b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",           # bad length
        b"GET / HTTP/1.1\r\nHost" ,                                  # truncated, then closed
    ]
    for payload in hostile:
        with socket.create_connection(("127.0.0.1", backend)) as sock:
            sock.sendall(payload)
            sock.settimeout(1)
            try:
                sock.recv(65536)
            except OSError:
                pass
    # Binary garbage on the HTTP port that starts like a method.
    with socket.create_connection(("127.0.0.1", backend)) as sock:
        sock.sendall(b"GET " + bytes(range(256)) * 4)
    # A request split across many writes still makes one span.
    with socket.create_connection(("127.0.0.1", backend)) as sock:
        request = f"GET /split HTTP/1.1\r\nHost: localhost\r\n{TRACEPARENT}\r\n\r\n".encode()
        for i in range(0, len(request), 7):
            sock.sendall(request[i:i + 7])
            time.sleep(0.002)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    spans = wait_spans(receiver, lambda s: s.kind == KIND_SERVER and s.attributes.get("url.path") == "/split", 1)
    assert spans[0].parent_span_id == PARENT_ID
    assert agent.proc.poll() is None
    assert agent.metric("otel_ebpf_parse_errors_total", protocol="http1") >= 3


def test_sigterm_stops_fast_flushes_and_detaches(receiver, start_agent, backend, agent_loader):
    agent = start_agent("--port", str(backend))
    programs = capture_programs_of(agent.proc.pid)
    assert programs
    assert curl(f"http://127.0.0.1:{backend}/last", TRACEPARENT)["status"] == 200
    took = agent.stop()
    assert agent.proc.returncode == 0, agent.stderr()
    # The BCC build detaches each of its 35 per-syscall tracepoint links
    # after a grace period of its own; CO-RE's links go faster.
    assert took < (2.5 if agent_loader == "bcc" else 2.0) * TIME_SCALE
    # Spans held at stop time were flushed, not lost.
    assert any(s.attributes.get("url.path") == "/last" for s in receiver.spans)
    assert programs_still_loaded(programs) == set()


def test_short_lived_client_keeps_its_identity(receiver, start_agent, backend):
    """curl exits right after its response: its resource is read when the
    agent first sees it, and where curl is gone by then, its name comes from
    what the kernel kept when its connection was classified."""
    start_agent("--port", str(backend))
    for _ in range(10):
        assert curl(f"http://127.0.0.1:{backend}/short")["status"] == 200
    clients = wait_spans(receiver, lambda s: s.kind == KIND_CLIENT
                         and s.attributes.get("server.port") == backend, 10)
    assert {c.resource["process.executable.name"] for c in clients} == {"curl"}, clients
    assert {c.resource["service.name"] for c in clients} == {"unknown_service:curl"}
