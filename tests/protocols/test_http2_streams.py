"""StreamTracker and gRPC helpers on the real HTTP/2 captures
(tests/fixtures/capture_http2.py) and on hand-made event sequences."""
from __future__ import annotations

import os

import pytest

from agent.protocols.http2_streams import (REFUSED_STREAM, StreamTracker, grpc_method, grpc_status, header,
                                 is_grpc)
from agent.parsers.http2 import H2Direction

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "http2")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEPARENT_2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def load(name: str, side: str) -> bytes:
    with open(os.path.join(FIXTURES, f"{name}.{side}.bin"), "rb") as f:
        return f.read()


def exchanges(name: str, chunk: int = 1 << 30, skip: int = 0):
    """Replay a capture through both decoders and a tracker, interleaving
    client and server chunks with increasing timestamps."""
    client, server = H2Direction(True), H2Direction(False)
    client.link(server)
    tracker = StreamTracker()
    c2s, s2c = load(name, "c2s")[skip:], load(name, "s2c")[skip:]
    done = []
    ts = 1000
    for start in range(0, max(len(c2s), len(s2c)), chunk):
        for direction, data, from_client in ((client, c2s, True), (server, s2c, False)):
            _, events, _ = direction.feed(data[start:start + chunk])
            done += tracker.feed(events, from_client, ts)
            ts += 1000
    return done, tracker


def test_grpc_calls_exchanges():
    done, tracker = exchanges("grpc_calls", chunk=64)
    by_sid = {e.stream_id: e for e in done}
    assert sorted(by_sid) == [1, 3, 5, 7, 9, 11, 13]
    methods = {sid: grpc_method(header(e.request_headers, ":path")) for sid, e in by_sid.items()}
    assert methods == {1: "helloworld.Greeter/SayHello", 3: "helloworld.Greeter/SayHelloStream",
                       5: "helloworld.Greeter/CollectHellos", 7: "helloworld.Greeter/Chat",
                       9: "helloworld.Greeter/SayHello", 11: "helloworld.Greeter/SayHello",
                       13: "helloworld.Greeter/SlowStream"}
    statuses = {sid: grpc_status(e.trailers or e.response_headers) for sid, e in by_sid.items()
                if e.reset_error is None}
    assert statuses == {1: (0, "OK"), 3: (0, "OK"), 5: (0, "OK"), 7: (0, "OK"),
                        9: (14, "UNAVAILABLE"), 11: (5, "NOT_FOUND")}
    # Trailers-only responses complete with their single HEADERS.
    assert by_sid[9].trailers is None and header(by_sid[9].response_headers, ":status") == "200"
    assert by_sid[13].reset_error == 8                     # CANCEL from the client
    assert all(is_grpc(e.request_headers) for e in done)
    assert header(by_sid[1].request_headers, "traceparent") == TRACEPARENT
    assert all(e.start_ns < e.end_ns and not e.partial for e in done)
    assert by_sid[3].response_bytes == 63 and by_sid[5].request_bytes == 18
    assert len(tracker) == 0 and tracker.counts["h2_streams_evicted"] == 0


def test_grpc_concurrent_exchanges():
    done, _ = exchanges("grpc_concurrent", chunk=100)
    assert sorted(e.stream_id for e in done) == list(range(1, 17, 2))
    assert all(header(e.request_headers, "traceparent") == TRACEPARENT_2 for e in done)
    assert all(grpc_status(e.trailers) == (0, "OK") for e in done)


def test_nghttp_exchanges_and_goaway():
    done, tracker = exchanges("nghttp_nginx")
    paths = {header(e.request_headers, ":path"): header(e.response_headers, ":status")
             for e in done}
    assert paths == {"/index.html": "200", "/a.txt": "200", "/big.txt": "200", "/missing": "404"}
    assert not any(is_grpc(e.request_headers) for e in done)
    big = next(e for e in done if header(e.request_headers, ":path") == "/big.txt")
    assert big.response_bytes == 46800 and big.reset_error is None


def test_h2load_exchanges():
    done, _ = exchanges("h2load_nginx", chunk=128)
    assert len(done) == 20 and all(header(e.response_headers, ":status") == "200" for e in done)


@pytest.mark.parametrize("skip", [1, 30, 100, 200, 400])
def test_joined_midstream_never_raises(skip):
    done, tracker = exchanges("grpc_calls", chunk=80, skip=skip)
    for e in done:
        assert e.reset_error is not None or e.response_headers is not None


def _h(sid, headers, end=False, partial=False):
    return ("headers", sid, headers, end, partial)


def test_reset_midway_and_goaway_refused():
    tracker = StreamTracker()
    request = [(":method", "POST"), (":path", "/a.B/C"), ("content-type", "application/grpc")]
    assert tracker.feed([_h(1, request), _h(3, request), _h(5, request, end=True)], True, 10) == []
    done = tracker.feed([("rst", 1, 2)], False, 20)
    assert [(e.stream_id, e.reset_error, e.start_ns, e.end_ns) for e in done] == [(1, 2, 10, 20)]
    done = tracker.feed([("goaway", 3, 0)], False, 30)
    assert [(e.stream_id, e.reset_error) for e in done] == [(5, REFUSED_STREAM)]
    assert [e.stream_id for e in tracker.close()] == [3]
    # What a user reads from the metrics: one stream refused, two completed.
    assert tracker.counts["h2_streams_refused"] == 1
    assert tracker.counts["h2_streams_completed"] == 2


def test_data_of_unknown_stream_is_counted_ignored():
    tracker = StreamTracker()
    assert tracker.feed([("data", 7, 10, True)], False, 1) == []
    assert tracker.counts["h2_events_ignored"] == 1


def test_informational_and_trailers():
    tracker = StreamTracker()
    tracker.feed([_h(1, [(":method", "GET"), (":path", "/")], end=True)], True, 1)
    assert tracker.feed([_h(1, [(":status", "103")]), _h(1, [(":status", "200")]),
                         ("data", 1, 5, False)], False, 2) == []
    done = tracker.feed([_h(1, [("grpc-status", "0")], end=True)], False, 3)
    assert header(done[0].response_headers, ":status") == "200"
    assert done[0].trailers == [("grpc-status", "0")] and done[0].response_bytes == 5


def test_bounded_open_streams():
    tracker = StreamTracker(max_streams=4)
    for sid in range(1, 21, 2):
        tracker.feed([_h(sid, [(":method", "GET")])], True, sid)
    assert len(tracker) == 4 and tracker.counts["h2_streams_evicted"] == 6
    assert [e.stream_id for e in tracker.close()] == [13, 15, 17, 19]


def test_grpc_helpers():
    assert is_grpc([("content-type", "application/grpc")])
    assert is_grpc([("content-type", "application/grpc+proto")])
    assert is_grpc([("content-type", "application/grpc-web+proto")])
    assert not is_grpc([("content-type", "application/json")])
    assert not is_grpc(None) and not is_grpc([])
    assert grpc_method("/helloworld.Greeter/SayHello") == "helloworld.Greeter/SayHello"
    for bad in (None, "", "/", "/svc", "svc/m", "/a/b/c", "/a/"):
        assert grpc_method(bad) is None
    assert grpc_status([("grpc-status", "14")]) == (14, "UNAVAILABLE")
    assert grpc_status([("grpc-status", "0")]) == (0, "OK")
    assert grpc_status([("grpc-status", "99")]) == (99, "UNKNOWN")
    assert grpc_status([("grpc-status", "x")]) == (2, "UNKNOWN")
    assert grpc_status([(":status", "503")]) == (14, "UNAVAILABLE")
    assert grpc_status([(":status", "404")]) == (12, "UNIMPLEMENTED")
    assert grpc_status([(":status", "200")]) is None and grpc_status(None) is None
