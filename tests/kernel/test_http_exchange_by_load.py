"""--http-exchanges by-load: the probes copy HTTP/1.x calls while the agent
keeps up and pair exchanges while the ring fills, moving open keep-alive
connections at a request head either way.  A capture in that mode with a
small ring, beside one on the payload path on the same hooks; one
connection carries requests before, during and after a burst that fills the
ring; both captures' spans are compared field by field.  Over plain sockets,
and over TLS (Python's ssl: the OpenSSL probes' plaintext takes the same
moves)."""
from __future__ import annotations

import contextlib
import http.client
import http.server
import ssl
import threading
import time

import pytest

from agent.capture.loader import CaptureSettings, load_capture
from agent.capture.records import C, EVENT_HEADER
from agent.capture.tls import TlsProbes
from agent.spans.model import KIND_SERVER
from test_http_exchange_equivalence import Handler, assert_same_spans, spans_from, spans_of

# Its wake-up mark (an eighth) is 32 KiB: a few copied answers pass it.
SMALL_RING = 1 << 18
BIG_ANSWER = b"x" * 3000
# bpf/capture.bpf.c's RING_FILLED_HOLD_NS, and some.
HOLD_S = 5.3


class BigAnswers(Handler):
    def do_GET(self):
        if self.path != "/big":
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", str(len(BIG_ANSWER)))
        self.end_headers()
        self.wfile.write(BIG_ANSWER)


@contextlib.contextmanager
def big_answers(certificate):
    """A BigAnswers server, over TLS with this certificate if one is given:
    (its port, a function opening a client connection to it)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BigAnswers)
    port = httpd.server_address[1]
    if certificate is None:
        def connect():
            return http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_side.load_cert_chain(certificate.cert, certificate.key)
        httpd.socket = server_side.wrap_socket(httpd.socket, server_side=True)
        client_side = ssl.create_default_context(cafile=str(certificate.cert))

        def connect():
            return http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                               context=client_side)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, connect
    finally:
        httpd.shutdown()
        httpd.server_close()


def get(conn: http.client.HTTPConnection, path: str) -> None:
    conn.request("GET", path, headers={"User-Agent": "by-load"})
    conn.getresponse().read()


def exchange_records(records: list) -> int:
    return sum(EVENT_HEADER.unpack_from(r)[0] == C["EVENT_HTTP_EXCHANGE"] for r in records)


@pytest.fixture(params=["plain", "tls"])
def certificate(request):
    return request.getfixturevalue("tls_certificate") if request.param == "tls" else None


def test_a_keep_alive_connection_moves_to_records_under_load_and_back(certificate):
    tls = certificate is not None
    with big_answers(certificate) as (port, connect):
        settings = dict(ports={port}, agent_pid=0, tls=tls)
        by_load = load_capture(CaptureSettings(http_exchanges=C["HTTP_EXCHANGES_BY_LOAD"],
                                               ring_buffer_bytes=SMALL_RING, **settings))
        payload = load_capture(CaptureSettings(http_exchanges=False,
                                               ring_buffer_bytes=1 << 22, **settings))
        try:
            if tls:
                for capture in (by_load, payload):
                    TlsProbes(capture).start()
            conn = connect()
            for i in range(3):
                get(conn, f"/quiet{i}")
            quiet = by_load.ring.read_batch(1 << 20)
            # A connection starts on the payload path, and stays there.
            assert exchange_records(quiet) == 0
            assert by_load.http_moves() == {"records": 0, "payload": 0}

            filler = connect()
            for _ in range(30):
                get(filler, "/big")     # not drained: the ring fills past its mark
            for i in range(3):
                get(conn, f"/busy{i}")
            busy = by_load.ring.read_batch(1 << 20)
            # Both connections moved to records at a request head, both ends:
            # the three requests came as records, one per end.
            moves = by_load.http_moves()
            assert moves["records"] == 4, moves
            assert exchange_records(busy) >= 6

            time.sleep(HOLD_S)          # drained, and held past the last fill
            for i in range(2):
                get(conn, f"/again{i}")
            again = by_load.ring.read_batch(1 << 20)
            assert exchange_records(again) == 0
            # Both ends of the connection went back to the payload path.
            assert by_load.http_moves() == {"records": 4, "payload": 2}
            conn.close()
            filler.close()
            time.sleep(0.1)

            fast = spans_from(quiet + busy + again + by_load.ring.read_batch(1 << 20))
            slow = spans_of(payload)
            # Every request seen from both ends, by both captures alike.
            assert len(slow) == 2 * (3 + 30 + 3 + 2), len(slow)
            assert_same_spans(fast, slow, by_load.http_fallbacks())
            assert all(connections == 0 for connections, _ in by_load.http_fallbacks().values())
            servers = [s for s in fast if s.kind == KIND_SERVER]
            assert len(servers) == 3 + 30 + 3 + 2
            assert {s.attribute("url.scheme") for s in servers} == {"https" if tls else "http"}
        finally:
            by_load.close()
            payload.close()
