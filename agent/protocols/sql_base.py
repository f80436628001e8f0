"""PostgreSQL and MySQL/MariaDB connections: what both handlers share
(agent/protocols/postgres.py, agent/protocols/mysql.py).

Per connection: the framing state of each direction (the client's requests,
the server's responses), the statements prepared on it, and the queries
waiting for their response, oldest first.  Work items
(agent/protocols/contract.py), tag ITEM_TAG, in event order:

  (ITEM_TAG, conn, query, None)    a statement was sent (client side) or
                                   read (server side)
  (ITEM_TAG, conn, query, query)   its response completed: the same SqlQuery

Only statements make items: a PostgreSQL simple query ('Q', one item however
many statements its text holds) or Execute, a MySQL COM_QUERY or
COM_STMT_EXECUTE.  Connection setup, authentication, Parse/Bind/Sync,
COM_PING, COM_STMT_PREPARE, COM_INIT_DB... only update the state.

Times are the kernel's: a client query starts at the entry of the write
that carried it, a server query at the exit of the read that did; a query
ends with the syscall that completed its response.

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

Everything kept is bounded (queries waiting per connection, prepared
statements and portals per connection) and everything dropped is counted
(COUNTERS), bad bytes in `parse_errors[(protocol, reason)]`.  Nothing here
raises for any bytes.  A completed statement's text is sanitised here
(agent/parsers/sql.py), where a scanner failure is counted; error messages
are never kept (they can quote values), only their codes.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from agent.capture.records import C, EVENT_HEADER_SIZE
from agent.counters import counter
from agent.parsers.sql import extract_trace_context, query_info, sanitize
from agent.protocols.contract import ProtocolHandler, expire_waiting

ITEM_TAG = "sql"
# Besides the contract's two items, (ITEM_TAG, conn, query, PREPARE_DONE):
# a prepare that gave no span ended (agent/protocols/postgres.py).
PREPARE_DONE = "prepare_done"

# The parse errors both SQL handlers count here (agent/counters.py).
SQL_PARSE_ERRORS = ("internal", "trace_context_failed", "sanitize_failed")

COUNTERS = (
    counter("sql_requests_without_response", "sql_queries_without_response",
            "Database queries dropped unanswered (connection closed, expired or evicted, too "
            "many waiting, timeout, lost records)."),
    counter("sql_responses_without_request", "sql_responses_without_query",
            "Database statement completions with no query waiting for them."),
    counter("sql_framing_lost", "sql_framing_lost",
            "Database message boundaries lost (uncaptured or bad bytes), then found again."),
    counter("sql_tail_recoveries", "sql_tail_recoveries",
            "Lost database framing recovered from the end of a long response (FLAG_TAIL)."),
    counter("sql_fallback_completions", "sql_fallback_completions",
            "Database queries completed by the next request after their response's framing "
            "was lost."),
    counter("sql_events_without_direction", "sql_events_without_direction",
            "Database events seen before the requesting side was known, skipped."),
    counter("sql_events_skipped_resync", "sql_events_skipped_resync",
            "Database events skipped while waiting for a message start."),
    counter("sql_tls_connections", "sql_tls_connections",
            "Database connections that switched to TLS (their plaintext comes from the TLS "
            "probes)."),
    counter("sql_compressed_connections", "sql_compressed_connections",
            "MySQL connections with protocol compression, not followed."),
    counter("sql_statements_evicted", "sql_statements_evicted",
            "Prepared statements dropped from a connection's bounded table."),
    counter("sql_unknown_statements", "sql_unknown_statements",
            "Executions of statements whose text is unknown (prepared before the agent joined, "
            "or evicted)."),
    counter("sql_executes_skipped", "sql_executes_skipped",
            "PostgreSQL Executes the server skipped after an earlier error in their Sync unit."),
)

_INGRESS = C["DIRECTION_INGRESS"]
_EGRESS = C["DIRECTION_EGRESS"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]
_FLAG_TAIL = C["FLAG_TAIL"]
TAIL_BYTES = C["SQL_TAIL_BYTES"]
# Plaintext from the TLS library probes (0 where the header has no such flag).
_FLAG_TLS = C.get("FLAG_TLS", 0)

# An incomplete message this small that must be decoded waits for the next
# event rather than being decoded from its captured part.
BUFFER_LIMIT = 16384

# Stream states of one direction (a protocol may add its own from 16 on).
FRAMING = 0   # at a known position in the stream
RESYNC = 1    # lost (or not yet found): wait for an event that starts a message
INIT = 2      # nothing seen yet in this direction

# Walk results.
OK, LOST, INVALID_BYTES, SKIP = range(4)


class SqlQuery:
    """One statement: what the span stage needs.  text is the raw text as
    sent (None when unknown), error_code None on success, else the SQLSTATE
    (PostgreSQL) or the error number as a string (MySQL).  Once complete,
    sanitized is the text with its literals replaced and summary,
    operation, collection describe it (agent/parsers/sql.py)."""

    __slots__ = ("system", "namespace", "text", "tid", "start_ns", "end_ns", "error_code",
                 "traceparent", "tracestate", "context", "sanitized", "summary", "operation",
                 "collection")

    def __init__(self, system: str, namespace, text, tid: int, start_ns: int,
                 traceparent=None, tracestate=None):
        self.system = system
        self.namespace = namespace
        self.text = text
        self.tid = tid
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.error_code = None
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.context = None
        self.sanitized = self.summary = self.operation = self.collection = None

    def __repr__(self) -> str:
        return f"SqlQuery({self.system}, {self.text!r}, error={self.error_code})"


class SqlStream:
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

    def join(self, data: bytes) -> bytes:
        """data after the bytes kept from the last event, which it takes."""
        if self.buf:
            data = self.buf + data
            self.buf = b""
        return data


class SqlState:
    """What both protocols keep per connection; each protocol's state adds
    its own phase."""

    __slots__ = ("system", "namespace", "client_direction", "ts_at_entry", "client", "server",
                 "pending", "statements", "last_server_end_ns", "server_lost", "ignored", "tls")

    def __init__(self, system: str, client_direction: int):
        self.system = system
        self.namespace = None
        self.client_direction = client_direction
        # A client stamps a query at its write's entry, a server at its read's exit.
        self.ts_at_entry = client_direction == _EGRESS
        self.client = SqlStream(INIT)
        self.server = SqlStream(INIT)
        self.pending: deque[list] = deque()
        self.statements: OrderedDict = OrderedDict()
        self.last_server_end_ns = 0
        self.server_lost = False         # the response being read lost its framing
        self.ignored = False             # encrypted or not followed
        self.tls = False                 # the socket's bytes became ciphertext

    def queries_pending(self) -> int:
        return sum(1 for entry in self.pending if entry[1] is not None)


def split_event(payload: bytes, length: int, flags: int):
    """(head, gap, tail): the captured first bytes, how many bytes the
    syscall moved after them that were not captured, and the captured last
    bytes (FLAG_TAIL) that follow those."""
    gap = length - len(payload)
    if gap <= 0:
        return payload, 0, b""
    if flags & _FLAG_TAIL and len(payload) >= TAIL_BYTES:
        cut = len(payload) - TAIL_BYTES
        return payload[:cut], gap, payload[cut:]
    return payload, gap, b""


def walk_event(data: bytes, gap: int, tail: bytes, skip: int, frame, out: list, spec):
    """The walk over one event that both protocols share: data (the captured
    head, after any bytes kept from the last event), `gap` uncaptured bytes,
    then tail; `skip` bytes of an earlier message come first.
    frame(seg, pos, gap_after, out, spec) frames the messages of one segment
    from pos into out and returns (skip, stop): the bytes of a message that
    runs past the segment, and None or the (status, rest, reason) that ends
    the walk.  Returns (status, skip, rest, reason): OK (skip / rest carry
    over to the next event), LOST (a message boundary lies in the gap) or
    INVALID_BYTES."""
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
            return OK, skip, b"", ""
        if skip < gap_after:
            return LOST, 0, b"", ""
        skip -= gap_after
        gap_after = 0
        if not tail:
            return OK, skip, b"", ""
        seg, tail = tail, b""


class SqlHandler(ProtocolHandler):
    """The contract's side both SQL protocols share; a subclass frames its
    protocol (client(), server(), fallback(), client_direction(),
    new_state(), plaintext_starts(), reset_phase())."""

    COUNTERS = COUNTERS
    DIALECT: str | None = None      # the sanitiser's (agent/parsers/sql.py)

    def open(self, conn, record, hot: tuple) -> bool:
        direction, role = hot[9], hot[10]
        if role == _ROLE_SERVER:
            client_direction = _INGRESS
        elif role == _ROLE_CLIENT:
            client_direction = _EGRESS
        else:
            client_direction = self.client_direction(
                bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + hot[8]]), direction)
            if client_direction is None:
                self.counts["sql_events_without_direction"] += 1
                return False
        conn.role = _ROLE_CLIENT if client_direction == _EGRESS else _ROLE_SERVER
        conn.state = self.new_state(client_direction)
        return True

    # -- hot path ---------------------------------------------------------
    def record(self, conn, record, hot: tuple, out: list) -> None:
        (_, _, tid, _, _, start_ns, end_ns, length, captured, direction, _, _, flags, _,
         _) = hot
        payload = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + captured])
        sc = conn.state
        if sc.tls:
            if not flags & _FLAG_TLS:
                return          # ciphertext
            if sc.ignored:      # the first plaintext from the TLS probes
                sc.ignored = False
                sc.client.reset(INIT)
                sc.server.reset(FRAMING)
                self.plaintext_starts(sc)
        elif sc.ignored:
            return
        head, gap, tail = split_event(payload, length, flags)
        try:
            if direction == sc.client_direction:
                self.client(conn, sc, head, gap, tail, tid,
                            start_ns if sc.ts_at_entry else end_ns, out)
            else:
                sc.last_server_end_ns = end_ns
                self.server(conn, sc, head, gap, tail, end_ns, out)
        except Exception:  # pragma: no cover - defensive: bytes must never stop the agent
            self.parse_error("internal")
            self.gap(conn)

    def gap(self, conn) -> None:
        """Queries in flight are dropped, both directions wait for the next
        message start."""
        sc = conn.state
        self.counts["sql_requests_without_response"] += sc.queries_pending()
        sc.pending.clear()
        sc.server_lost = False
        if sc.client.state != INIT:
            sc.client.reset(RESYNC)
        if sc.server.state != INIT:
            sc.server.reset(RESYNC)
        self.reset_phase(sc)

    def plaintext_starts(self, sc: SqlState) -> None:
        """The first TLS plaintext of a connection whose socket switched to
        TLS (both streams start over): the protocol starts over inside it."""
        self.reset_phase(sc)

    def close(self, conn, out: list) -> None:
        """A response whose framing was lost is over."""
        sc = conn.state
        if sc.server_lost and sc.pending:
            self.fallback(conn, sc, out)

    def discard(self, conn) -> None:
        self.counts["sql_requests_without_response"] += conn.state.queries_pending()

    def expire_requests(self, conn, now_ns: int) -> None:
        """Queries waiting longer than the request timeout stay in line as
        placeholders, for the responses that may still come to keep their
        order."""
        self.counts["sql_requests_without_response"] += expire_waiting(
            conn.state.pending, 1, self.limits.request_timeout_ns, now_ns)

    # -- shared by both protocols -----------------------------------------
    def query(self, sc: SqlState, text, tid: int, ts: int) -> SqlQuery:
        traceparent = tracestate = None
        if text and "traceparent" in text:
            try:
                traceparent, tracestate = extract_trace_context(text)
            except Exception:   # a scanner defect: counted, the statement still traced
                self.parse_error("trace_context_failed")
        return SqlQuery(sc.system, sc.namespace, text, tid, ts, traceparent, tracestate)

    def push(self, sc: SqlState, entry: list, limit: int) -> None:
        pending = sc.pending
        if len(pending) >= limit:
            old = pending.popleft()
            if old[1] is not None:
                self.counts["sql_requests_without_response"] += 1
        pending.append(entry)

    def define(self, sc: SqlState, name, text) -> None:
        statements = sc.statements
        if name in statements:
            statements.move_to_end(name)
        elif len(statements) >= self.limits.max_statements:
            statements.popitem(last=False)
            self.counts["sql_statements_evicted"] += 1
        statements[name] = text

    def complete(self, conn, query, error_code, end_ns: int, out: list) -> None:
        if query is None:
            return
        if error_code is not None:
            query.error_code = error_code
        query.end_ns = end_ns
        if query.text is not None:
            self.describe(query)
        out.append((ITEM_TAG, conn, query, query))

    def describe(self, query: SqlQuery) -> None:
        """The sanitised text and summary; a scanner failure is counted and
        leaves the text fully masked, never raw."""
        try:
            query.sanitized = sanitize(query.text, self.DIALECT)
            query.summary, query.operation, query.collection = query_info(query.sanitized)
        except Exception:
            self.parse_error("sanitize_failed")
            query.sanitized = "?"
            query.summary = query.operation = query.collection = None
