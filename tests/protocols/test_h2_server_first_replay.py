"""HTTP/2 servers that write their SETTINGS before they read the client's
preface (grpc-go, grpcio, Node.js `http2`): on a connection whose start
the kernel saw (its role is known), the server's SETTINGS as the first
record is a clean start, confirmed by the preface that follows.  The
recorded captures of tests/fixtures/http2 are replayed with the server's
first frame written, and read by the client, before the preface."""
from __future__ import annotations

import os

import pytest

from agent.capture.records import C
from agent.parsers.h2_frames import DEFAULT_MAX_FRAME, find_boundary, starts_with_settings
from agent.spans.model import KIND_SERVER
from test_h2_pipeline import CLIENT_PORT, FIXTURES, SERVER_PORT, load, record, records, run

EGRESS, INGRESS = C["DIRECTION_EGRESS"], C["DIRECTION_INGRESS"]
ROLES = (C["ROLE_CLIENT"], C["ROLE_SERVER"])
QUIET = ("h2_decoder_resyncs", "h2_header_blocks_partial", "h2_events_without_preface",
         "h2_streams_without_request", "h2_streams_unfinished")


def server_first(name: str, client_bytes: bytes | None = None, roles=ROLES) -> list:
    """The server's first frame (its SETTINGS) written and read first, then
    the client's bytes (default: the capture's, preface first) and the
    rest of the server's, each end's view of them."""
    c2s, s2c = load(name, "c2s"), load(name, "s2c")
    first = 9 + int.from_bytes(s2c[:3], "big")
    if client_bytes is None:
        client_bytes = c2s
    out, ts = [], 1_000_000
    for data, sender in ((s2c[:first], "server"), (client_bytes, "client"), (s2c[first:], "server")):
        writer = record(*((1, 100) if sender == "client" else (2, 200)), EGRESS,
                        roles[0] if sender == "client" else roles[1], data, ts,
                        *((CLIENT_PORT, SERVER_PORT) if sender == "client"
                          else (SERVER_PORT, CLIENT_PORT)))
        reader = record(*((2, 200) if sender == "client" else (1, 100)), INGRESS,
                        roles[1] if sender == "client" else roles[0], data, ts + 20,
                        *((SERVER_PORT, CLIENT_PORT) if sender == "client"
                          else (CLIENT_PORT, SERVER_PORT)))
        out += [writer, reader]
        ts += 1000
    return out + records(name)[-2:]     # both closes


def view(spans) -> list:
    return sorted((s.kind, s.name, sorted(map(repr, s.attributes))) for s in spans)


@pytest.mark.parametrize("name", ["grpc_calls", "nghttp_nginx"])
def test_server_settings_before_the_preface_is_a_clean_start(name):
    assert starts_with_settings(load(name, "s2c"))
    tracker, _, spans = run(server_first(name))
    baseline, _, expected = run(records(name, roles=ROLES))
    assert spans and view(spans) == view(expected)
    assert tracker.parse_errors == {}
    # Counted as on the connection whose preface came first (the gRPC
    # capture ends with two streams open, unfinished in both).
    assert tracker.counts == baseline.counts
    assert {k: tracker.counts[k] for k in QUIET if tracker.counts[k]} in (
        {}, {"h2_streams_unfinished": 2})


def test_server_settings_then_no_preface_is_still_a_join_mid_stream():
    """The client's bytes after the server's SETTINGS are frames, not the
    preface: the connection began before its capture, and the agent says
    so (it resynchronises and counts it)."""
    c2s = load("grpc_calls", "c2s")
    tracker, _, _ = run(server_first("grpc_calls", client_bytes=c2s[24:]))
    assert tracker.counts["h2_decoder_resyncs"] >= 1


def test_server_settings_first_without_a_known_role_waits_for_the_preface():
    """The kernel did not see the connection start (role unknown): a
    SETTINGS frame says nothing about who is who, the record is skipped
    and counted, and the preface opens the connection."""
    tracker, _, spans = run(server_first("grpc_calls", roles=(0, 0)))
    assert tracker.counts["h2_events_without_preface"] == 2
    assert tracker.parse_errors == {} and tracker.counts["h2_decoder_resyncs"] == 0
    _, _, expected = run(records("grpc_calls"))
    assert view(spans) == view(expected)


def test_settings_ack_and_other_frames_are_not_a_servers_first_frame():
    settings = bytes.fromhex("000006040000000000") + bytes.fromhex("000300000064")
    assert starts_with_settings(settings)
    assert not starts_with_settings(bytes.fromhex("000000040100000000"))       # ACK
    assert not starts_with_settings(bytes.fromhex("000004080000000000") + bytes(4))  # WINDOW_UPDATE
    assert not starts_with_settings(settings[:8])
    assert not starts_with_settings(bytes.fromhex("000006040000000001") + bytes(6))  # stream 1


def go_server_feeds() -> list:
    """A Go net/http server's view of one HTTP/2 connection over TLS, as the
    agent captured it from a binary without DWARF (tests/kernel/test_go_tls.py):
    its SETTINGS written first, then its reads, of which the first two (the
    client's preface, and the 9-byte header of the client's SETTINGS: Go
    reads each frame as header then payload) were lost unmapped.  The first
    bytes read are the SETTINGS frame's payload."""
    path = os.path.join(FIXTURES, "go_server_joined_mid_settings.feeds")
    out, ts = [], 1_000_000
    with open(path) as feeds:
        for line in feeds:
            way, data = line.split()
            out.append(record(2, 200, INGRESS if way == "in" else EGRESS, ROLES[1],
                              bytes.fromhex(data), ts, SERVER_PORT, CLIENT_PORT))
            ts += 1000
    return out


def test_a_server_joined_inside_a_frame_finds_the_next_frames_at_once():
    """Bytes inside a frame that read as the header of a long one must not
    hold the frames after them until that many bytes have come: here the
    SETTINGS tail reads as a 512-byte frame, and the 20 requests that
    followed, 16 bytes each, never made up that length: every server span
    was lost, and nothing counted."""
    tracker, _, spans = run(go_server_feeds())
    servers = [s for s in spans if s.kind == KIND_SERVER]
    assert len(servers) == 20
    assert all(dict(s.attributes)["url.path"] == "/items/7" for s in servers)
    assert tracker.counts["h2_decoder_resyncs"] == 1
    assert tracker.parse_errors == {("http2", "resync"): 1}     # the SETTINGS tail, skipped
    assert tracker.counts["h2_streams_unfinished"] == 0


def test_an_undecided_frame_boundary_gives_way_to_a_proven_one():
    settings_tail = bytes.fromhex("000200000000000400400000000600a00000")   # reads as 512 bytes
    window_update = bytes.fromhex("000004080000000000") + bytes.fromhex("40000000")
    headers = bytes.fromhex("000007010500000003") + bytes.fromhex("c282c187c0bfbe")
    undecided = settings_tail + window_update
    assert find_boundary(undecided, 0, True, DEFAULT_MAX_FRAME) == (0, None)
    # One header ending at the end proves a boundary only with nothing
    # undecided before it; two do.
    proven = undecided + headers
    assert find_boundary(proven, 0, True, DEFAULT_MAX_FRAME) == (len(settings_tail), True)
    assert find_boundary(window_update, 0, True, DEFAULT_MAX_FRAME) == (0, True)


def test_bytes_held_for_a_boundary_when_the_connection_ends_are_counted():
    """A capture that began inside a frame and ended before a boundary
    could be proven: its bytes are counted as skipped, not dropped unseen."""
    feeds = go_server_feeds()[:4]        # the server's SETTINGS, then 18 + 9 bytes read
    close = record(2, 200, 0, 0, b"", 10_000_000, SERVER_PORT, CLIENT_PORT,
                   event_type=C["EVENT_CLOSE"])
    tracker, _, spans = run(feeds + [close])
    assert spans == [] and tracker.counts["connections_closed"] == 1
    assert tracker.parse_errors == {("http2", "resync"): 1}
