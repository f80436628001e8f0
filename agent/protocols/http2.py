"""HTTP/2 connections (PROTOCOL_HTTP2, bpf/grpc.bpf.c: the client preface).

Per connection: one H2Direction (agent/parsers/http2.py) per direction, the
side that sent the preface being the client, and a StreamTracker
(agent/protocols/http2_streams.py) that pairs each stream's request, response and
trailers.  Work items (agent/protocols/contract.py), tag ITEM_TAG, in event
order:

  (ITEM_TAG, conn, request, None)       a stream's request headers
  (ITEM_TAG, conn, request, exchange)   the stream completed (both ends,
                                        RST_STREAM or GOAWAY)

`request` is an H2Request (the linker keeps its trace context on it),
`exchange` an http2_streams.Exchange.  Times are the kernel's: a client
stream starts at the entry of the write that carried its HEADERS, a server
stream at the exit of the read that did; an exchange ends with the syscall
that completed it.

Everything kept is bounded (streams per connection, requests waiting for
their exchange) and everything dropped is counted.
"""
from __future__ import annotations

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman

from agent.capture.records import C, EVENT_HEADER_SIZE
from agent.counters import counter, parse_errors
from agent.parsers import INVALID
from agent.parsers.h2_frames import starts_with_settings
from agent.parsers.http2 import PREFACE, H2Direction
from agent.protocols.contract import ProtocolHandler
from agent.protocols.http2_streams import COUNTERS as STREAM_COUNTERS, StreamTracker

ITEM_TAG = "h2"

_INGRESS = C["DIRECTION_INGRESS"]
_EGRESS = C["DIRECTION_EGRESS"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]

COUNTERS = STREAM_COUNTERS + (
    counter("h2_events_without_preface", "http2_events_without_preface",
            "HTTP/2 events of connections whose preface was not seen and whose role is "
            "unknown, skipped."),
    counter("h2_streams_unfinished", "http2_streams_unfinished",
            "HTTP/2 streams still open when their connection closed, expired or was evicted."),
    counter("h2_streams_reset", "http2_streams_reset",
            "HTTP/2 streams ended by RST_STREAM or refused by GOAWAY (spans with an error)."),
    counter("h2_streams_without_request", "http2_streams_without_request",
            "HTTP/2 streams completed whose request headers were not decoded, skipped."),
    counter("h2_header_blocks_partial", "http2_header_blocks_partial",
            "HTTP/2 header blocks only partly decoded (joined mid-stream, truncated)."),
    counter("h2_decoder_resyncs", "http2_decoder_resyncs", "HTTP/2 framing lost and found again."),
)


# Static-table indexes (RFC 7541 appendix A) a header block starts with:
# requests with :authority, :method, :path or :scheme; responses with :status.
_REQUEST_PSEUDO = range(1, 8)
_RESPONSE_PSEUDO = range(8, 15)
_HEADERS_FRAME = 1
_PADDED = 0x8
_PRIORITY = 0x20


def header_block_side(data: bytes) -> str | None:
    """"request" or "response" from the first HEADERS frame at the start of
    data, read from its first header field's static-table index, which HPACK
    needs no dynamic table to decode; None when data starts otherwise."""
    if len(data) < 10 or data[3] != _HEADERS_FRAME:
        return None
    flags, pos = data[4], 9
    if flags & _PADDED:
        pos += 1
    if flags & _PRIORITY:
        pos += 5
    while pos < len(data) and data[pos] & 0xE0 == 0x20:   # dynamic table size update
        pos += 1
        if data[pos - 1] & 0x1F == 0x1F:
            while pos < len(data) and data[pos] & 0x80:
                pos += 1
            pos += 1
    if pos >= len(data):
        return None
    first = data[pos]
    if first & 0x80:
        index = first & 0x7F
    elif first & 0x40:
        index = first & 0x3F
    else:
        index = first & 0x0F
    if index in _REQUEST_PSEUDO:
        return "request"
    if index in _RESPONSE_PSEUDO:
        return "response"
    if index == 0 and first & 0x80 == 0:
        return _side_of_literal_name(data, pos + 1)
    return None


def _side_of_literal_name(data: bytes, pos: int) -> str | None:
    """A literal field with a new name (grpcio sends :path this way)."""
    if pos >= len(data) or data[pos] & 0x7F == 0x7F:
        return None
    huffman, length = data[pos] & 0x80, data[pos] & 0x7F
    raw = data[pos + 1:pos + 1 + length]
    if len(raw) < length:
        return None
    try:
        name = decode_huffman(raw) if huffman else raw
    except HPACKDecodingError:
        return None
    if name == b":status":
        return "response"
    if name in (b":method", b":path", b":scheme", b":authority"):
        return "request"
    return None


class H2Request:
    """A stream's request headers as the linker needs them."""

    __slots__ = ("stream_id", "headers", "tid", "start_ns", "context", "traceparent",
                 "tracestate")

    def __init__(self, stream_id: int, headers: list, tid: int, start_ns: int):
        self.stream_id = stream_id
        self.headers = headers
        self.tid = tid
        self.start_ns = start_ns
        self.context = None
        self.traceparent = self.tracestate = None
        for name, value in headers:
            if name == "traceparent":
                self.traceparent = value
            elif name == "tracestate":
                self.tracestate = value


class H2State:
    __slots__ = ("client_direction", "client", "server", "streams", "requests")

    def __init__(self, client_direction: int, midstream: bool | None, streams: StreamTracker):
        self.client_direction = client_direction
        # After a seen preface the server's bytes start at a frame boundary:
        # what it may have written before the kernel classified the
        # connection is its SETTINGS, which holds no header block.  None:
        # the decoders tell (H2Direction), from the client's preface and the
        # server's first SETTINGS.
        self.new_decoders(midstream)
        self.streams = streams
        self.requests: dict[int, H2Request] = {}

    def new_decoders(self, midstream: bool | None) -> None:
        """Decoders that start afresh; midstream ones know no header table,
        so they leave out what they cannot decode rather than guess."""
        self.client = H2Direction(is_client_side=True, midstream=midstream)
        self.server = H2Direction(is_client_side=False, midstream=midstream)
        self.client.link(self.server)


class Http2Handler(ProtocolHandler):
    PROTOCOL = C["PROTOCOL_HTTP2"]
    NAME = "http2"
    COUNTERS = COUNTERS
    # Why H2Direction (agent/parsers/http2.py, h2_frames.py) lost its framing.
    PARSE_ERRORS = parse_errors(NAME, "resync", "bad_frame", "uncaptured", "hpack_error",
                                "internal_error")

    def open(self, conn, record, hot: tuple) -> bool:
        direction, role = hot[9], hot[10]
        payload = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + hot[8]])
        if payload[:8] == PREFACE[:8]:
            client_direction, midstream = direction, False
        elif role in (_ROLE_SERVER, _ROLE_CLIENT):
            client_direction = _INGRESS if role == _ROLE_SERVER else _EGRESS
            if direction != client_direction and starts_with_settings(payload):
                # The kernel saw the connection start (accept/connect) and
                # the server spoke first, as grpc-go, grpcio and Node.js do:
                # its SETTINGS, then the client's preface, is a clean start,
                # which the decoders confirm (midstream None).
                midstream = None
            else:
                # The preface's record was lost: the dynamic tables are unknown.
                midstream = True
        else:
            # Joined after the agent started: whoever sends a request's header
            # block is the client.
            side = header_block_side(payload)
            if side is None:
                self.counts["h2_events_without_preface"] += 1
                return False
            client_direction = direction if side == "request" else 1 - direction
            midstream = True
        conn.role = _ROLE_CLIENT if client_direction == _EGRESS else _ROLE_SERVER
        conn.state = H2State(client_direction, midstream,
                             StreamTracker(self.limits.max_streams, self.counts))
        return True

    def gap(self, conn) -> None:
        # Lost records may have changed the peers' header tables.
        conn.state.new_decoders(midstream=True)

    def discard(self, conn) -> None:
        h2 = conn.state
        self.counts["h2_streams_unfinished"] += len(h2.streams.close())
        for decoder in (h2.client, h2.server):
            if decoder.unsynced_bytes:
                # never found a frame boundary in them: skipped, as resync skips
                self.parse_error("resync")

    def record(self, conn, record, hot: tuple, out: list) -> None:
        (_, _, tid, _, _, start_ns, end_ns, length, captured, direction, _, _, _, _, _) = hot
        payload = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + captured])
        h2 = conn.state
        from_client = direction == h2.client_direction
        decoder = h2.client if from_client else h2.server
        partial, resyncs = decoder.partial_blocks, decoder.resyncs
        status, events, reason = decoder.feed(payload, length - len(payload))
        counts = self.counts
        if status == INVALID:
            self.parse_error(reason)
        if decoder.partial_blocks != partial:
            counts["h2_header_blocks_partial"] += decoder.partial_blocks - partial
        if decoder.resyncs != resyncs:
            counts["h2_decoder_resyncs"] += decoder.resyncs - resyncs
        if not events:
            return
        # Frames count as sent when the write begins and as received when the
        # read returns (as for HTTP/1), so spans of peers on one node nest.
        ts_ns = start_ns if direction == _EGRESS else end_ns
        streams = h2.streams
        requests = h2.requests
        if from_client:
            for ev in events:
                if ev[0] == "headers" and ev[1] & 1 and ev[1] not in requests:
                    if streams.has_request(ev[1]):
                        continue   # client trailers
                    request = H2Request(ev[1], ev[2], tid, ts_ns)
                    requests[ev[1]] = request
                    if len(requests) > 4 * self.limits.max_streams:
                        del requests[next(iter(requests))]
                    out.append((ITEM_TAG, conn, request, None))
        for exchange in streams.feed(events, from_client, ts_ns):
            request = requests.pop(exchange.stream_id, None)
            if exchange.reset_error is not None:
                counts["h2_streams_reset"] += 1
            if request is None or exchange.request_headers is None:
                counts["h2_streams_without_request"] += 1
                continue
            out.append((ITEM_TAG, conn, request, exchange))
