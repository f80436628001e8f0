"""The exchange-record path and the payload path give the same spans for
the same traffic: two captures loaded at once on the same hooks (one with
http_exchanges on, one off), real clients (curl, Python's http.client)
against a real server (Python's http.server) and through nginx, each
capture's records through its own router, linker and span factory, then
every span field, link and time compared."""
from __future__ import annotations

import contextlib
import http.client
import http.server
import subprocess
import threading

import pytest

from agent.capture.loader import CaptureSettings, load_capture
from agent.capture.records import C, EVENT_HEADER, EVENT_HEADER_FIELDS
from agent.capture.tls import TlsProbes
from agent.protocols.router import ProtocolRouter
from agent.spans.builder import ExchangeLinker, SpanFactory
from agent.spans.model import KIND_SERVER, TemplatedSpan
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from conftest import start_backend

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# The two captures' programs each read the clock: the same call's times
# differ by the few microseconds between them.
CLOCK_SLACK_NS = 2_000_000
# A server's exchange record ends before its client's on this node: the
# server span waits for it to be linked (the agent waits 0.25 s).
LINK_WAIT_S = 60.0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello records"
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ChunkedHandler(Handler):
    """Answers with a chunked body, as Node.js does by default."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"5\r\nhello\r\n0\r\n\r\n")


class ChunkedOnceHandler(Handler):
    """Answers /api/chunked with a chunked body, everything else with a
    Content-Length."""

    def do_GET(self):
        if self.path != "/api/chunked":
            return super().do_GET()
        ChunkedHandler.do_GET(self)


@contextlib.contextmanager
def serving(handler):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server():
    with serving(Handler) as port:
        yield port


def spans_of(capture) -> list:
    return spans_from(capture.ring.read_batch(1 << 20))


def spans_from(records: list) -> list:
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=LINK_WAIT_S)
    factory = SpanFactory(ResourceCache(host_attributes=[]), Redactor())
    exchanges = linker.exchanges(router.process(records)) + linker.release_held(flush=True)
    return factory.spans(exchanges)


def order(span) -> tuple:
    """Spans of one request, seen through either capture, sort alike
    (repeated requests: in the order they were made)."""
    return (span.kind, span.attribute("server.port"), span.attribute("client.address"),
            span.attribute("url.path") or span.attribute("url.full"), span.resource.pid,
            span.start_ns)


def comparable(spans: list) -> list:
    """Every field of every span but times, random ids replaced by their
    order of first appearance (the same links give the same labels)."""
    labels: dict = {}

    def label(value: bytes):
        if not value:
            return None
        if value.hex() in TRACEPARENT:
            return value.hex()
        return labels.setdefault(value, len(labels))
    return [(s.kind, s.name, list(s.attributes), s.status_code, s.status_message,
             s.trace_state, s.trace_flags, s.resource.pid, label(s.trace_id), label(s.span_id),
             label(s.parent_span_id)) for s in sorted(spans, key=order)]


def assert_same_spans(fast: list, slow: list, fallbacks: dict) -> None:
    assert comparable(fast) == comparable(slow), fallbacks
    for a, b in zip(sorted(fast, key=order), sorted(slow, key=order)):
        assert abs(a.start_ns - b.start_ns) < CLOCK_SLACK_NS
        assert abs(a.end_ns - b.end_ns) < CLOCK_SLACK_NS
        assert a.start_ns <= a.end_ns


def through_both_paths(ports: set, traffic, tls: bool = False) -> tuple:
    """Two captures loaded at once on the same hooks, exchange records on
    and off, while traffic() runs: (the record path's records, the payload
    path's spans, the record path's fallbacks)."""
    settings = dict(ports=ports, agent_pid=0, tls=tls, ring_buffer_bytes=1 << 22)
    records_path = load_capture(CaptureSettings(http_exchanges=True, **settings))
    payload_path = load_capture(CaptureSettings(http_exchanges=False, **settings))
    try:
        if tls:
            for capture in (records_path, payload_path):
                TlsProbes(capture).start()
        traffic()
        records = records_path.ring.read_batch(1 << 20)
        return records, spans_of(payload_path), records_path.http_fallbacks()
    finally:
        records_path.close()
        payload_path.close()


def curl(url: str, *options: str) -> None:
    subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"traceparent: {TRACEPARENT}",
                    *options, url], check=True)


def test_both_paths_give_the_same_spans(server):
    def traffic():
        for path in ("/a?x=1", "/missing"):
            curl(f"http://127.0.0.1:{server}{path}")
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
        # Repeated on one connection: a shape's first span is a plain
        # Span, the next ones share its template (TemplatedSpan).
        for path in ("/one", "/two", "/one", "/two", "/one"):
            conn.request("GET", path, headers={"User-Agent": "equivalence"})
            conn.getresponse().read()
        conn.close()
    records, slow, fallbacks = through_both_paths({server}, traffic)
    fast = spans_from(records)
    # Each request seen from both ends: 7 server and 7 client spans.
    assert len(slow) == 14, slow
    assert_same_spans(fast, slow, fallbacks)
    assert sum(isinstance(s, TemplatedSpan) for s in fast) == 6, fast
    assert all(connections == 0 for connections, _ in fallbacks.values()), fallbacks
    # curl's traceparent: in both paths its two requests' client spans and
    # server spans are in its trace, the server spans children of its span.
    _, trace_id, parent_id, _ = TRACEPARENT.split("-")
    for spans in (fast, slow):
        continued = [s for s in spans if s.trace_id == bytes.fromhex(trace_id)]
        assert len(continued) == 4, spans
        servers = [s for s in continued if s.kind == KIND_SERVER]
        assert len(servers) == 2
        assert all(s.parent_span_id == bytes.fromhex(parent_id) for s in servers)
    # http.client sent no traceparent: each server span is the child of
    # its client span on this node, in both paths.
    for spans in (fast, slow):
        clients = {s.span_id for s in spans if s.kind != KIND_SERVER
                   and s.attribute("user_agent.original") == "equivalence"}
        servers = [s for s in spans if s.kind == KIND_SERVER
                   and s.attribute("user_agent.original") == "equivalence"]
        assert len(servers) == 5 and {s.parent_span_id for s in servers} == clients


def through_nginx(start_nginx, backend: int, paths: tuple, **nginx_options) -> tuple:
    """curl through nginx in front of the backend, both paths: (nginx,
    records-path records, payload-path spans, fallbacks)."""
    nginx = start_nginx(backend_port=backend, **nginx_options)

    def traffic():
        for path in paths:
            curl(f"http://127.0.0.1:{nginx.port}{path}")
    records, slow, fallbacks = through_both_paths({nginx.port, backend}, traffic)
    return nginx, records, slow, fallbacks


def upstream_children(spans: list, proxy_port: int, backend: int) -> list:
    """nginx's upstream spans, each asserted the child of a request nginx served."""
    served = {s.span_id for s in spans
              if s.kind == KIND_SERVER and s.attribute("server.port") == proxy_port}
    upstream = [s for s in spans if s.kind != KIND_SERVER
                and s.attribute("server.port") == backend]
    assert all(s.parent_span_id in served for s in upstream), spans
    return upstream


def test_nginx_proxy_gives_the_same_spans(start_nginx, backend):
    nginx, records, slow, fallbacks = through_nginx(start_nginx, backend,
                                                    ("/fast", "/api/items", "/"))
    fast = spans_from(records)
    assert_same_spans(fast, slow, fallbacks)
    # Proxy linking: nginx's upstream request is a child of the request it
    # serves, and the backend's span a child of that upstream request.
    for name, spans in (("payload", slow), ("records", fast)):
        upstream = [s for s in spans if s.kind != KIND_SERVER
                    and s.attribute("server.port") == backend]
        served = {s.span_id for s in spans
                  if s.kind == KIND_SERVER and s.attribute("server.port") == nginx.port}
        backend_spans = [s for s in spans if s.kind == KIND_SERVER
                         and s.attribute("server.port") == backend]
        assert upstream and all(s.parent_span_id in served for s in upstream), (name, spans)
        assert {s.parent_span_id for s in backend_spans} == {s.span_id for s in upstream}


def test_every_server_span_is_its_same_node_clients_child(server):
    """Each side's exchange record is written as its last call returns, so
    a client's record can reach the ring before its server's (most often
    on a connection's first request): the server span is still the
    client's child, on every one of many new connections."""
    records_path = load_capture(CaptureSettings(http_exchanges=True, ports={server}, agent_pid=0,
                                                tls=False, ring_buffer_bytes=1 << 22))
    try:
        for i in range(1000):
            conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
            conn.request("GET", f"/new/{i}")
            conn.getresponse().read()
            conn.close()
        spans = spans_of(records_path)
    finally:
        records_path.close()
    clients = {s.attribute("url.full").rsplit("/", 1)[1]: s
               for s in spans if s.kind != KIND_SERVER}
    servers = {s.attribute("url.path").rsplit("/", 1)[1]: s
               for s in spans if s.kind == KIND_SERVER}
    assert len(clients) == len(servers) == 1000
    unlinked = [i for i, s in servers.items()
                if (s.trace_id, s.parent_span_id) != (clients[i].trace_id, clients[i].span_id)]
    assert unlinked == []


def test_tls_plaintext_gives_the_same_spans(tls_certificate):
    """The OpenSSL probes' plaintext is paired like a socket's: curl over
    HTTPS to the Python backend, both ends traced through their libssl
    calls, each side one exchange record marked TLS (url.scheme https)."""
    proc, port = start_backend(tls_certificate)

    def traffic():
        for path in ("/items/7?color=blue", "/status/503"):
            curl(f"https://127.0.0.1:{port}{path}", "--cacert", str(tls_certificate.cert))
    try:
        records, slow, fallbacks = through_both_paths({port}, traffic, tls=True)
    finally:
        proc.terminate()
        proc.wait()
    fast = spans_from(records)
    headers = [dict(zip(EVENT_HEADER_FIELDS, EVENT_HEADER.unpack_from(r))) for r in records]
    exchange_records = [h for h in headers if h["type"] == C["EVENT_HTTP_EXCHANGE"]]
    assert len(exchange_records) == 4 and all(h["flags"] & C["FLAG_TLS"] for h in exchange_records)
    assert not [h for h in headers if h["type"] == C["EVENT_DATA"] and h["flags"] & C["FLAG_TLS"]]
    assert len(slow) == 4, slow
    assert_same_spans(fast, slow, fallbacks)
    assert all(connections == 0 for connections, _ in fallbacks.values()), fallbacks
    servers = [s for s in fast if s.kind == KIND_SERVER]
    assert {s.attribute("url.scheme") for s in servers} == {"https"}
    assert {s.attribute("http.response.status_code") for s in servers} == {200, 503}
    _, trace_id, parent_id, _ = TRACEPARENT.split("-")
    assert all(s.trace_id == bytes.fromhex(trace_id) for s in fast)
    assert all(s.parent_span_id == bytes.fromhex(parent_id) for s in servers)


def test_a_chunked_servers_requests_are_handed_over_not_dropped():
    """A server answering chunked (Node.js's default): the probes cannot
    frame its responses, so each side's kept request goes to the payload
    path with its connection, ahead of the response.  Every exchange,
    each connection's first included, gives the payload path's span, and
    no request is dropped."""
    with serving(ChunkedHandler) as port:
        def traffic():
            curl(f"http://127.0.0.1:{port}/first")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for path in ("/one", "/two", "/one"):
                conn.request("GET", path, headers={"User-Agent": "chunked"})
                assert conn.getresponse().read() == b"hello"
            conn.close()
        records, slow, fallbacks = through_both_paths({port}, traffic)
    fast = spans_from(records)
    assert len(slow) == 8, slow
    assert_same_spans(fast, slow, fallbacks)
    # Both ends of both connections, each at its first response.
    assert fallbacks["response_end"] == (4, 0), fallbacks
    assert all(dropped == 0 for _, dropped in fallbacks.values()), fallbacks


def test_nginx_proxy_to_a_chunked_backend_gives_the_same_spans(start_nginx):
    """nginx in front of a backend that answers chunked (and answering its
    callers chunked in turn): every connection is handed over at its first
    response, nginx's upstream request before the request it serves, whose
    child it still is; nothing dropped."""
    with serving(ChunkedHandler) as backend:
        nginx, records, slow, fallbacks = through_nginx(start_nginx, backend,
                                                        ("/api/one", "/api/two", "/api/one"))
    fast = spans_from(records)
    assert len(slow) == 12, slow
    assert_same_spans(fast, slow, fallbacks)
    assert fallbacks["response_end"][0] >= 4 and \
        all(dropped == 0 for _, dropped in fallbacks.values()), fallbacks
    for spans in (slow, fast):
        assert len(upstream_children(spans, nginx.port, backend)) == 3, spans


def test_nginx_upstream_connection_on_the_payload_path_is_linked_to_paired_requests(start_nginx):
    """nginx keeps its upstream connection alive: a chunked answer sends it
    to the payload path for good, while each new caller's connection to
    nginx is still paired in the probes.  Each later upstream request is
    sent while nginx serves a request the probes hold: a note ahead of it
    makes it wait for that request's record, whose child it is."""
    with serving(ChunkedOnceHandler) as backend:
        nginx, records, slow, fallbacks = through_nginx(
            start_nginx, backend, ("/api/chunked", "/api/a", "/api/b", "/api/a"),
            upstream_keepalive=True)
    fast = spans_from(records)
    notes = [r for r in records if EVENT_HEADER.unpack_from(r)[0] == C["EVENT_HTTP_SERVING"]]
    assert len(notes) == 3
    assert len(slow) == 16, slow
    assert_same_spans(fast, slow, fallbacks)
    for spans in (slow, fast):
        assert len(upstream_children(spans, nginx.port, backend)) == 4, spans
