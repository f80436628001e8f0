"""Exchange records (struct http_exchange) into work items: the order a
proxy's records need so that linking matches the payload path."""
from __future__ import annotations

from agent.capture import exchange_records
from agent.capture.records import C, ffi
from agent.protocols.http1 import Http1State
from agent.protocols.http1_records import RECORD_TAG, SERVED_TAG, SERVING_TAG, ExchangeRecords
from agent.protocols.router import ProtocolRouter
from event_records import http1_record


def exchange_record(conn_id: int, direction: int, role: int, target: bytes, *,
                    serving: int = 0, start: int = 100, end: int = 200, tid: int = 9,
                    status: int = 200, traceparent: bytes = b"") -> bytes:
    x = ffi.new("struct http_exchange *")
    h = x.hdr
    h.type, h.pid, h.tid, h.fd, h.conn_id = C["EVENT_HTTP_EXCHANGE"], 42, tid, 5, conn_id
    h.start_ns, h.end_ns, h.direction, h.role = start, end, direction, role
    h.protocol, h.seq = C["PROTOCOL_HTTP1"], 1
    h.tuple.family = 2
    h.tuple.local_port, h.tuple.remote_port = 8080 + conn_id, 40000 + conn_id
    r = x.request
    values = b"GET" + target
    r.values[0:len(values)], r.values_len = values, len(values)
    r.method_len, r.target_off, r.target_len = 3, 3, len(target)
    r.version_minor = 1
    if traceparent:
        r.values[len(values):len(values) + len(traceparent)] = traceparent
        r.traceparent_off, r.traceparent_len = len(values), len(traceparent)
        r.present |= C["HTTP_HAS_TRACEPARENT"]
        values += traceparent
        r.values_len = len(values)
    x.status, x.serving_conn_id = status, serving
    # Variable length: the record ends with the values in use.
    return bytes(ffi.buffer(x))[:exchange_records.VALUES_OFFSET + len(values)]


def test_an_upstream_exchange_waits_for_the_request_it_serves():
    router = ProtocolRouter()
    upstream = exchange_record(2, C["DIRECTION_EGRESS"], C["ROLE_CLIENT"], b"/up", serving=1,
                               start=120, end=150)
    served = exchange_record(1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"], b"/in",
                             start=100, end=200)
    items = router.process([upstream])
    assert items == []
    items = router.process([served])
    order = [(item[0], item[1].conn_id) for item in items]
    assert order == [(SERVING_TAG, 1), (RECORD_TAG, 2), (SERVED_TAG, 1)]
    # (tid, start, end, traceparent, tracestate, (method, target, ...))
    assert items[0][2][5][:2] == (b"GET", b"/in")
    assert items[1][2][1:3] == (120, 150)


def test_a_close_releases_what_waited():
    router = ProtocolRouter()
    router.process([exchange_record(2, C["DIRECTION_EGRESS"], C["ROLE_CLIENT"], b"/up",
                                    serving=1)])
    close = ffi.new("struct event_header *")
    close.type, close.conn_id, close.pid = C["EVENT_CLOSE"], 1, 42
    items = router.process([bytes(ffi.buffer(close))])
    assert [(item[0], item[1].conn_id) for item in items] == [(RECORD_TAG, 2)]


def test_waiting_is_bounded():
    records = ExchangeRecords()
    out: list = []

    class Conn:
        role = C["ROLE_CLIENT"]
        state = Http1State()     # records only: no stream the payload path framed
    hot = (0, 42, 9, 5, 2, 100, 200, 0, 0, C["DIRECTION_EGRESS"])
    from agent.protocols import http1_records
    limit = http1_records.MAX_WAITING
    for serving in range(1, limit + 2):
        records.items(Conn(), exchange_record(2, C["DIRECTION_EGRESS"], C["ROLE_CLIENT"], b"/",
                                              serving=serving), hot, out)
    assert len(records.waiting) == limit
    assert len(out) == 1


def test_a_record_shorter_than_its_values_is_counted_and_skipped():
    router = ProtocolRouter()
    record = exchange_record(1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"], b"/in")
    assert router.process([record[:-2]]) == []
    assert router.counts["records_malformed"] == 1
    assert len(router.process([record])) == 1


def test_a_kept_request_or_an_unknown_record_that_is_malformed_is_counted_and_skipped():
    """A kept request whose values overrun it, and a record of a type this
    agent does not know, are counted; the connection's next record is read."""
    router = ProtocolRouter()
    record = bytearray(exchange_record(1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"], b"/in"))
    header = ffi.cast("struct event_header *", ffi.from_buffer(record))
    header.type = C["EVENT_HTTP_KEPT_REQUEST"]
    assert router.process([bytes(record[:-2])]) == []
    header.type = 99
    assert router.process([bytes(record)]) == []
    assert router.counts["records_malformed"] == 2
    header.type = C["EVENT_HTTP_KEPT_REQUEST"]
    items = router.process([bytes(record)])
    assert [(item[2].parsed.method, item[2].parsed.target) for item in items] == [("GET", "/in")]


def test_a_server_record_follows_its_clients_record_in_a_batch():
    """Both ends on this node: the server's record ends first, the client's
    is linked first (as the payload path sees the request)."""
    server = exchange_record(1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"], b"/x")
    client = exchange_record(2, C["DIRECTION_EGRESS"], C["ROLE_CLIENT"], b"/x")
    # The two ends of one connection: each one's local port is the other's remote.
    mirrored = bytearray(client)
    header = ffi.new("struct event_header *")
    ffi.memmove(header, server, ffi.sizeof(header[0]))
    local, remote = header.tuple.local_port, header.tuple.remote_port
    ffi.memmove(header, client, ffi.sizeof(header[0]))
    header.tuple.local_port, header.tuple.remote_port = remote, local
    mirrored[:ffi.sizeof(header[0])] = bytes(ffi.buffer(header))
    router = ProtocolRouter()
    items = router.process([server, bytes(mirrored)])
    assert [item[1].conn_id for item in items] == [2, 1]
    # Apart, the server's item ends its batch (the linker may hold it).
    router = ProtocolRouter()
    assert [item[1].conn_id for item in router.process([server])] == [1]
    assert router.exchange_records.deferred == {}


def test_a_repeated_request_is_shared_and_its_status_and_trace_context_are_its_own():
    router = ProtocolRouter()
    server = (1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"])
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tp2 = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    items = router.process([exchange_record(*server, b"/a", start=100, end=200),
                            exchange_record(*server, b"/a", start=300, end=400),
                            exchange_record(*server, b"/a", start=500, end=600, status=404),
                            exchange_record(*server, b"/a", start=700, end=800, traceparent=tp),
                            exchange_record(*server, b"/b", start=900, end=950),
                            exchange_record(*server, b"/a", start=960, end=990, traceparent=tp2)])
    # (tid, start, end, traceparent, tracestate, (method, target, version, host, ua, status))
    fields = [item[2] for item in items]
    assert [f[1:3] for f in fields] == [(100, 200), (300, 400), (500, 600), (700, 800), (900, 950),
                                        (960, 990)]
    requests = [f[5] for f in fields]
    # The same request but for its traceparent is shared too.
    assert requests[0] is requests[1] and requests[3] is requests[5]
    assert [(r[1], r[5]) for r in requests] == [
        (b"/a", 200), (b"/a", 200), (b"/a", 404), (b"/a", 200), (b"/b", 200), (b"/a", 200)]
    assert [f[3] for f in fields] == [None, None, None, tp, None, tp2]


def test_requests_kept_for_sharing_are_bounded(monkeypatch):
    from agent.protocols import http1_records
    monkeypatch.setattr(http1_records, "MAX_REQUESTS", 8)
    router = ProtocolRouter()
    server = (1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"])
    items = router.process([exchange_record(*server, b"/%d" % i, start=100 + 10 * i,
                                            end=105 + 10 * i) for i in range(20)])
    assert [item[2][5][1] for item in items] == [b"/%d" % i for i in range(20)]
    assert 0 < len(router.exchange_records.requests) <= 8


def test_records_held_for_the_request_they_serve_are_counted_until_it_comes():
    """A proxy's upstream request handed over while the request it serves is
    still held in the probes: its connection's records wait, counted in
    /metrics (records_held), and go out after the served exchange's record,
    leaving nothing held."""
    from event_records import http1_record, http_exchange_record
    client, server = ("127.0.0.1", 40001), ("127.0.0.1", 9000)
    front, caller = ("127.0.0.1", 80), ("127.0.0.1", 50001)
    kept = http_exchange_record(2, 300, C["ROLE_CLIENT"], C["DIRECTION_EGRESS"], 100, 0, client,
                                server, target=b"/up", serving=1, kept=True, seq=1)
    answer = http1_record(2, 300, C["ROLE_CLIENT"], C["DIRECTION_INGRESS"],
                          b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                          150, client, server)
    served = http_exchange_record(1, 300, C["ROLE_SERVER"], C["DIRECTION_INGRESS"], 50, 200,
                                  front, caller, target=b"/in")
    router = ProtocolRouter()
    assert router.process([kept, answer]) == []
    assert router.records_held() == 2
    items = router.process([served])
    assert router.records_held() == 0
    tags = [item[0] for item in items]
    assert tags[0] == SERVING_TAG and tags[-1] == SERVED_TAG and len(tags) == 4, tags
    request, response = items[1][2], items[2][3]
    assert (request.parsed.target, response.parsed.status_code) == ("/up", 200)


def test_a_record_on_a_connection_the_payload_path_is_framing_is_counted_and_dropped():
    """--http-exchanges by-load moves a connection to records at bytes that
    begin with a method: a body that happens to (or a pipelining client)
    makes its record arrive while the payload path is inside a message or
    has a request waiting.  That record cannot be paired right: dropped,
    counted; an exchange after the message ends is taken."""
    router = ProtocolRouter()
    server = (1, 42, C["ROLE_SERVER"])
    local, remote = ("127.0.0.1", 8081), ("127.0.0.1", 40001)
    post = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n0123456789"
    router.process([http1_record(*server, C["DIRECTION_INGRESS"], post, 100, local, remote)])
    record = exchange_record(1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"], b"/in", start=300,
                             end=400)
    assert router.process([record]) == []
    assert router.counts["http_records_misread"] == 1
    # The rest of the body, the answer: the payload path's exchange ends,
    # and the next record is the connection's next exchange.
    answer = b"HTTP/1.1 204 No Content\r\n\r\n"
    items = router.process([
        http1_record(*server, C["DIRECTION_INGRESS"], b"0123456789", 500, local, remote),
        http1_record(*server, C["DIRECTION_EGRESS"], answer, 600, local, remote),
        exchange_record(1, C["DIRECTION_INGRESS"], C["ROLE_SERVER"], b"/next", start=700,
                        end=800)])
    assert [item[0] for item in items][-1] == RECORD_TAG
    assert router.counts["http_records_misread"] == 1
