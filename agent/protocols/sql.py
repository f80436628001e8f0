"""PostgreSQL and MySQL/MariaDB connections: the ConnectionTracker hands
them every event the kernel classified PROTOCOL_POSTGRES or PROTOCOL_MYSQL.

Per connection: the framing state of each direction (the client's requests,
the server's responses), the statements prepared on it, and the queries
waiting for their response, oldest first.  Work items for the span
builder's linker, in event order:

  (ITEM_SQL_REQUEST, conn, query)    a statement was sent (client side) or
                                     read (server side)
  (ITEM_SQL_EXCHANGE, conn, query)   its response completed: the same SqlQuery

Only statements make items: a PostgreSQL simple query ('Q', one item however
many statements its text holds) or Execute, a MySQL COM_QUERY or
COM_STMT_EXECUTE.  Connection setup, authentication, Parse/Bind/Sync,
COM_PING, COM_STMT_PREPARE, COM_INIT_DB... only update the state.

`conn` is a connections.Connection (addresses, pid, role).  Times are the
kernel's: a client query starts at the entry of the write that carried it,
a server query at the exit of the read that did; a query ends with the
syscall that completed its response.

Framing.  An event holds the first `captured` bytes of what its syscall
moved; with FLAG_TAIL its last SQL_TAIL_BYTES are the syscall's last bytes
instead.  Messages longer than what was captured are skipped by their
declared lengths.  When a message boundary falls into bytes that were not
captured, that direction's framing is lost: the server's tail may still
show the response's end (PostgreSQL CommandComplete/ErrorResponse +
ReadyForQuery, MySQL's final EOF/ERR); else the oldest query completes
when the client sends its next request (a client that does not pipeline
has read the whole response by then), ending with the last server event
seen, and the direction picks up at the next event that starts a message.

Everything kept is bounded (connections, queries waiting per connection,
prepared statements and portals per connection) and everything dropped is
counted in the tracker's `counts` under sql_* keys (COUNT_KEYS), bad bytes
in `parse_errors[(protocol, reason)]`.  Nothing here raises for any bytes.
Statement texts are kept as sent: the span factory sanitises them; error
messages are never kept (they can quote values), only their codes.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from agent.parsers import INVALID, PARSED
from agent.parsers import mysql as my
from agent.parsers.postgres import (BACKEND_TYPES, FRONTEND_TYPES, looks_like_postgres_backend,
                                    looks_like_postgres_frontend, looks_like_postgres_startup,
                                    parse_backend, parse_frontend, parse_header, parse_startup,
                                    skip_data_rows, SpecialRequest, StartupMessage)
from agent.parsers.sql import extract_trace_context
from agent.capture.records import C, EVENT_HEADER, EVENT_HEADER_SIZE, lost_between

ITEM_SQL_REQUEST = 4
ITEM_SQL_EXCHANGE = 5

COUNT_KEYS = (
    "sql_requests_without_response",  # queries dropped unanswered: connection closed, expired,
                                      # evicted or forgotten, too many waiting, request timeout,
                                      # records lost (seq gap)
    "sql_responses_without_request",  # a statement's completion with no query waiting for it
    "sql_framing_lost",               # a direction lost its message boundaries (uncaptured bytes
                                      # or bytes that do not parse) and waits to resync
    "sql_tail_recoveries",            # framing lost, but the event's tail (FLAG_TAIL) showed
                                      # where the requests / the response ended
    "sql_fallback_completions",       # queries completed by the client's next request (or its
                                      # close) after the response's framing was lost
    "sql_events_without_direction",   # events before the side sending requests was known
    "sql_events_skipped_resync",      # events skipped while a direction waits for a message start
    "sql_tls_connections",            # SSLRequest/GSSENCRequest accepted, MySQL SSL request:
                                      # the socket carries ciphertext from then on
    "sql_compressed_connections",     # MySQL CLIENT_COMPRESS: not followed
    "sql_statements_evicted",         # prepared statements / portals dropped from the bounded maps
    "sql_unknown_statements",         # Execute of a statement whose text is unknown (prepared
                                      # before the agent joined, evicted): text None
    "sql_executes_skipped",           # PostgreSQL Executes the server skipped after an error
                                      # earlier in their Sync unit: no item
)

# Shared with the tracker's other handlers.
_SHARED_KEYS = ("connections_opened", "connections_closed", "connections_evicted",
                "connections_expired", "event_gaps")

_INGRESS = C["DIRECTION_INGRESS"]
_EGRESS = C["DIRECTION_EGRESS"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]
_PROTOCOL_POSTGRES = C["PROTOCOL_POSTGRES"]
_FLAG_TAIL = C["FLAG_TAIL"]
_TAIL_BYTES = C["SQL_TAIL_BYTES"]
# Plaintext from the TLS library probes (0 where the header has no such flag).
_FLAG_TLS = C.get("FLAG_TLS", 0)

# An incomplete message this small that must be decoded waits for the next
# event rather than being decoded from its captured part.
_BUFFER_LIMIT = 16384
_UNKNOWN_CODE = "unknown"   # an error whose code was not captured

# Stream states of one direction.
_FRAMING = 0   # at a known position in the stream
_RESYNC = 1    # lost (or not yet found): wait for an event that starts a message
_STARTUP = 2   # PostgreSQL client: startup packets (no type byte) come next
_INIT = 3      # nothing seen yet in this direction

# Walk results.
_OK, _LOST, _INVALID, _SKIP = range(4)

# PostgreSQL message type bytes.
_Q, _P, _B, _E, _C, _S, _F, _Z, _I, _s, _D = b"QPBECSFZIsD"
_FRONT_KEEP = frozenset((_Q, _P, _B, _E, _C, _S, _F))
_FRONT_DECODE = frozenset((_Q, _P, _B, _E, _C))
_BACK_KEEP = frozenset((_C, _E, _Z, _I, _s))
_BACK_DECODE = frozenset((_E,))
_REQUEST_STARTS = frozenset(b"QPB")

# PostgreSQL entries waiting for the backend: [kind, query or None].
_EXECUTE = 0   # completes at CommandComplete/EmptyQuery/PortalSuspended/ErrorResponse
_SIMPLE = 1    # 'Q': completes at ReadyForQuery; the first error is its error
_SYNC = 2      # ends an extended-protocol unit at ReadyForQuery
_CALL = 3      # FunctionCall: ends at ReadyForQuery, no query

# Connection phases.
_PG_READY = 0
_PG_SSL_WAIT = 1      # SSLRequest/GSSENCRequest sent: one byte answers it
_MY_COMMAND = 0
_MY_START = 1         # the server greeting comes next
_MY_LOGIN = 2         # the client's HandshakeResponse comes next
_MY_AUTH = 3          # authentication until the server's OK/ERR

_MY_GUESSED_CAPS = my.CLIENT_PROTOCOL_41 | my.CLIENT_SECURE_CONNECTION | my.CLIENT_MULTI_RESULTS
_CLIENT_COMPRESS = 0x20
_MY_QUERIES = frozenset((my.COM_QUERY, my.COM_STMT_EXECUTE))


class SqlQuery:
    """One statement: what the span factory needs.  text is the raw text
    as sent (None when unknown), error_code None on success, else the
    SQLSTATE (PostgreSQL) or the error number as a string (MySQL)."""

    __slots__ = ("system", "namespace", "text", "tid", "start_ns", "end_ns", "error_code",
                 "traceparent", "tracestate", "context")

    def __init__(self, system: str, namespace, text, tid: int, start_ns: int):
        self.system = system
        self.namespace = namespace
        self.text = text
        self.tid = tid
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.error_code = None
        if text and "traceparent" in text:
            self.traceparent, self.tracestate = extract_trace_context(text)
        else:
            self.traceparent = self.tracestate = None
        self.context = None

    def __repr__(self) -> str:
        return f"SqlQuery({self.system}, {self.text!r}, error={self.error_code})"


class _Stream:
    """One direction's framing: buf holds the start of a message to finish
    with the next event's bytes, skip the bytes of a message still to come."""

    __slots__ = ("state", "buf", "skip")

    def __init__(self, state: int):
        self.state = state
        self.buf = b""
        self.skip = 0

    def reset(self, state: int) -> None:
        self.state = state
        self.buf = b""
        self.skip = 0


class _SqlConnection:
    __slots__ = ("conn", "postgres", "system", "namespace", "client_direction", "ts_at_entry",
                 "client", "server", "pending", "statements", "portals", "phase", "caps",
                 "caps_known", "reader", "last_seen_ns", "last_server_end_ns", "server_lost",
                 "ignored", "tls")

    def __init__(self, conn, postgres: bool, client_direction: int):
        self.conn = conn
        self.postgres = postgres
        self.system = "postgresql" if postgres else "mysql"
        self.namespace = None
        self.client_direction = client_direction
        # A client stamps a query at its write's entry, a server at its read's exit.
        self.ts_at_entry = client_direction == _EGRESS
        self.client = _Stream(_INIT)
        self.server = _Stream(_INIT)
        self.pending: deque[list] = deque()
        self.statements: OrderedDict = OrderedDict()
        self.portals: dict = {}
        self.phase = 0
        self.caps = _MY_GUESSED_CAPS
        self.caps_known = False
        self.reader = None               # MySQL: the ResponseReader of the oldest command
        self.last_seen_ns = 0
        self.last_server_end_ns = 0
        self.server_lost = False         # the response being read lost its framing
        self.ignored = False             # encrypted or not followed
        self.tls = False                 # the socket's bytes became ciphertext

    def queries_pending(self) -> int:
        return sum(1 for entry in self.pending if entry[1] is not None)


# ------------------------------------------------------------------ framing

def _split(payload: bytes, length: int, flags: int):
    """(head, gap, tail): the captured first bytes, how many bytes the
    syscall moved after them that were not captured, and the captured last
    bytes (FLAG_TAIL) that follow those."""
    gap = length - len(payload)
    if gap <= 0:
        return payload, 0, b""
    if flags & _FLAG_TAIL and len(payload) >= _TAIL_BYTES:
        cut = len(payload) - _TAIL_BYTES
        return payload[:cut], gap, payload[cut:]
    return payload, gap, b""


def _walk_event(data: bytes, gap: int, tail: bytes, skip: int, frame, out: list, spec):
    """The walk over one event that both protocols share: data (the captured
    head, after any bytes kept from the last event), `gap` uncaptured bytes,
    then tail; `skip` bytes of an earlier message come first.
    frame(seg, pos, gap_after, out, spec) frames the messages of one segment
    from pos into out and returns (skip, stop): the bytes of a message that
    runs past the segment, and None or the (status, rest, reason) that ends
    the walk.  Returns (status, skip, rest, reason): _OK (skip / rest carry
    over to the next event), _LOST (a message boundary lies in the gap) or
    _INVALID."""
    seg, gap_after = data, gap
    while True:
        n = len(seg)
        if skip >= n:
            skip -= n
        else:
            skip, stop = frame(seg, skip, gap_after, out, spec)
            if stop is not None:
                return stop
        if not gap_after:
            return _OK, skip, b"", ""
        if skip < gap_after:
            return _LOST, 0, b"", ""
        skip -= gap_after
        gap_after = 0
        if not tail:
            return _OK, skip, b"", ""
        seg, tail = tail, b""


# What _pg_frame follows per side: (frontend, kept types, decoded types, parser).
_FRONT_SPEC = (True, _FRONT_KEEP, _FRONT_DECODE, parse_frontend)
_BACK_SPEC = (False, _BACK_KEEP, _BACK_DECODE, parse_backend)


def _pg_frame(seg: bytes, pos: int, gap_after: int, messages: list, spec):
    """PostgreSQL messages of one segment, for _walk_event: (type byte,
    decoded message or None) for the types the handler follows."""
    frontend, keep, decode, parse = spec
    n = len(seg)
    while pos < n:
        kind = seg[pos]
        if kind == _D and not frontend:
            pos = skip_data_rows(seg, pos)[1]
            if pos >= n:
                break
            kind = seg[pos]
        if n - pos < 5:
            if gap_after:
                return 0, (_LOST, 0, b"", "")
            if kind not in (FRONTEND_TYPES if frontend else BACKEND_TYPES):
                return 0, (_INVALID, 0, b"", "bad_type")
            return 0, (_OK, 0, seg[pos:], "")
        status, _, total, reason = parse_header(seg[pos:pos + 5], frontend)
        if status != PARSED:
            return 0, (_INVALID, 0, b"", reason)
        end = pos + total
        if kind in keep:
            m = None
            if kind in decode:
                if end <= n:
                    status, m, _, reason = parse(seg[pos:end])
                elif not gap_after and total <= _BUFFER_LIMIT:
                    return 0, (_OK, 0, seg[pos:], "")
                else:
                    status, m, _, reason = parse(seg[pos:], True)
                if status != PARSED:
                    return 0, (_INVALID, 0, b"", reason)
            messages.append((kind, m))
        if end > n:
            return end - n, None
        pos = end
    return 0, None


def _pg_walk(data: bytes, gap: int, tail: bytes, skip: int, frontend: bool):
    """Frame PostgreSQL messages over one event (see _walk_event).  Returns
    (messages, status, skip, rest, reason): messages are (type byte,
    decoded message or None) for the types the handler follows."""
    messages = []
    status, skip, rest, reason = _walk_event(data, gap, tail, skip, _pg_frame, messages,
                                             _FRONT_SPEC if frontend else _BACK_SPEC)
    return messages, status, skip, rest, reason


def _pg_front_chain(tail: bytes):
    """The frontend messages that end exactly at the end of tail, from the
    earliest offset where a run of whole messages does; None if none does."""
    n = len(tail)
    for start in range(n - 4):
        if tail[start] not in FRONTEND_TYPES:
            continue
        messages = []
        pos = start
        while pos < n:
            status, m, consumed, _ = parse_frontend(tail[pos:])
            if status != PARSED:
                break
            if tail[pos] in _FRONT_KEEP:
                messages.append((tail[pos], m))
            pos += consumed
        else:
            return messages
    return None


_Z_LEN = b"\0\0\0\x05"
_FIXED_4 = b"\0\0\0\x04"


def _pg_tail_end(tail: bytes):
    """When tail ends with ReadyForQuery: the CommandComplete /
    ErrorResponse / EmptyQueryResponse / PortalSuspended messages that end
    exactly where it starts, walking back, in stream order; else None."""
    n = len(tail)
    if n < 6 or tail[n - 6] != _Z or tail[n - 5:n - 1] != _Z_LEN or tail[n - 1] not in b"ITE":
        return None
    results = []
    end = n - 6
    while end >= 5:
        kind = tail[end - 5]
        if (kind == _I or kind == _s) and tail[end - 4:end] == _FIXED_4:
            results.append((kind, None))
            end -= 5
            continue
        for start in range(end - 6, -1, -1):
            kind = tail[start]
            if (kind == _C or kind == _E) and \
                    int.from_bytes(tail[start + 1:start + 5], "big") + 1 == end - start:
                status, m, _, _ = parse_backend(tail[start:end])
                if status == PARSED:
                    results.append((kind, m))
                    end = start
                    break
        else:
            break
    results.reverse()
    return results


def _my_frame(seg: bytes, pos: int, gap_after: int, packets: list, want: int):
    """MySQL packets of one segment, for _walk_event: (seq, bytes of the
    packet as captured, truncated) for packets with sequence id `want`
    (every packet when want < 0)."""
    n = len(seg)
    while pos < n:
        if n - pos < 4:
            if gap_after:
                return 0, (_LOST, 0, b"", "")
            return 0, (_OK, 0, seg[pos:], "")
        total = 4 + (seg[pos] | seg[pos + 1] << 8 | seg[pos + 2] << 16)
        end = pos + total
        seq = seg[pos + 3]
        if want < 0 or seq == want:
            if end <= n:
                packets.append((seq, seg[pos:end], False))
            elif not gap_after and total <= _BUFFER_LIMIT:
                return 0, (_OK, 0, seg[pos:], "")
            else:
                packets.append((seq, seg[pos:], True))
        if end > n:
            return end - n, None
        pos = end
    return 0, None


def _my_walk(data: bytes, gap: int, tail: bytes, skip: int, want: int):
    """Physical MySQL packets over one event (see _walk_event): returns
    (packets, status, skip, rest) where packets are as _my_frame gives them."""
    packets = []
    status, skip, rest, _ = _walk_event(data, gap, tail, skip, _my_frame, packets, want)
    return packets, status, skip, rest


def _my_tail_end(tail: bytes, caps: int):
    """When tail ends with the final packet of an answer (ERR, or EOF /
    OK-as-EOF without SERVER_MORE_RESULTS_EXISTS) whose 3-byte length ends
    exactly at its end: that packet's Response; else None."""
    n = len(tail)
    for start in range(n - 5, -1, -1):
        if start + 4 + (tail[start] | tail[start + 1] << 8 | tail[start + 2] << 16) != n:
            continue
        first = tail[start + 4]
        if first != 0xFF and first != 0xFE:
            continue
        status, m, _ = my.decode_response(tail[start + 4:], caps)
        if status != PARSED:
            continue
        if m.kind == "error":
            if m.error_code != 0xFFFF:
                return m
        elif not m.status_flags & my.SERVER_MORE_RESULTS_EXISTS:
            return m
    return None


def _looks_like_login(data: bytes) -> bool:
    """A HandshakeResponse (sequence id 1, or 2 after TLS) at the start of data."""
    if len(data) < 36 or data[3] not in (1, 2):
        return False
    status, packet, _, _ = my.parse_packet(data, True)
    return status == PARSED and (
        my.decode_handshake_response(packet.payload)[0] == PARSED
        or packet.truncated and data[4 + 1] & (my.CLIENT_PROTOCOL_41 >> 8) != 0)


def _use_schema(text: str):
    """The schema a `USE name` statement switches to, else None."""
    if len(text) < 5 or text[:3].lower() != "use" or text[3] not in " \t\r\n`":
        return None
    name = text[3:].strip().rstrip(";").strip()
    if len(name) > 1 and name[0] == name[-1] == "`":
        name = name[1:-1].replace("``", "`")
    return name or None


# ------------------------------------------------------------------ handler

class SqlConnectionHandler:
    def __init__(self, counts: dict, parse_errors: dict, max_connections: int = 16384,
                 max_pending: int = 64, max_statements: int = 256,
                 request_timeout_ns: int = 120 * 10**9):
        self.counts = counts
        for key in COUNT_KEYS + _SHARED_KEYS:
            counts.setdefault(key, 0)
        self.parse_errors = parse_errors
        self.connections: OrderedDict[int, _SqlConnection] = OrderedDict()
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_statements = max_statements
        self.request_timeout_ns = request_timeout_ns

    def __len__(self) -> int:
        return len(self.connections)

    # -- hot path ---------------------------------------------------------
    def event(self, record, hot: tuple, out: list, connection_factory) -> None:
        """One data event; `hot` is the leading header fields the tracker
        already unpacked (through seq)."""
        (_, _, tid, _, conn_id, start_ns, end_ns, length, captured, direction, role,
         protocol, flags, _, seq) = hot
        payload = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + captured])
        sc = self.connections.get(conn_id)
        if sc is None:
            client_direction = _client_direction(payload, direction, role, protocol)
            if client_direction is None:
                self.counts["sql_events_without_direction"] += 1
                return
            sc = self._open(EVENT_HEADER.unpack_from(record), protocol, client_direction,
                            connection_factory)
        else:
            self.connections.move_to_end(conn_id)
        conn = sc.conn
        if seq:
            if lost_between(conn.last_seq, seq):
                self._gap(sc)
            conn.last_seq = seq
        sc.last_seen_ns = end_ns
        if sc.tls:
            if not flags & _FLAG_TLS:
                return          # ciphertext
            if sc.ignored:      # the first plaintext from the TLS probes
                self._plaintext_starts(sc)
        elif sc.ignored:
            return
        head, gap, tail = _split(payload, length, flags)
        try:
            if direction == sc.client_direction:
                ts = start_ns if sc.ts_at_entry else end_ns
                if sc.postgres:
                    self._pg_client(sc, head, gap, tail, tid, ts, out)
                else:
                    self._my_client(sc, head, gap, tail, tid, ts, out)
            else:
                sc.last_server_end_ns = end_ns
                if sc.postgres:
                    self._pg_server(sc, head, gap, tail, end_ns, out)
                else:
                    self._my_server(sc, head, gap, tail, end_ns, out)
        except Exception:  # pragma: no cover - defensive: bytes must never stop the agent
            self._parse_error(sc, "internal")
            self._gap_state(sc)

    def _open(self, header: tuple, protocol: int, client_direction: int,
              connection_factory) -> _SqlConnection:
        if len(self.connections) >= self.max_connections:
            _, old = self.connections.popitem(last=False)
            self.counts["connections_evicted"] += 1
            self.counts["sql_requests_without_response"] += old.queries_pending()
        conn = connection_factory(header)
        conn.role = _ROLE_CLIENT if client_direction == _EGRESS else _ROLE_SERVER
        sc = _SqlConnection(conn, protocol == _PROTOCOL_POSTGRES, client_direction)
        self.connections[conn.conn_id] = sc
        self.counts["connections_opened"] += 1
        return sc

    def _plaintext_starts(self, sc: _SqlConnection) -> None:
        """TLS plaintext of a connection whose socket switched to TLS: the
        protocol starts over inside it (PostgreSQL: StartupMessage; MySQL:
        the HandshakeResponse, sequence id 2)."""
        sc.ignored = False
        sc.client.reset(_INIT)
        sc.server.reset(_FRAMING)
        sc.phase = _MY_LOGIN if not sc.postgres else _PG_READY

    def _gap(self, sc: _SqlConnection) -> None:
        """Records were lost: queries in flight are dropped, both directions
        wait for the next message start."""
        self.counts["event_gaps"] += 1
        self._gap_state(sc)

    def _gap_state(self, sc: _SqlConnection) -> None:
        self.counts["sql_requests_without_response"] += sc.queries_pending()
        sc.pending.clear()
        sc.reader = None
        sc.server_lost = False
        if sc.client.state != _INIT:
            sc.client.reset(_RESYNC)
        if sc.server.state != _INIT:
            sc.server.reset(_RESYNC)
        if sc.postgres:
            sc.phase = _PG_READY
        elif sc.phase != _MY_COMMAND:
            sc.phase = _MY_COMMAND

    def _parse_error(self, sc: _SqlConnection, reason: str) -> None:
        key = ("postgresql" if sc.postgres else "mysql", reason or "invalid")
        self.parse_errors[key] = self.parse_errors.get(key, 0) + 1

    def _push(self, sc: _SqlConnection, entry: list, limit: int) -> None:
        pending = sc.pending
        if len(pending) >= limit:
            old = pending.popleft()
            if old[1] is not None:
                self.counts["sql_requests_without_response"] += 1
        pending.append(entry)

    def _define(self, sc: _SqlConnection, name, text) -> None:
        statements = sc.statements
        if name in statements:
            statements.move_to_end(name)
        elif len(statements) >= self.max_statements:
            statements.popitem(last=False)
            self.counts["sql_statements_evicted"] += 1
        statements[name] = text

    def _complete(self, sc: _SqlConnection, query, error_code, end_ns: int, out: list) -> None:
        if query is None:
            return
        if error_code is not None:
            query.error_code = error_code
        query.end_ns = end_ns
        out.append((ITEM_SQL_EXCHANGE, sc.conn, query))

    # -- PostgreSQL -------------------------------------------------------
    def _pg_client(self, sc: _SqlConnection, data: bytes, gap: int, tail: bytes, tid: int,
                   ts: int, out: list) -> None:
        st = sc.client
        if st.buf:
            data = st.buf + data
            st.buf = b""
        if st.state == _INIT:
            if len(data) < 8 and not gap:
                st.buf = data             # too little to tell yet
                return
            if looks_like_postgres_startup(data):
                st.state = _STARTUP
                if sc.server.state == _INIT:
                    sc.server.state = _FRAMING
            else:
                st.state = _RESYNC
        if st.state == _STARTUP:
            data = self._pg_startup(sc, data, gap)
            if data is None:
                return
        resync = st.state == _RESYNC
        if resync:
            if not looks_like_postgres_frontend(data):
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.skip = 0
        messages, status, skip, rest, reason = _pg_walk(data, gap, tail, st.skip, True)
        if resync:
            if status == _INVALID:
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.state = _FRAMING
        st.skip, st.buf = skip, rest
        if messages:
            self._pg_requests(sc, messages, tid, ts, out)
        if status == _OK:
            return
        if status == _INVALID:
            self._parse_error(sc, reason)
        else:
            # The unnamed portal was likely bound in the gap, to the last
            # statement this event parsed.
            parsed = [m for kind, m in messages if kind == _P and m.statement is not None]
            if parsed:
                sc.portals[""] = sc.statements.get(parsed[-1].statement)
            else:
                sc.portals.pop("", None)
            chain = _pg_front_chain(tail) if tail else None
            if chain is not None:
                self.counts["sql_tail_recoveries"] += 1
                st.reset(_FRAMING)
                if chain:
                    self._pg_requests(sc, chain, tid, ts, out)
                return
        self.counts["sql_framing_lost"] += 1
        st.reset(_RESYNC)

    def _pg_startup(self, sc: _SqlConnection, data: bytes, gap: int):
        """Startup packets: the bytes after the StartupMessage, or None when
        the event is used up."""
        st = sc.client
        while data:
            status, m, consumed, reason = parse_startup(data)
            if status == PARSED:
                data = data[consumed:]
                if type(m) is StartupMessage:
                    sc.namespace = m.database or m.user
                    st.state = _FRAMING
                    return data
                if type(m) is SpecialRequest:
                    if m.kind == "cancel":
                        sc.ignored = True     # a CancelRequest connection: nothing follows
                        return None
                    sc.phase = _PG_SSL_WAIT
                continue
            if status == INVALID:
                if looks_like_postgres_frontend(data):
                    st.state = _FRAMING       # no startup after all: joined late
                    return data
                self._parse_error(sc, reason)
            elif not gap and consumed <= _BUFFER_LIMIT:
                st.buf = data
                return None
            self.counts["sql_framing_lost"] += 1
            st.reset(_RESYNC)
            return None
        return None

    def _pg_requests(self, sc: _SqlConnection, messages: list, tid: int, ts: int,
                     out: list) -> None:
        if sc.server_lost and sc.pending:
            self._fallback(sc, out)
        limit = 2 * self.max_pending
        for kind, m in messages:
            if kind == _E:
                text = sc.portals.get(m.portal) if m.portal is not None else None
                if text is None:
                    self.counts["sql_unknown_statements"] += 1
                query = SqlQuery(sc.system, sc.namespace, text, tid, ts)
                self._push(sc, [_EXECUTE, query], limit)
                out.append((ITEM_SQL_REQUEST, sc.conn, query))
            elif kind == _S:
                self._push(sc, [_SYNC, None], limit)
            elif kind == _B:
                if m.portal is not None:
                    portals = sc.portals
                    if m.portal not in portals and len(portals) >= self.max_statements:
                        del portals[next(iter(portals))]
                        self.counts["sql_statements_evicted"] += 1
                    text = sc.statements.get(m.statement) if m.statement is not None else None
                    if text is not None and m.statement:
                        sc.statements.move_to_end(m.statement)
                    portals[m.portal] = text
            elif kind == _P:
                if m.statement is not None and m.query is not None:
                    self._define(sc, m.statement, m.query)
            elif kind == _Q:
                query = SqlQuery(sc.system, sc.namespace, m.text, tid, ts)
                self._push(sc, [_SIMPLE, query], limit)
                out.append((ITEM_SQL_REQUEST, sc.conn, query))
            elif kind == _C:
                if m.kind == "S":
                    sc.statements.pop(m.name, None)
                elif m.kind == "P":
                    sc.portals.pop(m.name, None)
            else:   # FunctionCall
                self._push(sc, [_CALL, None], limit)

    def _pg_server(self, sc: _SqlConnection, data: bytes, gap: int, tail: bytes, end_ns: int,
                   out: list) -> None:
        st = sc.server
        if sc.phase == _PG_SSL_WAIT and data:
            sc.phase = _PG_READY
            answer = data[0]
            if answer == 0x53 or answer == 0x47:       # 'S' / 'G': encryption follows
                self.counts["sql_tls_connections"] += 1
                sc.ignored = sc.tls = True
                return
            if answer == 0x4E:                          # 'N': in clear
                data = data[1:]
                st.reset(_FRAMING)
                if not data and not gap:
                    return
        if st.buf:
            data = st.buf + data
            st.buf = b""
        resync = st.state != _FRAMING
        if resync:
            if st.state == _INIT and len(data) < 5 and not gap:
                st.buf = data
                return
            if not looks_like_postgres_backend(data):
                self._pg_resync_at_end(sc, data, gap, tail, end_ns, out)
                return
            st.skip = 0
        messages, status, skip, rest, reason = _pg_walk(data, gap, tail, st.skip, False)
        if resync:
            if status == _INVALID:
                self._pg_resync_at_end(sc, data, gap, tail, end_ns, out)
                return
            st.state = _FRAMING
            sc.server_lost = False
        st.skip, st.buf = skip, rest
        if messages:
            self._pg_responses(sc, messages, end_ns, out)
        if status == _OK:
            return
        if status == _INVALID:
            self._parse_error(sc, reason)
        elif tail:
            results = _pg_tail_end(tail)
            if results is not None:
                self.counts["sql_tail_recoveries"] += 1
                self._pg_unit_done(sc, results, end_ns, out)
                st.reset(_FRAMING)
                return
        self.counts["sql_framing_lost"] += 1
        st.reset(_RESYNC)
        sc.server_lost = True

    def _pg_resync_at_end(self, sc: _SqlConnection, data: bytes, gap: int, tail: bytes,
                          end_ns: int, out: list) -> None:
        """An event that does not start at a message boundary, while the
        server's framing is unknown: if it ends with ReadyForQuery (in its
        tail, or in its bytes when all were captured), the oldest unit is
        over and framing resumes after it."""
        last = tail if tail else data[-_TAIL_BYTES:] if not gap else b""
        results = _pg_tail_end(last) if last else None
        if results is None:
            self.counts["sql_events_skipped_resync"] += 1
            return
        if sc.server_lost and sc.pending:
            self.counts["sql_tail_recoveries"] += 1
            self._pg_unit_done(sc, results, end_ns, out)
        sc.server_lost = False
        sc.server.reset(_FRAMING)

    def _pg_responses(self, sc: _SqlConnection, messages: list, end_ns: int,
                      out: list) -> None:
        pending = sc.pending
        counts = self.counts
        for kind, m in messages:
            if kind == _Z:
                while pending:
                    entry = pending.popleft()
                    if entry[0] == _EXECUTE:
                        if entry[1] is not None:
                            counts["sql_requests_without_response"] += 1
                        continue
                    if entry[0] == _SIMPLE:
                        self._complete(sc, entry[1], None, end_ns, out)
                    break
            elif kind == _E:
                if not pending:
                    continue
                entry = pending[0]
                code = m.code or _UNKNOWN_CODE
                if entry[0] == _SIMPLE:
                    if entry[1] is not None and entry[1].error_code is None:
                        entry[1].error_code = code
                elif entry[0] == _EXECUTE:
                    # The error fails the unit's oldest Execute (a failed
                    # Parse or Bind fails the statement too); the server
                    # skips the rest of the unit up to its Sync.
                    pending.popleft()
                    self._complete(sc, entry[1], code, end_ns, out)
                    while pending and pending[0][0] == _EXECUTE:
                        if pending.popleft()[1] is not None:
                            counts["sql_executes_skipped"] += 1
            elif pending and pending[0][0] == _EXECUTE:     # C, I, s
                self._complete(sc, pending.popleft()[1], None, end_ns, out)
            elif not pending or pending[0][0] == _SYNC:
                counts["sql_responses_without_request"] += 1

    def _pg_unit_done(self, sc: _SqlConnection, results: list, end_ns: int,
                      out: list) -> int:
        """The oldest unit ended with these results (the last ones before
        its ReadyForQuery, from an event's tail): they belong to its last
        Executes; the Executes before them completed unseen."""
        pending = sc.pending
        executes = []
        last = None
        while pending:
            entry = pending.popleft()
            if entry[0] != _EXECUTE:
                last = entry
                break
            executes.append(entry[1])
        codes = [(m.code or _UNKNOWN_CODE) if kind == _E else None for kind, m in results]
        done = 0
        if last is not None and last[0] == _SIMPLE and last[1] is not None:
            query = last[1]
            if query.error_code is None:
                query.error_code = next((c for c in codes if c is not None), None)
            self._complete(sc, query, None, end_ns, out)
            done += 1
        shift = len(executes) - len(codes)
        for i, query in enumerate(executes):
            if query is not None:
                self._complete(sc, query, codes[i - shift] if i >= shift else None, end_ns, out)
                done += 1
        return done

    def _fallback(self, sc: _SqlConnection, out: list) -> None:
        """The response whose framing was lost is over (the client sent its
        next request or closed): complete the oldest query / unit, ending
        with the last server event seen."""
        sc.server_lost = False
        end_ns = sc.last_server_end_ns
        if sc.postgres:
            done = self._pg_unit_done(sc, [], end_ns, out)
        else:
            sc.reader = None
            query = sc.pending.popleft()[1]
            self._complete(sc, query, None, end_ns, out)
            done = query is not None
        self.counts["sql_fallback_completions"] += done

    # -- MySQL / MariaDB --------------------------------------------------
    def _my_client(self, sc: _SqlConnection, data: bytes, gap: int, tail: bytes, tid: int,
                   ts: int, out: list) -> None:
        st = sc.client
        if st.buf:
            data = st.buf + data
            st.buf = b""
        if st.state == _INIT:
            if len(data) < 5 and not gap:
                st.buf = data
                return
            st.state = _FRAMING
            if sc.phase == _MY_COMMAND:
                if _looks_like_login(data):
                    sc.phase = _MY_LOGIN      # the greeting was not seen, the login is
                elif not my.looks_like_mysql_command(data):
                    st.state = _RESYNC
        phase = sc.phase
        if phase == _MY_START or phase == _MY_LOGIN:
            self._my_login(sc, data, gap, tail)
            return
        if st.state == _RESYNC:
            if not my.looks_like_mysql_command(data):
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.reset(_FRAMING)
        # Commands have sequence id 0; while authenticating (256: no
        # packet) the client's packets are only framed.
        packets, status, skip, rest = _my_walk(data, gap, tail, st.skip,
                                               0 if phase == _MY_COMMAND else 256)
        st.skip, st.buf = skip, rest
        if packets:
            if sc.server_lost and sc.pending:
                self._fallback(sc, out)
            for _, raw, _ in packets:
                status_c, command, _, reason = my.parse_command(raw, sc.caps, True)
                if status_c != PARSED:
                    self._parse_error(sc, reason)
                    self.counts["sql_framing_lost"] += 1
                    st.reset(_RESYNC)
                    return
                self._my_command(sc, command, tid, ts, out)
        if status == _LOST:
            self.counts["sql_framing_lost"] += 1
            st.reset(_RESYNC)

    def _my_login(self, sc: _SqlConnection, data: bytes, gap: int, tail: bytes) -> None:
        st = sc.client
        packets, status, skip, rest = _my_walk(data, gap, tail, st.skip, -1)
        st.skip, st.buf = skip, rest
        for seq, raw, truncated in packets:
            if seq not in (1, 2) or len(raw) < 36:
                continue
            payload = raw[4:]
            status_l, login, _ = my.decode_handshake_response(payload)
            caps = int.from_bytes(payload[:4], "little")
            if status_l != PARSED and not (truncated and caps & my.CLIENT_PROTOCOL_41):
                continue
            if status_l == PARSED:
                caps = login.capabilities
                if login.ssl_request:
                    self.counts["sql_tls_connections"] += 1
                    sc.ignored = sc.tls = True
                    return
                if sc.namespace is None:
                    sc.namespace = login.database
            elif not caps & my.CLIENT_LONG_PASSWORD:
                # Truncated: the capabilities are in its first bytes.
                caps |= int.from_bytes(payload[28:32], "little") << 32
            sc.caps = caps
            sc.caps_known = True
            if caps & _CLIENT_COMPRESS:
                self.counts["sql_compressed_connections"] += 1
                sc.ignored = True
                return
            sc.phase = _MY_AUTH
            break
        if status == _LOST:
            st.reset(_FRAMING)

    def _my_command(self, sc: _SqlConnection, command, tid: int, ts: int, out: list) -> None:
        code = command.code
        if code in _MY_QUERIES:
            if code == my.COM_QUERY:
                text = command.query
            else:
                text = sc.statements.get(command.statement_id)
            if text is None:
                self.counts["sql_unknown_statements"] += 1
            query = SqlQuery(sc.system, sc.namespace, text, tid, ts)
            self._push(sc, [code, query, None], self.max_pending)
            out.append((ITEM_SQL_REQUEST, sc.conn, query))
        elif code == my.COM_STMT_PREPARE:
            self._push(sc, [code, None, command.query], self.max_pending)
        elif code == my.COM_INIT_DB:
            self._push(sc, [code, None, command.schema], self.max_pending)
        elif code == my.COM_STMT_CLOSE:
            sc.statements.pop(command.statement_id, None)
        elif code not in my.NO_RESPONSE:
            self._push(sc, [code, None, None], self.max_pending)

    def _my_server(self, sc: _SqlConnection, data: bytes, gap: int, tail: bytes, end_ns: int,
                   out: list) -> None:
        st = sc.server
        if st.state == _INIT:
            if st.buf:
                data = st.buf + data
                st.buf = b""
            if not gap and my.looks_like_greeting_payload(data):
                # Its header was read by a call of its own, before the kernel
                # could tell the connection's protocol.
                data = len(data).to_bytes(3, "little") + b"\0" + data
            if len(data) < 6 and not gap:
                st.buf = data
                return
            st.state = _FRAMING
            if sc.phase == _MY_COMMAND and sc.client.state == _INIT and \
                    my.looks_like_mysql_handshake(data):
                sc.phase = _MY_START
        if sc.phase != _MY_COMMAND:
            self._my_handshake(sc, data, gap, tail)
            return
        if st.state == _RESYNC:
            # After lost records: the next answer starts after the next command.
            if not sc.pending:
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.state = _FRAMING
        if sc.server_lost:
            # Skipping the rest of an answer whose framing was lost: it ends
            # with this event if the event ends with its final packet.
            last = tail if tail else data[-_TAIL_BYTES:] if not gap else b""
            m = _my_tail_end(last, sc.caps) if last and sc.pending else None
            if m is None:
                self.counts["sql_events_skipped_resync"] += 1
                return
            self.counts["sql_tail_recoveries"] += 1
            sc.server_lost = False
            self._my_finish(sc, m, end_ns, out)
            return
        status = self._my_feed(sc, data, end_ns, out)
        if status == _OK and gap:
            reader = sc.reader
            if reader is not None and not reader._buf and reader._skip >= gap:
                # The uncaptured bytes are inside the packet being skipped.
                reader._skip -= gap
                if tail:
                    status = self._my_feed(sc, tail, end_ns, out)
            elif reader is not None or sc.pending:
                status = _LOST
        if status == _OK or status == _SKIP:
            return
        if status == _INVALID:
            if not sc.caps_known:
                sc.caps ^= my.CLIENT_DEPRECATE_EOF    # the other guess for next time
        elif tail and sc.pending:
            m = _my_tail_end(tail, sc.caps)
            if m is not None:
                self.counts["sql_tail_recoveries"] += 1
                response = sc.reader.response if sc.reader is not None else None
                if response is not None and response.kind == "prepare_ok":
                    m = response
                sc.reader = None
                self._my_finish(sc, m, end_ns, out)
                return
        sc.reader = None
        self.counts["sql_framing_lost"] += 1
        if sc.pending:
            sc.server_lost = True

    def _my_feed(self, sc: _SqlConnection, data: bytes, end_ns: int, out: list) -> int:
        pos = 0
        n = len(data)
        while pos < n:
            reader = sc.reader
            if reader is None:
                if not sc.pending:
                    self.counts["sql_responses_without_request"] += 1
                    return _SKIP
                reader = sc.reader = my.ResponseReader(sc.pending[0][0], sc.caps)
            status, consumed = reader.feed(data[pos:] if pos else data)
            if status == PARSED:
                pos += consumed
                self._my_finish(sc, reader.response, end_ns, out)
            elif status == INVALID:
                self._parse_error(sc, "bad_response")
                return _INVALID
            else:
                return _OK
        return _OK

    def _my_finish(self, sc: _SqlConnection, response, end_ns: int, out: list) -> None:
        """The oldest command's answer is complete."""
        if response.kind == "local_infile":
            # The client sends the file, then the server answers OK or ERR.
            sc.reader = my.ResponseReader(my.COM_PING, sc.caps)
            return
        sc.reader = None
        code, query, extra = sc.pending.popleft()
        kind = response.kind
        if code == my.COM_STMT_PREPARE:
            if kind == "prepare_ok" and extra is not None:
                self._define(sc, response.statement_id, extra)
            return
        if code == my.COM_INIT_DB:
            if kind == "ok":
                sc.namespace = extra
            return
        if code == my.COM_RESET_CONNECTION or code == my.COM_CHANGE_USER:
            if kind == "ok":
                sc.statements.clear()
            return
        if query is None:
            return
        if kind == "error":
            self._complete(sc, query, str(response.error_code), end_ns, out)
            return
        if code == my.COM_QUERY and query.text:
            schema = _use_schema(query.text)
            if schema is not None:
                sc.namespace = schema
        self._complete(sc, query, None, end_ns, out)

    def _my_handshake(self, sc: _SqlConnection, data: bytes, gap: int, tail: bytes) -> None:
        """Greeting and authentication, up to the server's OK or ERR."""
        st = sc.server
        if st.buf:
            data = st.buf + data
            st.buf = b""
        packets, status, skip, rest = _my_walk(data, gap, tail, st.skip, -1)
        st.skip, st.buf = skip, rest
        for seq, raw, _ in packets:
            payload = raw[4:]
            if not payload:
                continue
            if sc.phase == _MY_START:
                if seq == 0:
                    status_h, greeting, _ = my.decode_handshake(payload)
                    if status_h == PARSED and isinstance(greeting, my.Handshake):
                        sc.system = "mariadb" if greeting.mariadb else "mysql"
                    sc.phase = _MY_LOGIN
            elif sc.phase == _MY_AUTH and (payload[0] == 0x00 or payload[0] == 0xFF):
                sc.phase = _MY_COMMAND
                st.reset(_FRAMING)
                return
        if status == _LOST:
            st.reset(_FRAMING)

    # -- housekeeping -----------------------------------------------------
    def close(self, conn_id: int, out: list, seq: int = 0) -> None:
        """The connection closed (`seq`: the close event's, to notice lost
        records): a response whose framing was lost is over."""
        sc = self.connections.pop(conn_id, None)
        if sc is None:
            return
        if seq and sc.conn.last_seq and sc.conn.last_seq != seq:
            self._gap(sc)
        if sc.server_lost and sc.pending:
            self._fallback(sc, out)
        self.counts["sql_requests_without_response"] += sc.queries_pending()
        self.counts["connections_closed"] += 1

    def expire(self, now_ns: int, idle_timeout_ns: int, request_timeout_ns: int | None = None) -> int:
        """Drop idle connections, and queries waiting longer than the request
        timeout (they stay in line as placeholders, for the responses that
        may still come to keep their order)."""
        if request_timeout_ns is None:
            request_timeout_ns = self.request_timeout_ns
        expired = 0
        counts = self.counts
        for conn_id, sc in list(self.connections.items()):
            if now_ns - sc.last_seen_ns > idle_timeout_ns:
                del self.connections[conn_id]
                counts["sql_requests_without_response"] += sc.queries_pending()
                counts["connections_expired"] += 1
                expired += 1
                continue
            for entry in sc.pending:
                query = entry[1]
                if query is None:
                    continue
                if now_ns - query.start_ns <= request_timeout_ns:
                    break
                entry[1] = None
                counts["sql_requests_without_response"] += 1
        return expired

    def forget_process(self, pid: int) -> None:
        for conn_id, sc in list(self.connections.items()):
            if sc.conn.pid == pid:
                del self.connections[conn_id]
                self.counts["sql_requests_without_response"] += sc.queries_pending()
                self.counts["connections_expired"] += 1


def _client_direction(payload: bytes, direction: int, role: int, protocol: int):
    """The direction requests travel: from the kernel's role when known,
    else from bytes only a client (or only a server) sends first."""
    if role == _ROLE_SERVER:
        return _INGRESS
    if role == _ROLE_CLIENT:
        return _EGRESS
    if protocol == _PROTOCOL_POSTGRES:
        if looks_like_postgres_startup(payload) or (
                payload[:1] and payload[0] in _REQUEST_STARTS
                and looks_like_postgres_frontend(payload)):
            return direction
        return None
    if my.looks_like_mysql_handshake(payload) or my.looks_like_greeting_payload(payload):
        return 1 - direction
    if my.looks_like_mysql_command(payload):
        return direction
    return None
