"""HTTP/2 decoder tests on bytes real peers wrote (grpcio client and server,
nghttp and h2load against nginx), captured by tests/fixtures/capture_http2.py.

The fixtures hold the ephemeral ports and dates of the run that captured
them; nothing here depends on those.  An independent decode of each capture
(hyperframe's frame parser and hpack's own Decoder, which raise on anything
unexpected) is the oracle the decoder is checked against.
"""
from __future__ import annotations

import os
import random

import hpack
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              RstStreamFrame, SettingsFrame)

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.http2 import MAX_HEADER_BLOCK, PREFACE, H2Direction, error_name

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "http2")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEPARENT_2 = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NAMES = sorted({n.split(".")[0] for n in os.listdir(FIXTURES) if n.endswith(".bin")})
CAPTURES = [(name, side) for name in NAMES for side in ("c2s", "s2c")]


def load(name: str, side: str) -> bytes:
    with open(os.path.join(FIXTURES, f"{name}.{side}.bin"), "rb") as f:
        return f.read()


def frames_of(data: bytes, client: bool):
    """(offset, length, frame) of each whole frame, by hyperframe."""
    pos = len(PREFACE) if client else 0
    out = []
    while pos + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos:pos + 9]))
        frame.parse_body(memoryview(data[pos + 9:pos + 9 + length]))
        out.append((pos, length, frame))
        pos += 9 + length
    assert pos == len(data)
    return out


def oracle(data: bytes, client: bool):
    """[(stream_id, headers, end_stream)] decoded by hpack.Decoder."""
    decoder = hpack.Decoder()
    blocks, block = [], None
    for _, _, frame in frames_of(data, client):
        if isinstance(frame, HeadersFrame):
            block = [frame.stream_id, bytearray(frame.data), "END_STREAM" in frame.flags]
        elif isinstance(frame, ContinuationFrame):
            block[1] += frame.data
        else:
            continue
        if "END_HEADERS" in frame.flags:
            headers = [(n, v) for n, v in decoder.decode(bytes(block[1]))]
            blocks.append((block[0], headers, block[2]))
    return blocks


def decode(data: bytes, client: bool, splits=None, **kw):
    direction = H2Direction(client, **kw)
    events = []
    statuses = []
    if splits is None:
        splits = [len(data)]
    pos = 0
    for cut in splits:
        status, evs, reason = direction.feed(data[pos:cut])
        statuses.append((status, reason))
        events += evs
        pos = cut
    return direction, events, statuses


def header_events(events):
    return [(e[1], e[2], e[3]) for e in events if e[0] == "headers"]


def value(headers, name):
    return next((v for n, v in headers if n == name), None)


@pytest.mark.parametrize("name,side", CAPTURES)
def test_fixture_matches_oracle(name, side):
    data = load(name, side)
    client = side == "c2s"
    direction, events, statuses = decode(data, client)
    assert statuses == [(PARSED, "")]
    assert header_events(events) == oracle(data, client)
    assert all(not e[4] for e in events if e[0] == "headers")
    counts = direction.counters()
    assert counts["partial_blocks"] == counts["hpack_errors"] == counts["bad_frames"] == 0
    assert counts["internal_errors"] == counts["resyncs"] == counts["bytes_discarded"] == 0
    # DATA lengths agree with hyperframe's frames.
    data_frames = [(f.stream_id, len(f.data), "END_STREAM" in f.flags)
                   for _, _, f in frames_of(data, client) if isinstance(f, DataFrame)]
    assert [e[1:] for e in events if e[0] == "data"] == data_frames


def test_grpc_calls():
    requests = header_events(decode(load("grpc_calls", "c2s"), True)[1])
    responses = header_events(decode(load("grpc_calls", "s2c"), False)[1])
    paths = [value(h, ":path") for _, h, _ in requests]
    assert paths == ["/helloworld.Greeter/" + m for m in
                     ("SayHello", "SayHelloStream", "CollectHellos", "Chat", "SayHello",
                      "SayHello", "SlowStream")]
    assert [sid for sid, _, _ in requests] == [1, 3, 5, 7, 9, 11, 13]
    assert all(value(h, "content-type") == "application/grpc" for _, h, _ in requests)
    assert value(requests[0][1], "traceparent") == TRACEPARENT
    assert value(requests[1][1], "traceparent") is None
    statuses = {sid: value(h, "grpc-status") for sid, h, end in responses if end}
    assert statuses == {1: "0", 3: "0", 5: "0", 7: "0", 9: "14", 11: "5"}
    trailers_only = [(sid, h) for sid, h, end in responses if end and value(h, ":status")]
    assert [sid for sid, _ in trailers_only] == [9, 11]
    assert value(trailers_only[0][1], "grpc-message") == "backend down"
    client_events = decode(load("grpc_calls", "c2s"), True)[1]
    assert ("rst", 13, 8) in client_events
    assert error_name(8) == "CANCEL"


def test_grpc_concurrent_streams_interleave():
    requests = header_events(decode(load("grpc_concurrent", "c2s"), True)[1])
    responses = header_events(decode(load("grpc_concurrent", "s2c"), False)[1])
    assert [sid for sid, _, _ in requests] == list(range(1, 17, 2))
    assert {value(h, "traceparent") for _, h, _ in requests} == {TRACEPARENT_2}
    finals = [sid for sid, h, end in responses if end]
    assert sorted(finals) == list(range(1, 17, 2))
    assert all(value(h, "grpc-status") == "0" for _, h, end in responses if end)


def test_nghttp_nginx():
    client_events = decode(load("nghttp_nginx", "c2s"), True)[1]
    server_events = decode(load("nghttp_nginx", "s2c"), False)[1]
    requests = header_events(client_events)
    responses = header_events(server_events)
    assert [value(h, ":path") for _, h, _ in requests] == ["/index.html", "/a.txt", "/big.txt",
                                                          "/missing"]
    assert all(value(h, "traceparent") == TRACEPARENT for _, h, _ in requests)
    assert all(end for _, _, end in requests)
    status = {sid: value(h, ":status") for sid, h, _ in responses}
    sids = [sid for sid, _, _ in requests]
    assert [status[s] for s in sids] == ["200", "200", "200", "404"]
    big = sids[2]
    assert sum(e[2] for e in server_events if e[0] == "data" and e[1] == big) == 46800
    assert client_events[-1][0] == "goaway"


def test_h2load_dynamic_table():
    requests = header_events(decode(load("h2load_nginx", "c2s"), True)[1])
    responses = header_events(decode(load("h2load_nginx", "s2c"), False)[1])
    assert len(requests) == len(responses) == 20
    assert all(value(h, ":path") == "/a.txt" for _, h, _ in requests)
    assert all(value(h, ":status") == "200" for _, h, _ in responses)


@pytest.mark.parametrize("name,side", CAPTURES)
def test_split_feeds_give_same_result(name, side):
    data = load(name, side)
    client = side == "c2s"
    whole = decode(data, client)[1]
    rng = random.Random(f"{name}{side}")
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(data)), min(40, len(data) - 1))) + [len(data)]
        direction, events, statuses = decode(data, client, cuts)
        assert events == whole
        assert statuses[-1] == (PARSED, "")
        assert all(s in (PARSED, NEED_MORE) and r == "" for s, r in statuses)
    if len(data) <= 3000:
        assert decode(data, client, range(1, len(data) + 1))[1] == whole


def assert_no_wrong_headers(events, full_blocks):
    """Every decoded header block is an ordered subsequence of a block the
    full capture decodes on the same stream: headers may be missing, never
    wrong or invented."""
    by_stream = {}
    for sid, headers, end in full_blocks:
        by_stream.setdefault(sid, []).append((headers, end))
    for event in events:
        if event[0] != "headers":
            continue
        _, sid, headers, end, partial = event
        assert sid in by_stream, event
        candidates = [h for h, e in by_stream[sid] if e == end]
        assert any(_subsequence(headers, full) for full in candidates), event
        if not partial:
            assert headers in candidates, event


def _subsequence(part, whole):
    it = iter(whole)
    return all(any(item == other for other in it) for item in part)


@pytest.mark.parametrize("name,side", CAPTURES)
def test_joined_midstream(name, side):
    data = load(name, side)
    client = side == "c2s"
    full = header_events(decode(data, client)[1])
    step = max(1, len(data) // 300)
    offsets = list(range(1, min(len(data), 120))) + list(range(120, len(data), step))
    recovered = 0
    for k in offsets:
        direction, events, statuses = decode(data[k:], client)
        assert direction.internal_errors == 0
        assert_no_wrong_headers(events, full)
        recovered += sum(1 for e in events if e[0] == "headers")
    assert recovered > 0


def test_joined_midstream_uses_what_dynamic_table_it_can():
    """Joined after the first h2load request: later requests reference
    dynamic entries inserted before the join; those headers are left out and
    the block is partial; the static-table ones still decode."""
    data = load("h2load_nginx", "c2s")
    frames = frames_of(data, True)
    second = [pos for pos, _, f in frames if isinstance(f, HeadersFrame)][1]
    direction, events, _ = decode(data[second:], True)
    blocks = [e for e in events if e[0] == "headers"]
    assert len(blocks) == 19
    assert all(e[4] for e in blocks)                   # partial
    assert direction.unknown_headers > 0
    assert_no_wrong_headers(events, header_events(decode(data, True)[1]))
    assert all(value(e[2], ":method") == "GET" for e in blocks)


def _writes(data: bytes, client: bool):
    """The capture split at frame boundaries, one frame per write."""
    cuts = [pos for pos, _, _ in frames_of(data, client)] + [len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])] if not client else \
        [data[:len(PREFACE)]] + [data[a:b] for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("limit", [16, 64, 256, 4096])
def test_truncated_data_frames_skipped_by_length(limit):
    """The kernel copied only the first `limit` bytes of each write: DATA is
    skipped by length, header blocks that fit decode exactly, the rest are
    partial and later blocks stay correct or partial, never wrong."""
    data = load("nghttp_nginx", "s2c")
    full = header_events(decode(data, False)[1])
    direction = H2Direction(False)
    events = []
    for write in _writes(data, False):
        status, evs, _ = direction.feed(write[:limit], uncaptured=max(0, len(write) - limit))
        events += evs
    assert direction.internal_errors == 0
    assert_no_wrong_headers(events, full)
    assert len([e for e in events if e[0] == "headers"]) == 4
    data_events = [e for e in events if e[0] == "data"]
    assert sum(e[2] for e in data_events if e[1] == 17) == 46800
    if limit >= 256:
        assert [e[2] for e in events if e[0] == "headers"] == [h for _, h, _ in full]
        assert direction.sync_lost == 0


def test_truncated_across_frames_loses_sync_safely():
    data = load("grpc_calls", "s2c")
    full = header_events(decode(data, False)[1])
    for limit in (20, 50, 100, 200):
        direction = H2Direction(False)
        events = []
        for start in range(0, len(data), 300):
            write = data[start:start + 300]
            _, evs, _ = direction.feed(write[:limit], uncaptured=len(write) - limit)
            events += evs
        assert direction.internal_errors == 0
        assert_no_wrong_headers(events, full)


# ------------------------------------------------------- synthetic frames

def _preface_and_settings(settings=None):
    frame = SettingsFrame(0, settings=settings or {})
    return PREFACE + frame.serialize()


def test_padded_priority_continuation():
    encoder = hpack.Encoder()
    block = encoder.encode([(":method", "POST"), (":path", "/pkg.Svc/Do"),
                            ("content-type", "application/grpc+proto"),
                            ("traceparent", TRACEPARENT), ("x-long", "v" * 300)])
    first = HeadersFrame(3, data=block[:20], pad_length=7, depends_on=1, stream_weight=16,
                         flags=["PADDED", "PRIORITY"])
    second = ContinuationFrame(3, data=block[20:60])
    third = ContinuationFrame(3, data=block[60:], flags=["END_HEADERS"])
    body = DataFrame(3, data=b"x" * 50, pad_length=10, flags=["PADDED", "END_STREAM"])
    stream = _preface_and_settings() + first.serialize() + second.serialize() + \
        third.serialize() + body.serialize()
    for cuts in ([len(stream)], range(1, len(stream) + 1)):
        direction, events, _ = decode(stream, True, cuts)
        assert events == [("headers", 3, [(":method", "POST"), (":path", "/pkg.Svc/Do"),
                                          ("content-type", "application/grpc+proto"),
                                          ("traceparent", TRACEPARENT), ("x-long", "v" * 300)],
                           False, False),
                          ("data", 3, 50, True)]


def test_truncated_headers_frame_is_partial_and_resets_table():
    encoder = hpack.Encoder()
    first = encoder.encode([(":method", "GET"), (":path", "/one"), ("x-a", "1" * 40),
                            ("x-b", "2" * 40)])
    second = encoder.encode([(":method", "GET"), (":path", "/two"), ("x-a", "1" * 40),
                             ("x-b", "2" * 40)])   # x-a, x-b now dynamic references
    f1 = HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"]).serialize()
    f2 = HeadersFrame(3, data=second, flags=["END_HEADERS", "END_STREAM"]).serialize()
    direction = H2Direction(True)
    direction.feed(PREFACE)
    cut = 9 + 20
    status, events, _ = direction.feed(f1[:cut], uncaptured=len(f1) - cut)
    assert len(events) == 1 and events[0][4] is True
    assert (":path", "/one") in events[0][2] and all(n != "x-b" for n, _ in events[0][2])
    status, events, _ = direction.feed(f2)
    assert status == PARSED
    # x-a and x-b were inserted in the uncaptured part: unknown now.
    assert events == [("headers", 3, [(":method", "GET"), (":path", "/two")], True, True)]
    assert direction.unknown_headers == 2 and direction.truncated_frames == 1


def test_settings_header_table_size_and_size_update():
    encoder = hpack.Encoder()
    encoder.header_table_size = 8192
    block = encoder.encode([(":status", "200"), ("x-big", "b" * 6000)])
    again = encoder.encode([(":status", "200"), ("x-big", "b" * 6000)])
    client = H2Direction(True)
    server = H2Direction(False)
    client.link(server)
    client.feed(_preface_and_settings({SettingsFrame.HEADER_TABLE_SIZE: 8192}))
    assert server.decoder.max_allowed_table_size == 8192
    frames = SettingsFrame(0).serialize() + \
        HeadersFrame(1, data=block, flags=["END_HEADERS"]).serialize() + \
        HeadersFrame(3, data=again, flags=["END_HEADERS"]).serialize()
    status, events, _ = server.feed(frames)
    assert status == PARSED
    assert [e[4] for e in events] == [False, False]
    assert events[1][2] == [(":status", "200"), ("x-big", "b" * 6000)]
    assert server.decoder.header_table.maxsize == 8192


def test_rst_goaway_ping_window_update():
    frames = [RstStreamFrame(5, error_code=8), GoAwayFrame(0, last_stream_id=7, error_code=2,
                                                          additional_data=b"debug"),
              SettingsFrame(0, flags=["ACK"])]
    raw = b"".join(f.serialize() for f in frames)
    raw += b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"       # PING
    raw += b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x10\x00"  # WINDOW_UPDATE
    raw += b"\x00\x00\x03\xbb\x00\x00\x00\x00\x00abc"                   # unknown type
    direction = H2Direction(False, midstream=False)
    status, events, reason = direction.feed(raw)
    assert (status, reason) == (PARSED, "")
    assert events == [("rst", 5, 8), ("goaway", 7, 2)]
    assert direction.unknown_frames == 1


def test_not_http2_is_invalid_and_never_raises():
    direction = H2Direction(True)
    status, events, reason = direction.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
    assert status == INVALID and reason == "resync" and events == []
    assert direction.bytes_discarded > 0
    status, events, reason = direction.feed(b"PRI * HTTP/2.0\r\n")
    assert status in (NEED_MORE, INVALID)


def test_preface_prefix_waits():
    direction = H2Direction(True)
    assert direction.feed(PREFACE[:10])[0] == NEED_MORE
    assert direction.feed(PREFACE[10:])[0] == PARSED
    assert direction.synchronised


def test_huge_frame_header_bounded():
    """A HEADERS frame declaring 16 MiB - 1: at most MAX_HEADER_BLOCK is ever
    buffered; the rest is skipped by count."""
    direction = H2Direction(False, midstream=False)
    header = b"\xff\xff\xff\x01\x04\x00\x00\x00\x01"
    direction.feed(header)
    total = 0
    chunk = b"\x00" * 65536
    while total < MAX_HEADER_BLOCK + 65536 * 2:
        status, events, _ = direction.feed(chunk)
        total += len(chunk)
        assert len(direction._pending) <= MAX_HEADER_BLOCK + 9
    assert direction.truncated_frames == 1
    assert direction.internal_errors == 0
