"""The exchange-record path and the payload path give the same spans for
the same traffic: two captures loaded at once on the same hooks (one with
http_exchanges on, one off), real clients (curl, Python's http.client)
against a real server (Python's http.server), each capture's records
through its own router and linker, then every exchange field compared."""
from __future__ import annotations

import http.client
import http.server
import subprocess
import threading

import pytest

from agent.capture.loader import CaptureSettings, load_capture
from agent.protocols.router import ProtocolRouter
from agent.spans.builder import ExchangeLinker
from agent.spans.http import HttpExchange
from agent.spans.model import KIND_SERVER

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RANDOM_IDS = ("trace_id", "span_id", "parent_id")
# The two captures' programs each read the clock: the same call's times
# differ by the few microseconds between them.
CLOCK_SLACK_NS = 2_000_000


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


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def exchanges_of(capture) -> list:
    router, linker = ProtocolRouter(), ExchangeLinker()
    records = capture.ring.read_batch(1 << 20)
    return [x for x in linker.exchanges(router.process(records)) if isinstance(x, HttpExchange)]


def comparable(x: HttpExchange) -> tuple:
    return tuple(v for k, v in x._asdict().items()
                 if k not in RANDOM_IDS and k not in ("start_ns", "end_ns"))


def test_both_paths_give_the_same_exchanges(server):
    settings = dict(ports={server}, agent_pid=0, tls=False, ring_buffer_bytes=1 << 22)
    records_path = load_capture(CaptureSettings(http_exchanges=True, **settings))
    payload_path = load_capture(CaptureSettings(http_exchanges=False, **settings))
    try:
        url = f"http://127.0.0.1:{server}"
        for path in ("/a?x=1", "/missing"):
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"traceparent: {TRACEPARENT}",
                            url + path], check=True)
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
        for path in ("/one", "/two", "/three"):
            conn.request("GET", path, headers={"User-Agent": "equivalence"})
            conn.getresponse().read()
        conn.close()
        fast = exchanges_of(records_path)
        slow = exchanges_of(payload_path)
        fallbacks = records_path.http_fallbacks()
    finally:
        records_path.close()
        payload_path.close()
    # Each request seen from both ends: 5 server and 5 client exchanges.
    assert len(slow) == 10, slow
    assert sorted(map(comparable, fast)) == sorted(map(comparable, slow)), fallbacks
    assert all(connections == 0 for connections, _ in fallbacks.values()), fallbacks
    key = lambda x: (x.kind, x.local_port, x.target)  # noqa: E731
    for a, b in zip(sorted(fast, key=key), sorted(slow, key=key)):
        assert abs(a.start_ns - b.start_ns) < CLOCK_SLACK_NS
        assert abs(a.end_ns - b.end_ns) < CLOCK_SLACK_NS
        assert a.start_ns <= a.end_ns
    # curl's traceparent: in both paths its two requests' client spans and
    # server spans are in its trace, the server spans children of its span.
    _, trace_id, parent_id, _ = TRACEPARENT.split("-")
    for exchanges in (fast, slow):
        continued = [x for x in exchanges if x.trace_id == bytes.fromhex(trace_id)]
        assert len(continued) == 4, exchanges
        servers = [x for x in continued if x.kind == KIND_SERVER]
        assert len(servers) == 2
        assert all(x.parent_id == bytes.fromhex(parent_id) for x in servers)


def test_nginx_proxy_gives_the_same_exchanges(start_nginx, backend):
    nginx = start_nginx(backend_port=backend)
    settings = dict(ports={nginx.port, backend}, agent_pid=0, tls=False,
                    ring_buffer_bytes=1 << 22)
    records_path = load_capture(CaptureSettings(http_exchanges=True, **settings))
    payload_path = load_capture(CaptureSettings(http_exchanges=False, **settings))
    try:
        for path in ("/fast", "/api/items", "/"):
            subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"traceparent: {TRACEPARENT}",
                            f"http://127.0.0.1:{nginx.port}{path}"], check=True)
        fast = exchanges_of(records_path)
        slow = exchanges_of(payload_path)
        fallbacks = records_path.http_fallbacks()
    finally:
        records_path.close()
        payload_path.close()
    assert sorted(map(comparable, fast)) == sorted(map(comparable, slow)), fallbacks
    # Proxy linking: nginx's upstream request is a child of the request it serves.
    for name, exchanges in (("payload", slow), ("records", fast)):
        upstream = [x for x in exchanges if x.kind != KIND_SERVER and x.remote_port == backend]
        served = {x.span_id for x in exchanges
                  if x.kind == KIND_SERVER and x.local_port == nginx.port}
        assert upstream and all(x.parent_id in served for x in upstream), (name, [
            (x.kind, x.local_port, x.remote_port, x.span_id.hex(), x.parent_id.hex())
            for x in exchanges])
