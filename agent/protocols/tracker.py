"""Reassemble and match: the stage between the drain and span building.

Per connection and direction it rebuilds the byte stream from data events,
frames HTTP/1.x messages with the pure parsers (headers, Content-Length and
chunked bodies, pipelining), and pairs each response with the oldest
request still waiting on that connection.  Everything it keeps is bounded,
and everything it throws away is counted in `self.counts`.

Output, per batch, is an ordered list of work items for the span builder:
  (ITEM_REQUEST, conn, request)     a request head is complete
  (ITEM_EXCHANGE, conn, request, response)   a response completed it
Message timestamps come from the kernel (CLOCK_MONOTONIC).

HTTP/2 connections (PROTOCOL_HTTP2) go to agent/protocols/http2.py, which
adds its own work items (ITEM_H2_REQUEST, ITEM_H2_EXCHANGE) to the same list;
PostgreSQL and MySQL connections go to agent/protocols/sql.py
(ITEM_SQL_REQUEST, ITEM_SQL_EXCHANGE).
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers import http1
from agent.protocols.http2 import H2ConnectionHandler
from agent.protocols.sql import SqlConnectionHandler
from agent.capture.records import C, EVENT_HEADER, EVENT_HEADER_SIZE, lost_between, prefix_struct

ITEM_REQUEST = 0
ITEM_EXCHANGE = 1

_EVENT_CLOSE = C["EVENT_CLOSE"]
_INGRESS = C["DIRECTION_INGRESS"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]
_PROTOCOL_HTTP1 = C["PROTOCOL_HTTP1"]
_PROTOCOL_HTTP2 = C["PROTOCOL_HTTP2"]
_PROTOCOL_POSTGRES = C["PROTOCOL_POSTGRES"]
_PROTOCOL_MYSQL = C["PROTOCOL_MYSQL"]

# Stream states of one direction.
_HEAD = 0          # collecting a message head
_BODY = 1          # counting down a Content-Length body
_CHUNKED = 2       # scanning a chunked body
_UNTIL_CLOSE = 3   # response body delimited by the connection's end
_RESYNC = 4        # lost the framing: skip to the next event that starts a message

_UNBOUNDED = 1 << 62

# The per-event fields, through `seq`: the hot loop unpacks only these;
# addresses and ports are read once, when a connection opens.
_HOT_HEADER = prefix_struct("struct event_header", "seq")
_EVENT_PROCESS_EXIT = C["EVENT_PROCESS_EXIT"]
_EVENT_PROCESS_EXEC = C["EVENT_PROCESS_EXEC"]
_FLAG_TLS = C["FLAG_TLS"]


# Heads longer than this are parsed every time: the bound keeps the cache
# below MAX_CACHED_HEADS * MAX_CACHED_HEAD_BYTES (2 MiB).
MAX_CACHED_HEAD_BYTES = 1024
MAX_CACHED_HEADS = 2048


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


def format_address(raw: bytes) -> str:
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return ipaddress.IPv4Address(raw[12:]).compressed
    return ipaddress.IPv6Address(raw).compressed


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
        self.context = None   # the span builder's per-request trace context


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


class Connection:
    __slots__ = ("conn_id", "pid", "fd", "role", "local_addr", "local_port", "remote_addr",
                 "remote_port", "scheme", "ingress", "egress", "pending", "last_seen_ns",
                 "last_seq")

    def __init__(self, header: tuple, heads: tuple | None = None):
        """heads: HTTP/1 head parsers, (request, response); HTTP/2 and SQL
        connections frame their own bytes and have none."""
        (_, pid, _, fd, conn_id, _, end_ns, _, _, _, role, _, flags, _, _,
         local_addr, remote_addr, local_port, remote_port, _, _) = header
        self.conn_id = conn_id
        self.pid = pid
        self.fd = fd
        self.role = role
        self.local_addr = format_address(local_addr)
        self.remote_addr = format_address(remote_addr)
        self.local_port = local_port
        self.remote_port = remote_port
        # A TLS connection's data all comes from the TLS uprobes.
        self.scheme = "https" if flags & _FLAG_TLS else "http"
        self.ingress: Stream | None = None
        self.egress: Stream | None = None
        if heads is not None and role in (_ROLE_SERVER, _ROLE_CLIENT):
            self._set_request_direction(_INGRESS if role == _ROLE_SERVER else 1 - _INGRESS,
                                        heads)
        self.pending: deque[Message] = deque()
        self.last_seen_ns = end_ns
        self.last_seq = 0

    def _set_request_direction(self, direction: int, heads: tuple) -> None:
        """heads: the (request, response) head parsers."""
        requests_in = direction == _INGRESS
        self.ingress = Stream(requests_in, heads[0] if requests_in else heads[1])
        self.egress = Stream(not requests_in, heads[1] if requests_in else heads[0])
        if self.role not in (_ROLE_SERVER, _ROLE_CLIENT):
            self.role = _ROLE_SERVER if direction == _INGRESS else _ROLE_CLIENT

    @property
    def is_server(self) -> bool:
        return self.role == _ROLE_SERVER

    def mirror_key(self) -> tuple:
        """This connection as seen from its peer's end."""
        return (self.remote_addr, self.remote_port, self.local_addr, self.local_port)

    def key(self) -> tuple:
        return (self.local_addr, self.local_port, self.remote_addr, self.remote_port)


class ConnectionTracker:
    def __init__(self, max_connections: int = 65536, max_pending_requests: int = 64,
                 max_header_bytes: int = 16384, idle_timeout_s: float = 300.0,
                 request_timeout_s: float = 120.0):
        self.connections: OrderedDict[int, Connection] = OrderedDict()
        self.max_connections = max_connections
        self.max_pending = max_pending_requests
        self.max_header_bytes = max_header_bytes
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        self.request_timeout_ns = int(request_timeout_s * 1e9)
        self.heads = (ParsedHeads(http1.parse_request, max_header_bytes),
                      ParsedHeads(http1.parse_response, max_header_bytes))
        self.requests = 0
        self.responses = 0
        self.counts: dict[str, int] = {
            "connections_opened": 0,
            "connections_closed": 0,
            "connections_evicted": 0,
            "connections_expired": 0,
            "requests_without_response": 0,
            "responses_without_request": 0,
            "events_skipped_resync": 0,
            "events_unknown_protocol": 0,
            "heads_truncated": 0,
            "event_gaps": 0,
            "messages_incomplete": 0,
            "records_malformed": 0,
        }
        # Processes that called exec, for the TLS library scan to look at.
        self.execs: list[int] = []
        # Processes seen for the first time (their first connection, or the
        # first after an exec): their resource is read while they live
        # (agent/runtime/pipeline.py), not when their spans are built.
        self.new_pids: list[int] = []
        self._known_pids: set[int] = set()
        # Processes whose exit was handled: the kernel keeps their names
        # until the pipeline lets go of them (agent/runtime/pipeline.py).
        self.exited: list[int] = []
        # (protocol, reason) -> count
        self.parse_errors: dict[tuple[str, str], int] = {}
        self.h2 = H2ConnectionHandler(self.counts, self.parse_errors,
                                      max_connections=max_connections)
        self.sql = SqlConnectionHandler(self.counts, self.parse_errors,
                                        max_connections=max_connections)

    # -- hot path ---------------------------------------------------------
    def process(self, records: list) -> list:
        out: list = []
        connections = self.connections
        unpack = _HOT_HEADER.unpack_from
        counts = self.counts
        header_size = EVENT_HEADER_SIZE
        looks_like_request = http1.looks_like_request
        looks_like_response = http1.looks_like_response
        for record in records:
            if len(record) < header_size:
                counts["records_malformed"] += 1
                continue
            hot = unpack(record)
            (event_type, pid, tid, _, conn_id, start_ns, end_ns, length, captured,
             direction, _, protocol, _, _, seq) = hot
            if event_type == _EVENT_PROCESS_EXIT:
                self.forget_process(pid)
                continue
            if event_type == _EVENT_PROCESS_EXEC:
                self.execs.append(pid)
                self._known_pids.discard(pid)   # a new program: read it again
                continue
            conn = connections.get(conn_id)
            if event_type == _EVENT_CLOSE:
                if conn is not None:
                    if seq and conn.last_seq != seq:
                        self._gap(conn)
                    self._close(conn, out)
                elif protocol == _PROTOCOL_HTTP2:
                    self.h2.close(conn_id)
                elif protocol == _PROTOCOL_POSTGRES or protocol == _PROTOCOL_MYSQL:
                    self.sql.close(conn_id, out, seq)
                continue
            if protocol != _PROTOCOL_HTTP1:
                if protocol == _PROTOCOL_HTTP2:
                    self.h2.event(record, hot, out, self._connection)
                elif protocol == _PROTOCOL_POSTGRES or protocol == _PROTOCOL_MYSQL:
                    self.sql.event(record, hot, out, self._connection)
                else:
                    counts["events_unknown_protocol"] += 1
                continue
            if conn is None:
                conn = self._open(EVENT_HEADER.unpack_from(record))
            else:
                connections.move_to_end(conn_id)
            conn.last_seen_ns = end_ns
            if seq:
                if lost_between(conn.last_seq, seq):
                    self._gap(conn)
                conn.last_seq = seq
            payload = record[header_size:header_size + captured]
            if conn.ingress is None:
                if looks_like_request(payload):
                    conn._set_request_direction(direction, self.heads)
                elif looks_like_response(payload):
                    conn._set_request_direction(1 - direction, self.heads)
                else:
                    counts["events_skipped_resync"] += 1
                    continue
            # Bytes count as sent when the write begins and as received when
            # the read returns: then a peer's span on this node always nests
            # in its caller's (a reader on another core can return before the
            # writer's syscall does).
            if direction == _INGRESS:
                self._feed(conn, conn.ingress, payload, length - len(payload), tid, start_ns,
                           end_ns, out)
            else:
                self._feed(conn, conn.egress, payload, length - len(payload), tid, start_ns,
                           start_ns, out)
        return out

    def _note_pid(self, pid: int) -> None:
        known = self._known_pids
        if pid not in known:
            if len(known) >= 4 * self.max_connections:
                known.clear()
            known.add(pid)
            self.new_pids.append(pid)

    def _connection(self, header: tuple, heads: tuple | None = None) -> Connection:
        conn = Connection(header, heads)
        self._note_pid(conn.pid)
        return conn

    def _open(self, header: tuple) -> Connection:
        if len(self.connections) >= self.max_connections:
            self._drop(next(iter(self.connections.values())))
            self.counts["connections_evicted"] += 1
        conn = self._connection(header, self.heads)
        self.connections[conn.conn_id] = conn
        self.counts["connections_opened"] += 1
        return conn

    def _gap(self, conn: Connection) -> None:
        """Records of this connection were lost: whatever was being framed
        is unreliable, so both directions wait for the next message start."""
        self.counts["event_gaps"] += 1
        for stream in (conn.ingress, conn.egress):
            if stream is not None:
                if stream.buf or stream.message is not None:
                    self.counts["messages_incomplete"] += 1
                stream.buf = b""
                stream.message = None
                stream.chunked = None
                stream.state = _RESYNC

    def _drop(self, conn: Connection) -> None:
        """Forget a connection, counting the messages it leaves unfinished:
        requests still waiting for a response, and heads only partly seen."""
        self.counts["requests_without_response"] += len(conn.pending)
        for stream in (conn.ingress, conn.egress):
            if stream is not None and (stream.buf or stream.message is not None):
                self.counts["messages_incomplete"] += 1
        del self.connections[conn.conn_id]

    def _close(self, conn: Connection, out: list) -> None:
        stream = conn.ingress if conn.ingress is not None and not conn.ingress.is_request \
            else conn.egress
        if stream is not None and stream.state == _UNTIL_CLOSE and stream.message is not None:
            self._complete(conn, stream, out)
        self._drop(conn)
        self.counts["connections_closed"] += 1

    def _parse_error(self, reason: str) -> None:
        key = ("http1", reason)
        self.parse_errors[key] = self.parse_errors.get(key, 0) + 1

    def _feed(self, conn: Connection, stream: Stream, data: bytes, uncaptured: int,
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
                    self._parse_error(reason)
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
                    self._parse_error("bad_chunk")
                    self._complete(conn, stream, out)
                    stream.state = _RESYNC
                    return
                data = data[consumed:]
                self._complete(conn, stream, out)
                continue
            return  # _UNTIL_CLOSE: everything is body until the close event

    def _start_body(self, conn: Connection, stream: Stream, parsed, out: list) -> None:
        if stream.is_request:
            self.requests += 1
            out.append((ITEM_REQUEST, conn, stream.message))
            has_body = True
        else:
            if 100 <= parsed.status_code < 200 and parsed.status_code != 101:
                # Interim response (100 Continue): the final one follows.
                stream.message = None
                stream.state = _HEAD
                return
            method = conn.pending[0].parsed.method if conn.pending else "GET"
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

    def _complete(self, conn: Connection, stream: Stream, out: list) -> None:
        message = stream.message
        stream.message = None
        stream.chunked = None
        stream.state = _HEAD
        if stream.is_request:
            if len(conn.pending) >= self.max_pending:
                conn.pending.popleft()
                self.counts["requests_without_response"] += 1
            conn.pending.append(message)
            return
        self.responses += 1
        if not conn.pending:
            self.counts["responses_without_request"] += 1
            return
        out.append((ITEM_EXCHANGE, conn, conn.pending.popleft(), message))

    # -- housekeeping -----------------------------------------------------
    def expire(self, now_ns: int) -> int:
        """Drop idle connections and requests that never got an answer."""
        expired = 0
        for conn_id, conn in list(self.connections.items()):
            idle = now_ns - conn.last_seen_ns
            if idle > self.idle_timeout_ns:
                self._drop(conn)
                self.counts["connections_expired"] += 1
                expired += 1
            elif conn.pending and now_ns - conn.pending[0].last_end_ns > self.request_timeout_ns:
                while conn.pending and now_ns - conn.pending[0].last_end_ns > self.request_timeout_ns:
                    conn.pending.popleft()
                    self.counts["requests_without_response"] += 1
        return (expired + self.h2.expire(now_ns, self.idle_timeout_ns)
                + self.sql.expire(now_ns, self.idle_timeout_ns))

    def forget_process(self, pid: int) -> None:
        self._known_pids.discard(pid)
        if len(self.exited) < self.max_connections:   # the pipeline drains it
            self.exited.append(pid)
        for conn_id, conn in list(self.connections.items()):
            if conn.pid == pid:
                self._drop(conn)
                self.counts["connections_expired"] += 1
        self.h2.forget_process(pid)
        self.sql.forget_process(pid)
