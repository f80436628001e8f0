"""HTTP/1.x connections (PROTOCOL_HTTP1): rebuild each direction's byte
stream, frame messages with the pure parsers (heads, Content-Length and
chunked bodies, pipelining) and pair each response with the oldest request
still waiting on the connection.

Work items (agent/protocols/contract.py), tag ITEM_TAG:
    (ITEM_TAG, conn, request, None)       a request head is complete
    (ITEM_TAG, conn, request, response)   a response completed it
request and response are Messages; times are the kernel's (CLOCK_MONOTONIC).
"""
from __future__ import annotations

from collections import deque

from agent.capture.records import C, EVENT_HEADER_SIZE
from agent.counters import Counter, Metric, counter, parse_errors
from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers import http1
from agent.protocols.contract import EVENTS_SKIPPED, ProtocolHandler

ITEM_TAG = "http1"

_INGRESS = C["DIRECTION_INGRESS"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]

# Stream states of one direction.
_HEAD = 0          # collecting a message head
_BODY = 1          # counting down a Content-Length body
_CHUNKED = 2       # scanning a chunked body
_UNTIL_CLOSE = 3   # response body delimited by the connection's end
_RESYNC = 4        # lost the framing: skip to the next event that starts a message

_UNBOUNDED = 1 << 62

# Heads longer than this are parsed every time: the bound keeps the cache
# below MAX_CACHED_HEADS * MAX_CACHED_HEAD_BYTES (2 MiB).
MAX_CACHED_HEAD_BYTES = 1024
MAX_CACHED_HEADS = 2048

HTTP_MESSAGES = Metric("http_messages", "HTTP/1.x messages framed.", "type")
COUNTERS = (
    Counter("http_requests", HTTP_MESSAGES, "request"),
    Counter("http_responses", HTTP_MESSAGES, "response"),
    Counter("events_skipped_resync", EVENTS_SKIPPED, "resync"),
    counter("requests_without_response", "requests_without_response",
            "Requests that never got a response (connection closed, expired or evicted)."),
    counter("responses_without_request", "responses_without_request",
            "Responses whose request was not seen."),
    counter("heads_truncated", "http_heads_truncated",
            "HTTP heads longer than the capture size, skipped."),
    counter("messages_incomplete", "messages_incomplete",
            "Messages only partly seen when their connection closed, expired or was evicted."),
    counter("http_records_misread", "http_records_misread",
            "HTTP/1.x exchange records dropped: they came while the payload path was framing a "
            "message on their connection (--http-exchanges by-load moved it to records at bytes "
            "that only looked like a request head: a body's, or a pipelining client's)."),
)


class ParsedHeads:
    """A parser with the results of heads it has seen before.

    Parsing is most of the cost of matching, and heads repeat: a server
    sends the same response head for an endpoint (until its Date changes,
    once a second), load balancers and health checkers send the same
    request.  A head that carries a fresh traceparent never repeats and
    costs one failed lookup.  Results are shared, so nothing may change a
    parsed head; only complete, valid heads are kept.
    """

    __slots__ = ("parse", "_limit", "_by_head")

    def __init__(self, parse, max_header_bytes: int):
        self.parse = parse
        self._limit = min(MAX_CACHED_HEAD_BYTES, max_header_bytes)
        self._by_head: dict[bytes, tuple] = {}

    def __call__(self, data: bytes, max_header_bytes: int) -> tuple:
        end = data.find(b"\r\n\r\n", 0, self._limit)
        if end < 0:
            return self.parse(data, max_header_bytes)
        head = data[:end + 4]
        by_head = self._by_head
        result = by_head.get(head)
        if result is None:
            result = self.parse(data, max_header_bytes)
            if result[0] == PARSED and result[1].header_bytes == end + 4:
                if len(by_head) >= MAX_CACHED_HEADS:
                    by_head.clear()
                by_head[head] = result
        return result


class Message:
    """A framed request or response with the kernel times of its first and
    last bytes (a sent message's times are its writes' starts), and the
    thread that handled them."""

    __slots__ = ("parsed", "first_start_ns", "first_end_ns", "last_end_ns", "tid", "context")

    def __init__(self, parsed, start_ns: int, end_ns: int, tid: int):
        self.parsed = parsed
        self.first_start_ns = start_ns
        self.first_end_ns = end_ns
        self.last_end_ns = end_ns
        self.tid = tid
        self.context = None   # the linker's per-request trace context


class Stream:
    __slots__ = ("is_request", "parse", "state", "buf", "remaining", "chunked", "message")

    def __init__(self, is_request: bool, parse):
        self.is_request = is_request
        self.parse = parse
        self.state = _HEAD
        self.buf = b""
        self.remaining = 0
        self.chunked = None
        self.message = None


class Http1State:
    """A connection's two directions (None until the side sending requests
    is known), its requests waiting for a response, oldest first, and a
    response that came before its request (early)."""

    __slots__ = ("ingress", "egress", "pending", "early")

    def __init__(self):
        self.ingress: Stream | None = None
        self.egress: Stream | None = None
        self.pending: deque[Message] = deque()
        # A response with no request waiting: its request's record may still
        # come.  A write is copied when its call ends, so a client whose
        # reader runs on another thread (Go's net/http, with or without TLS)
        # can have the answer copied while the writing thread has yet to
        # return from the call that sent the request.
        self.early: Message | None = None


def inside_a_message(state: Http1State) -> bool:
    """Whether the payload path is inside a message on this connection, or
    has a request waiting: an exchange record cannot belong there.  A
    stream inside a head or a body holds its Message; one waiting for the
    next message start (between messages, or after a gap) holds none.  (A
    response that came before its request, `early`, says nothing of where
    the connection is.)"""
    ingress = state.ingress
    return bool(state.pending) or ingress is not None and (
        ingress.message is not None or state.egress.message is not None)


def _set_request_direction(conn, state: Http1State, direction: int, heads: tuple) -> None:
    """heads: the (request, response) head parsers."""
    requests_in = direction == _INGRESS
    state.ingress = Stream(requests_in, heads[0] if requests_in else heads[1])
    state.egress = Stream(not requests_in, heads[1] if requests_in else heads[0])
    if conn.role not in (_ROLE_SERVER, _ROLE_CLIENT):
        conn.role = _ROLE_SERVER if requests_in else _ROLE_CLIENT


class Http1Handler(ProtocolHandler):
    PROTOCOL = C["PROTOCOL_HTTP1"]
    NAME = "http1"
    COUNTERS = COUNTERS
    # agent/parsers/http1.py's reasons, and this handler's bad_chunk.
    PARSE_ERRORS = parse_errors(NAME, "bad_method", "bad_request_line", "bad_status_line",
                                "bad_version", "bad_header", "header_too_large",
                                "bad_content_length", "bad_transfer_encoding", "bad_chunk")

    def __init__(self, counts: dict, parse_errors: dict, limits):
        super().__init__(counts, parse_errors, limits)
        self.max_pending = limits.max_pending
        self.max_header_bytes = limits.max_header_bytes
        self.request_timeout_ns = limits.request_timeout_ns
        self.heads = (ParsedHeads(http1.parse_request, limits.max_header_bytes),
                      ParsedHeads(http1.parse_response, limits.max_header_bytes))

    def open(self, conn, record, hot: tuple) -> bool:
        state = conn.state = Http1State()
        if conn.role == _ROLE_SERVER:
            _set_request_direction(conn, state, _INGRESS, self.heads)
        elif conn.role == _ROLE_CLIENT:
            _set_request_direction(conn, state, 1 - _INGRESS, self.heads)
        return True

    # -- hot path ---------------------------------------------------------
    def record(self, conn, record, hot: tuple, out: list) -> None:
        (_, _, tid, _, _, start_ns, end_ns, length, captured, direction, _, _, _, _, _) = hot
        payload = record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + captured]
        state = conn.state
        if state.ingress is None:
            if http1.looks_like_request(payload):
                _set_request_direction(conn, state, direction, self.heads)
            elif http1.looks_like_response(payload):
                _set_request_direction(conn, state, 1 - direction, self.heads)
            else:
                self.counts["events_skipped_resync"] += 1
                return
        # Bytes count as sent when the write begins and as received when the
        # read returns: then a peer's span on this node always nests in its
        # caller's (a reader on another core can return before the writer's
        # syscall does).
        if direction == _INGRESS:
            self._feed(conn, state.ingress, payload, length - len(payload), tid, start_ns,
                       end_ns, out)
        else:
            self._feed(conn, state.egress, payload, length - len(payload), tid, start_ns,
                       start_ns, out)

    def kept_request(self, conn, request, hot: tuple, out: list) -> None:
        """A request the probes parsed and kept, handed over before its
        response began (agent/protocols/http1_records.py): taken as if its
        head, and whatever body it had, had been read here; its times are
        the record's (a request counts as sent when its write began, as
        received when its read returned, as here)."""
        state = conn.state
        direction = hot[9]
        if state.ingress is None:
            _set_request_direction(conn, state, direction, self.heads)
        stream = state.ingress if direction == _INGRESS else state.egress
        stream.buf = b""
        stream.state = _HEAD
        stream.message = Message(request, hot[5], hot[5], hot[2])
        self._start_body(conn, stream, request, out)

    def misread(self) -> None:
        """An exchange record came where inside_a_message(): dropped."""
        self.counts["http_records_misread"] += 1

    def gap(self, conn) -> None:
        """Whatever was being framed is unreliable: both directions wait for
        the next message start."""
        self._drop_early(conn.state)
        for stream in (conn.state.ingress, conn.state.egress):
            if stream is not None:
                if stream.buf or stream.message is not None:
                    self.counts["messages_incomplete"] += 1
                stream.buf = b""
                stream.message = None
                stream.chunked = None
                stream.state = _RESYNC

    def close(self, conn, out: list) -> None:
        state = conn.state
        stream = state.ingress if state.ingress is not None and not state.ingress.is_request \
            else state.egress
        if stream is not None and stream.state == _UNTIL_CLOSE and stream.message is not None:
            self._complete(conn, stream, out)

    def discard(self, conn) -> None:
        """Count requests still waiting for a response, and heads only partly seen."""
        state = conn.state
        self.counts["requests_without_response"] += len(state.pending)
        self._drop_early(state)
        for stream in (state.ingress, state.egress):
            if stream is not None and (stream.buf or stream.message is not None):
                self.counts["messages_incomplete"] += 1

    def expire_requests(self, conn, now_ns: int) -> None:
        state = conn.state
        pending = state.pending
        timeout = self.request_timeout_ns
        while pending and now_ns - pending[0].last_end_ns > timeout:
            pending.popleft()
            self.counts["requests_without_response"] += 1
        if state.early is not None and now_ns - state.early.last_end_ns > timeout:
            self._drop_early(state)

    def _drop_early(self, state: Http1State) -> None:
        """The early response's request will not come (or cannot be told)."""
        if state.early is not None:
            state.early = None
            self.counts["responses_without_request"] += 1

    def _feed(self, conn, stream: Stream, data: bytes, uncaptured: int,
              tid: int, start_ns: int, end_ns: int, out: list) -> None:
        """Consume one event's bytes; `uncaptured` bytes followed them on the
        wire but were beyond the capture size."""
        if stream.state == _RESYNC:
            starts = http1.looks_like_request if stream.is_request else http1.looks_like_response
            if not starts(data):
                self.counts["events_skipped_resync"] += 1
                return
            stream.state = _HEAD
            stream.buf = b""
        while True:
            state = stream.state
            if state == _HEAD:
                if not data and not stream.buf:
                    if uncaptured:
                        stream.state = _RESYNC
                    return
                buf = stream.buf + data if stream.buf else data
                status, parsed, reason = stream.parse(buf, self.max_header_bytes)
                if status == NEED_MORE:
                    if uncaptured:
                        # The head continues beyond what was captured: its end
                        # and the framing after it are unknown.
                        self.counts["heads_truncated"] += 1
                        stream.buf = b""
                        stream.state = _RESYNC
                    else:
                        stream.buf = buf
                        if stream.message is None:
                            stream.message = Message(None, start_ns, end_ns, tid)
                    return
                if status == INVALID:
                    self.parse_error(reason)
                    stream.buf = b""
                    stream.message = None
                    stream.state = _RESYNC
                    return
                message = stream.message
                if message is None:
                    message = Message(parsed, start_ns, end_ns, tid)
                else:
                    message.parsed = parsed
                    message.last_end_ns = end_ns
                stream.message = message
                stream.buf = b""
                data = buf[parsed.header_bytes:]
                self._start_body(conn, stream, parsed, out)
                continue
            message = stream.message
            message.last_end_ns = end_ns
            if state == _BODY:
                available = len(data) + uncaptured
                if available < stream.remaining:
                    stream.remaining -= available
                    return
                used = stream.remaining
                stream.remaining = 0
                if used >= len(data):
                    uncaptured -= used - len(data)
                    data = b""
                else:
                    data = data[used:]
                self._complete(conn, stream, out)
                continue
            if state == _CHUNKED:
                if uncaptured:
                    # Chunk sizes inside the uncaptured bytes are unknown: end
                    # the message here and pick up at the next message start.
                    self._complete(conn, stream, out)
                    stream.state = _RESYNC
                    return
                status, consumed = stream.chunked.feed(data)
                if status == NEED_MORE:
                    return
                if status == INVALID:
                    self.parse_error("bad_chunk")
                    self._complete(conn, stream, out)
                    stream.state = _RESYNC
                    return
                data = data[consumed:]
                self._complete(conn, stream, out)
                continue
            return  # _UNTIL_CLOSE: everything is body until the close event

    def _start_body(self, conn, stream: Stream, parsed, out: list) -> None:
        if stream.is_request:
            self.counts["http_requests"] += 1
            out.append((ITEM_TAG, conn, stream.message, None))
            has_body = True
        else:
            if 100 <= parsed.status_code < 200 and parsed.status_code != 101:
                # Interim response (100 Continue): the final one follows.
                stream.message = None
                stream.state = _HEAD
                return
            pending = conn.state.pending
            method = pending[0].parsed.method if pending else "GET"
            has_body = http1.response_has_body(method, parsed.status_code)
        if not has_body:
            stream.state = _HEAD
            self._complete(conn, stream, out)
        elif parsed.chunked:
            stream.chunked = http1.ChunkedBody()
            stream.state = _CHUNKED
        elif parsed.content_length > 0:
            stream.remaining = parsed.content_length
            stream.state = _BODY
        elif parsed.content_length == 0 or stream.is_request:
            stream.state = _HEAD
            self._complete(conn, stream, out)
        else:
            stream.remaining = _UNBOUNDED
            stream.state = _UNTIL_CLOSE

    def _complete(self, conn, stream: Stream, out: list) -> None:
        message = stream.message
        stream.message = None
        stream.chunked = None
        stream.state = _HEAD
        state = conn.state
        pending = state.pending
        if stream.is_request:
            early = state.early
            # Its request if this one was sent before the response was read
            # (a later request cannot have been answered by it).
            if early is not None and message.first_start_ns <= early.last_end_ns:
                state.early = None
                out.append((ITEM_TAG, conn, message, early))
                return
            self._drop_early(state)
            if len(pending) >= self.max_pending:
                pending.popleft()
                self.counts["requests_without_response"] += 1
            pending.append(message)
            return
        self.counts["http_responses"] += 1
        if not pending:
            self._drop_early(state)
            state.early = message
            return
        out.append((ITEM_TAG, conn, pending.popleft(), message))
