"""HTTP/1.x exchanges paired in the probes (bpf/http_exchange.h): real
sockets in this process, the capture loaded with http_exchanges on, and
what the ring and the fallback counters say."""
from __future__ import annotations

import os
import struct
import socket
import threading
import time

import pytest

from agent.capture import exchange_records, records
from agent.capture.loader import CaptureSettings, load_capture
from agent.protocols.router import ProtocolRouter
from agent.spans import http_records
from agent.spans.builder import ExchangeLinker
from agent.spans.model import KIND_CLIENT, KIND_SERVER

C = records.C
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REQUEST = (b"GET /items?id=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: records-test\r\n"
           b"traceparent: " + TRACEPARENT.encode() + b"\r\n\r\n")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.fixture
def capture():
    capture = load_capture(CaptureSettings(pids={os.getpid()}, agent_pid=0, tls=False,
                                           ring_buffer_bytes=1 << 20, http_exchanges=True))
    try:
        yield capture
    finally:
        capture.close()


@pytest.fixture
def pair():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        yield client, peer
    finally:
        for sock in (client, peer, server):
            sock.close()


def records_of(capture, conn_ports, settle_s: float = 0.1) -> list[bytes]:
    """The ring's records of the connection ends whose local ports are
    conn_ports (a set), after a short settle."""
    time.sleep(settle_s)
    at = records.EVENT_HEADER_FIELDS.index("local_port")
    return [r for r in capture.ring.read_batch(1 << 20)
            if records.EVENT_HEADER.unpack_from(r)[at] in conn_ports]


def drain(capture, conn_ports):
    """(exchange records, data records) of the connection whose ports are
    conn_ports, after a short settle."""
    exchanges, data = [], []
    for record in records_of(capture, conn_ports):
        fields = dict(zip(records.EVENT_HEADER_FIELDS, records.EVENT_HEADER.unpack_from(record)))
        if fields["type"] == C["EVENT_HTTP_EXCHANGE"]:
            exchanges.append(exchange_records.decode(record))
        elif fields["type"] == C["EVENT_DATA"]:
            data.append(fields)
    return exchanges, data


def ports(*ends):
    return {end.getsockname()[1] for end in ends}


def kinds_of(found: list[bytes]) -> list[int]:
    return [records.EVENT_HEADER.unpack_from(r)[0] for r in found]


def exchange(client, peer, request=REQUEST, first_byte_alone=False) -> int:
    """One exchange; the server reads the request's first byte on its own
    when asked, as Go's server does between requests.  Returns when that
    byte's read returned (CLOCK_MONOTONIC, the probes' clock)."""
    client.sendall(request)
    got = peer.recv(1) if first_byte_alone else b""
    byte_read = time.monotonic_ns()
    if first_byte_alone:
        time.sleep(0.05)
    while len(got) < len(request):
        got += peer.recv(65536)
    assert got == request
    peer.sendall(RESPONSE)
    assert client.recv(65536) == RESPONSE
    return byte_read


def spans_of(found: list[bytes]) -> tuple[list[tuple], ProtocolRouter]:
    """The exchanges userspace makes of these records, both paths, as (kind,
    method, target, status); and the router, for its counts."""
    router = ProtocolRouter()
    out = []
    for e in ExchangeLinker().exchanges(router.process(found)):
        if e[0] == http_records.TAG:
            request = e[11]
            out.append((e[1], request[0].decode(), request[1].decode(), request[5]))
        else:
            out.append((e[1], e[10], e[11], e[15]))
    return out, router


def test_one_exchange_record_per_side_and_no_data_records(capture, pair):
    client, peer = pair
    for _ in range(3):
        exchange(client, peer)
    exchanges, data = drain(capture, ports(client, peer))
    assert data == []
    assert len(exchanges) == 6
    for x in exchanges:
        assert (x.method, x.target, x.version) == ("GET", "/items?id=7", "1.1")
        assert (x.host, x.user_agent, x.traceparent, x.tracestate) == (
            "127.0.0.1", "records-test", TRACEPARENT, None)
        assert x.status_code == 200 and x.truncated == 0
        assert x.request_bytes == len(REQUEST) and x.response_bytes == len(RESPONSE)
        header = dict(zip(records.EVENT_HEADER_FIELDS, x.header))
        assert header["start_ns"] <= header["end_ns"]


def test_a_head_in_two_writes_goes_to_the_payload_path(capture, pair):
    client, peer = pair
    before = capture.http_fallbacks()["split_head"][0]
    # Python's http.client does this with a body: head and body in
    # separate writes; here the head itself is split, and read in two.
    client.sendall(REQUEST[:20])
    got = peer.recv(65536)
    client.sendall(REQUEST[20:])
    while len(got) < len(REQUEST):
        got += peer.recv(65536)
    peer.sendall(RESPONSE)
    assert client.recv(65536) == RESPONSE
    exchanges, data = drain(capture, ports(client, peer))
    assert exchanges == []
    # Both ends' every call reaches userspace as today.
    assert len(data) >= 4
    assert capture.http_fallbacks()["split_head"][0] >= before + 2


def test_pipelined_requests_go_to_the_payload_path(capture, pair):
    client, peer = pair
    before = capture.http_fallbacks()["pipelined"][0]
    client.sendall(REQUEST + REQUEST)
    got = b""
    while len(got) < 2 * len(REQUEST):
        got += peer.recv(65536)
    peer.sendall(RESPONSE + RESPONSE)
    got = b""
    while len(got) < 2 * len(RESPONSE):
        got += client.recv(65536)
    exchanges, data = drain(capture, ports(client, peer))
    assert exchanges == []
    assert len(data) >= 2
    assert capture.http_fallbacks()["pipelined"][0] >= before + 1


def test_exchanges_held_in_the_kernel_go_with_their_connection(capture):
    pending = capture.front_end.map_fd("http_pending")
    before = exchange_records.count_held(pending)
    server = socket.create_server(("127.0.0.1", 0))
    pairs = []
    for _ in range(5):
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        client.sendall(REQUEST)           # requests without responses yet
        assert peer.recv(65536) == REQUEST
        pairs.append((client, peer))
    time.sleep(0.05)
    # Both ends of each connection hold their request.
    assert exchange_records.count_held(pending) >= before + 10
    for client, peer in pairs:
        client.close()
        peer.close()
    server.close()
    time.sleep(0.05)
    assert exchange_records.count_held(pending) <= before


def test_a_connection_whose_slot_another_exchange_holds_goes_to_the_payload_path(capture, pair):
    """Slots are the connection id modulo their count: with one request
    held, new connections come and go until one lands on its slot.  That
    one's request goes out as data (no_slot), and the held exchange is
    still whole when its response comes."""
    held_client, held_peer = pair
    before = capture.http_fallbacks()["no_slot"][0]
    held_client.sendall(REQUEST)
    assert held_peer.recv(65536) == REQUEST
    server = socket.create_server(("127.0.0.1", 0))
    linger = struct.pack("ii", 1, 0)     # closed with a reset: no TIME_WAIT left behind
    try:
        for attempt in range(2 * 16384):
            client = socket.create_connection(server.getsockname())
            peer, _ = server.accept()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            client.sendall(REQUEST)
            assert peer.recv(65536) == REQUEST
            peer.sendall(RESPONSE)
            assert client.recv(65536) == RESPONSE
            client.close()
            peer.close()
            if attempt % 512 == 0:
                capture.ring.read_batch(1 << 30)
            if capture.http_fallbacks()["no_slot"][0] > before:
                break
    finally:
        server.close()
    assert capture.http_fallbacks()["no_slot"][0] > before
    capture.ring.read_batch(1 << 30)
    held_peer.sendall(RESPONSE)
    assert held_client.recv(65536) == RESPONSE
    exchanges, data = drain(capture, ports(held_client, held_peer))
    assert data == []
    assert len(exchanges) == 2
    assert all(x.target == "/items?id=7" and x.status_code == 200 for x in exchanges)


def test_a_response_read_before_its_request_call_ended_is_paired_and_records_go_on(capture):
    """A client whose request's write is still under way when another
    thread reads the response (Go's client, preempted in its write; here a
    server that answers before the request's body is in): the kernel sees
    the response first.  That exchange goes to the payload path, which
    pairs the two; the connection's next exchanges are records again."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    body = 64 << 20         # more than the sockets hold: the write waits for the server
    upload = (b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % body)
    before = capture.http_fallbacks()
    answer = []
    try:
        writer = threading.Thread(target=client.sendall, args=(upload + b"x" * body,))
        writer.start()
        head = b""
        while b"\r\n\r\n" not in head:
            head += peer.recv(4096)
        peer.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        answer.append(client.recv(65536))       # the response, while the write waits
        assert writer.is_alive()
        received = len(head) - head.index(b"\r\n\r\n") - 4
        # The server's side records its reads of the body (its connection
        # went to the payload path): the ring is drained as they come, or
        # it fills and the next exchanges are shed.
        client_records = []
        while received < body:
            received += len(peer.recv(1 << 20))
            client_records += records_of(capture, ports(client), settle_s=0)
        writer.join(10)
        for _ in range(3):
            exchange(client, peer)
        client_records += records_of(capture, ports(client))
    finally:
        for sock in (client, peer, server):
            sock.close()
    assert answer[0].startswith(b"HTTP/1.1 413")
    after = capture.http_fallbacks()
    assert after["response_first"][0] == before["response_first"][0] + 1
    assert after["mid_stream"][0] == before["mid_stream"][0]
    # the response, then its request, as data; then one record an exchange
    assert kinds_of(client_records) == [C["EVENT_DATA"], C["EVENT_DATA"]] + \
        [C["EVENT_HTTP_EXCHANGE"]] * 3
    spans, router = spans_of(client_records)
    assert spans == [(KIND_CLIENT, "POST", "/upload", 413)] + \
        [(KIND_CLIENT, "GET", "/items?id=7", 200)] * 3
    assert router.counts["responses_without_request"] == 0


def test_a_response_no_request_was_sent_for_is_counted_and_records_go_on(capture, pair):
    """A server's unsolicited answer on an idle kept-alive connection (a 408
    before it closes one, say): no request call was on its way, so the
    next request begins an exchange record; the response counts as
    without a request when the connection ends."""
    client, peer = pair
    before = capture.http_fallbacks()
    peer.sendall(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
    assert client.recv(65536).startswith(b"HTTP/1.1 408")
    for _ in range(2):
        exchange(client, peer)
    port = client.getsockname()[1]
    client.close()
    client_records = records_of(capture, {port})
    assert kinds_of(client_records) == [C["EVENT_DATA"]] + [C["EVENT_HTTP_EXCHANGE"]] * 2 + \
        [C["EVENT_CLOSE"]]
    assert capture.http_fallbacks()["response_first"][0] == before["response_first"][0] + 1
    spans, router = spans_of(client_records)
    assert spans == [(KIND_CLIENT, "GET", "/items?id=7", 200)] * 2
    assert router.counts["responses_without_request"] == 1


def test_a_request_whose_first_byte_came_alone_is_one_exchange_record(capture, pair):
    client, peer = pair
    before = capture.http_fallbacks()
    exchange(client, peer)
    byte_read = exchange(client, peer, first_byte_alone=True)
    exchange(client, peer)
    found = records_of(capture, ports(peer))
    assert kinds_of(found) == [C["EVENT_HTTP_EXCHANGE"]] * 3
    second = exchange_records.decode(found[1])
    assert (second.method, second.target, second.traceparent) == ("GET", "/items?id=7", TRACEPARENT)
    assert second.request_bytes == len(REQUEST)
    # received when its first byte's read returned, not 50 ms later with the rest
    assert byte_read - 20_000_000 < second.header[5] <= byte_read
    assert capture.http_fallbacks() == before


def test_a_head_the_probes_cannot_take_keeps_its_held_byte(capture, pair):
    """The held byte goes with the rest to the payload path: one data
    record of the whole head, received when that byte was."""
    client, peer = pair
    exchange(client, peer)
    odd = b"GET /odd HTTP/1.1\r\nHost:  127.0.0.1\r\n\r\n"     # two spaces: unusual_head
    byte_read = exchange(client, peer, odd, first_byte_alone=True)
    found = records_of(capture, ports(peer))
    headers = [dict(zip(records.EVENT_HEADER_FIELDS, records.EVENT_HEADER.unpack_from(r)))
               for r in found]
    assert [h["type"] for h in headers] == [C["EVENT_HTTP_EXCHANGE"], C["EVENT_DATA"],
                                            C["EVENT_DATA"]]
    data = found[1][records.EVENT_HEADER_SIZE:]
    assert data == odd and headers[1]["length"] == len(odd)
    assert byte_read - 20_000_000 < headers[1]["end_ns"] <= byte_read
    spans, _ = spans_of(found)
    assert sorted((kind, method, target) for kind, method, target, _ in spans) == [
        (KIND_SERVER, "GET", "/items?id=7"), (KIND_SERVER, "GET", "/odd")]


def test_a_held_byte_whose_request_never_came_is_counted(capture, pair):
    client, peer = pair
    exchange(client, peer)
    before = capture.http_fallbacks()["split_head"]
    client.sendall(b"G")        # (a split head on the client's side: its own fallback)
    assert peer.recv(1) == b"G"
    peer.close()
    after = capture.http_fallbacks()["split_head"]
    assert after[1] == before[1] + 1
