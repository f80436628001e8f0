"""HTTP/2 connections: the ConnectionTracker hands them every event the
kernel classified PROTOCOL_HTTP2 (bpf/http2.h: the client preface).

Per connection: one H2Direction (agent/parsers/http2.py) per direction, the
side that sent the preface being the client, and a StreamTracker
(agent/protocols/http2_streams.py) that pairs each stream's request, response and
trailers.  Work items for the span builder's linker, in event order:

  (ITEM_H2_REQUEST, conn, request)            a stream's request headers
  (ITEM_H2_EXCHANGE, conn, request, exchange) the stream completed (both
                                              ends, RST_STREAM or GOAWAY)

`conn` is a connections.Connection (addresses, pid, role); `request` an
H2Request (the span builder keeps its trace context on it).  Times are the
kernel's: a client stream starts at the entry of the write that carried its
HEADERS, a server stream at the exit of the read that did; an exchange ends
with the syscall that completed it.

Everything kept is bounded (connections, streams per connection, requests
waiting for their exchange) and everything dropped is counted in the
tracker's `counts` under h2_* keys.
"""
from __future__ import annotations

from collections import OrderedDict

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman

from agent.protocols.http2_streams import StreamTracker
from agent.parsers import INVALID
from agent.parsers.http2 import PREFACE, H2Direction
from agent.capture.records import C, EVENT_HEADER, EVENT_HEADER_SIZE, lost_between

ITEM_H2_REQUEST = 2
ITEM_H2_EXCHANGE = 3

_INGRESS = C["DIRECTION_INGRESS"]
_EGRESS = C["DIRECTION_EGRESS"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]

COUNT_KEYS = (
    "h2_events_without_preface",   # events of a connection whose preface was not seen
    "h2_streams_evicted",          # more open streams than a connection may hold
    "h2_streams_unfinished",       # open when their connection closed, expired, was evicted
    "h2_streams_reset",            # ended by RST_STREAM / refused by GOAWAY (error spans)
    "h2_streams_without_request",  # completed, but their request headers were not decoded
    "h2_header_blocks_partial",    # header blocks only partly decoded
    "h2_decoder_resyncs",          # framing lost and found again
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


class H2Connection:
    __slots__ = ("conn", "client_direction", "client", "server", "streams", "requests",
                 "last_seen_ns")

    def __init__(self, conn, client_direction: int, midstream: bool, max_streams: int):
        self.conn = conn
        self.client_direction = client_direction
        # After a seen preface the server's bytes start at a frame boundary:
        # what it may have written before the kernel classified the
        # connection is its SETTINGS, which holds no header block.
        self.new_decoders(midstream)
        self.streams = StreamTracker(max_streams)
        self.requests: dict[int, H2Request] = {}
        self.last_seen_ns = 0


    def new_decoders(self, midstream: bool) -> None:
        """Decoders that start afresh; midstream ones know no header table,
        so they leave out what they cannot decode rather than guess."""
        self.client = H2Direction(is_client_side=True, midstream=midstream)
        self.server = H2Direction(is_client_side=False, midstream=midstream)
        self.client.link(self.server)


class H2ConnectionHandler:
    def __init__(self, counts: dict, parse_errors: dict, max_connections: int = 16384,
                 max_streams: int = 256):
        self.counts = counts
        for key in COUNT_KEYS:
            counts.setdefault(key, 0)
        self.parse_errors = parse_errors
        self.connections: OrderedDict[int, H2Connection] = OrderedDict()
        self.max_connections = max_connections
        self.max_streams = max_streams

    def __len__(self) -> int:
        return len(self.connections)

    def event(self, record, hot: tuple, out: list, connection_factory) -> None:
        """One data event; `hot` is the leading header fields the tracker
        already unpacked (through seq), the full header is read only for a
        new connection."""
        (_, _, tid, _, conn_id, start_ns, end_ns, length, captured, direction, role,
         _, _, _, seq) = hot
        payload = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + captured])
        h2 = self.connections.get(conn_id)
        if h2 is None:
            h2 = self._open(EVENT_HEADER.unpack_from(record), payload, direction, role,
                            connection_factory)
            if h2 is None:
                self.counts["h2_events_without_preface"] += 1
                return
        else:
            self.connections.move_to_end(conn_id)
        if seq:
            if lost_between(h2.conn.last_seq, seq):
                # Lost records may have changed the peers' header tables.
                self.counts["event_gaps"] += 1
                h2.new_decoders(midstream=True)
            h2.conn.last_seq = seq
        h2.last_seen_ns = end_ns
        from_client = direction == h2.client_direction
        decoder = h2.client if from_client else h2.server
        partial, resyncs = decoder.partial_blocks, decoder.resyncs
        status, events, reason = decoder.feed(payload, length - len(payload))
        counts = self.counts
        if status == INVALID:
            key = ("http2", reason or "invalid")
            self.parse_errors[key] = self.parse_errors.get(key, 0) + 1
        if decoder.partial_blocks != partial:
            counts["h2_header_blocks_partial"] += decoder.partial_blocks - partial
        if decoder.resyncs != resyncs:
            counts["h2_decoder_resyncs"] += decoder.resyncs - resyncs
        if not events:
            return
        conn = h2.conn
        # Frames count as sent when the write begins and as received when the
        # read returns (as for HTTP/1), so spans of peers on one node nest.
        ts_ns = start_ns if direction == _EGRESS else end_ns
        streams = h2.streams
        requests = h2.requests
        if from_client:
            open_streams = streams._open
            for ev in events:
                if ev[0] == "headers" and ev[1] & 1 and ev[1] not in requests:
                    known = open_streams.get(ev[1])
                    if known is not None and (known.request_headers is not None
                                              or known.client_ended):
                        continue   # client trailers
                    request = H2Request(ev[1], ev[2], tid, ts_ns)
                    requests[ev[1]] = request
                    if len(requests) > 4 * self.max_streams:
                        del requests[next(iter(requests))]
                    out.append((ITEM_H2_REQUEST, conn, request))
        evicted = streams.evicted
        done = streams.feed(events, from_client, ts_ns)
        if streams.evicted != evicted:
            counts["h2_streams_evicted"] += streams.evicted - evicted
        for exchange in done:
            request = requests.pop(exchange.stream_id, None)
            if exchange.reset_error is not None:
                counts["h2_streams_reset"] += 1
            if request is None or exchange.request_headers is None:
                counts["h2_streams_without_request"] += 1
                continue
            out.append((ITEM_H2_EXCHANGE, conn, request, exchange))

    def _open(self, header: tuple, payload: bytes, direction: int, role: int,
              connection_factory) -> H2Connection | None:
        if payload[:8] == PREFACE[:8]:
            client_direction, midstream = direction, False
        elif role in (_ROLE_SERVER, _ROLE_CLIENT):
            # The preface's record was lost: the dynamic tables are unknown.
            client_direction = _INGRESS if role == _ROLE_SERVER else _EGRESS
            midstream = True
        else:
            # Joined after the agent started: whoever sends a request's header
            # block is the client.
            side = header_block_side(payload)
            if side is None:
                return None
            client_direction = direction if side == "request" else 1 - direction
            midstream = True
        if len(self.connections) >= self.max_connections:
            _, old = self.connections.popitem(last=False)
            self.counts["connections_evicted"] += 1
            self.counts["h2_streams_unfinished"] += len(old.streams)
        conn = connection_factory(header)
        conn.role = _ROLE_CLIENT if client_direction == _EGRESS else _ROLE_SERVER
        h2 = H2Connection(conn, client_direction, midstream, self.max_streams)
        self.connections[conn.conn_id] = h2
        self.counts["connections_opened"] += 1
        return h2

    def close(self, conn_id: int) -> None:
        h2 = self.connections.pop(conn_id, None)
        if h2 is None:
            return
        self.counts["h2_streams_unfinished"] += len(h2.streams.close())
        self.counts["connections_closed"] += 1

    def expire(self, now_ns: int, idle_timeout_ns: int) -> int:
        expired = 0
        for conn_id, h2 in list(self.connections.items()):
            if now_ns - h2.last_seen_ns > idle_timeout_ns:
                del self.connections[conn_id]
                self.counts["h2_streams_unfinished"] += len(h2.streams.close())
                self.counts["connections_expired"] += 1
                expired += 1
        return expired

    def forget_process(self, pid: int) -> None:
        for conn_id, h2 in list(self.connections.items()):
            if h2.conn.pid == pid:
                del self.connections[conn_id]
                self.counts["h2_streams_unfinished"] += len(h2.streams.close())
                self.counts["connections_expired"] += 1
