"""PostgreSQL connections (PROTOCOL_POSTGRES): the frontend/backend
protocol v3 over the shared SQL handler (agent/protocols/sql_base.py).

The client side frames startup packets (SSLRequest, GSSENCRequest,
CancelRequest, StartupMessage), then simple queries and the extended
protocol (Parse/Bind/Describe/Execute/Sync, statements and portals by
name); the server side completes them: an Execute at its CommandComplete,
EmptyQueryResponse, PortalSuspended or ErrorResponse, a simple query at
ReadyForQuery.

A Sync unit without an Execute (a client that prepares first, as asyncpg
does with Parse/Describe/Sync) is an operation only when it fails: its
first Parse, Bind or Describe waits as a prepare, which an ErrorResponse
completes as an error span named from the statement's text, and which its
ReadyForQuery drops without a span (PREPARE_DONE: the same-node link the
client end made for it is let go).
"""
from __future__ import annotations

from agent.capture.records import C
from agent.counters import parse_errors
from agent.parsers import INVALID, PARSED
from agent.parsers.postgres import (BACKEND_TYPES, FRONTEND_TYPES, looks_like_postgres_backend,
                                    looks_like_postgres_frontend, looks_like_postgres_startup,
                                    parse_backend, parse_frontend, parse_header, parse_startup,
                                    skip_data_rows, SpecialRequest, StartupMessage)
from agent.protocols.sql_base import (BUFFER_LIMIT, FRAMING, INIT, INVALID_BYTES, ITEM_TAG, LOST,
                                      OK, PREPARE_DONE, RESYNC, SQL_PARSE_ERRORS, TAIL_BYTES,
                                      SqlHandler, SqlState, walk_event)

_STARTUP = 16   # client stream state: startup packets (no type byte) come next
_UNKNOWN_CODE = "unknown"   # an error whose code was not captured

# PostgreSQL message type bytes.
_Q, _P, _B, _E, _C, _S, _F, _Z, _I, _s, _D = b"QPBECSFZIsD"
_DESCRIBE = _D     # frontend 'D'; backend 'D' is a DataRow
_FRONT_KEEP = frozenset((_Q, _P, _B, _E, _C, _S, _F, _DESCRIBE))
_FRONT_DECODE = frozenset((_Q, _P, _B, _E, _C, _DESCRIBE))
_BACK_KEEP = frozenset((_C, _E, _Z, _I, _s))
_BACK_DECODE = frozenset((_E,))
_REQUEST_STARTS = frozenset(b"QPB")

# Entries waiting for the backend: [kind, query or None].
_EXECUTE = 0   # completes at CommandComplete/EmptyQuery/PortalSuspended/ErrorResponse
_SIMPLE = 1    # 'Q': completes at ReadyForQuery; the first error is its error
_SYNC = 2      # ends an extended-protocol unit at ReadyForQuery
_CALL = 3      # FunctionCall: ends at ReadyForQuery, no query
_PREPARE = 4   # a unit's Parse/Bind/Describe with no Execute: a span only if it fails
_PREPARE_STARTS = frozenset((_P, _B, _DESCRIBE))
_UNIT_ENDS = frozenset((_S, _Q))


class PgState(SqlState):
    """portals: name -> statement text; ssl_wait: an SSLRequest or
    GSSENCRequest was sent, and one byte of the server answers it;
    prepare: the waiting _PREPARE entry of the Sync unit the client is
    sending, if any."""

    __slots__ = ("portals", "ssl_wait", "prepare")

    def __init__(self, client_direction: int):
        super().__init__("postgresql", client_direction)
        self.portals: dict = {}
        self.ssl_wait = False
        self.prepare = None


# What _pg_frame follows per side: (frontend, kept types, decoded types, parser).
_FRONT_SPEC = (True, _FRONT_KEEP, _FRONT_DECODE, parse_frontend)
_BACK_SPEC = (False, _BACK_KEEP, _BACK_DECODE, parse_backend)


def _pg_frame(seg: bytes, pos: int, gap_after: int, messages: list, spec):
    """PostgreSQL messages of one segment, for walk_event: (type byte,
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
                return 0, (LOST, 0, b"", "")
            if kind not in (FRONTEND_TYPES if frontend else BACKEND_TYPES):
                return 0, (INVALID_BYTES, 0, b"", "bad_type")
            return 0, (OK, 0, seg[pos:], "")
        status, _, total, reason = parse_header(seg[pos:pos + 5], frontend)
        if status != PARSED:
            return 0, (INVALID_BYTES, 0, b"", reason)
        end = pos + total
        if kind in keep:
            m = None
            if kind in decode:
                if end <= n:
                    status, m, _, reason = parse(seg[pos:end])
                elif not gap_after and total <= BUFFER_LIMIT:
                    return 0, (OK, 0, seg[pos:], "")
                else:
                    status, m, _, reason = parse(seg[pos:], True)
                if status != PARSED:
                    return 0, (INVALID_BYTES, 0, b"", reason)
            messages.append((kind, m))
        if end > n:
            return end - n, None
        pos = end
    return 0, None


def _pg_walk(data: bytes, gap: int, tail: bytes, skip: int, frontend: bool):
    """Frame PostgreSQL messages over one event (see walk_event).  Returns
    (messages, status, skip, rest, reason): messages are (type byte,
    decoded message or None) for the types the handler follows."""
    messages = []
    status, skip, rest, reason = walk_event(data, gap, tail, skip, _pg_frame, messages,
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


class _PostgresResponses(SqlHandler):
    """The backend's side: responses complete the queries waiting."""

    def server(self, conn, sc, data: bytes, gap: int, tail: bytes, end_ns: int,
               out: list) -> None:
        st = sc.server
        if sc.ssl_wait and data:
            sc.ssl_wait = False
            answer = data[0]
            if answer == 0x53 or answer == 0x47:       # 'S' / 'G': encryption follows
                self.counts["sql_tls_connections"] += 1
                sc.ignored = sc.tls = True
                return
            if answer == 0x4E:                          # 'N': in clear
                data = data[1:]
                st.reset(FRAMING)
                if not data and not gap:
                    return
        data = st.join(data)
        resync = st.state != FRAMING
        if resync:
            if st.state == INIT and len(data) < 5 and not gap:
                st.buf = data
                return
            if not looks_like_postgres_backend(data):
                self._pg_resync_at_end(conn, sc, data, gap, tail, end_ns, out)
                return
            st.skip = 0
        messages, status, skip, rest, reason = _pg_walk(data, gap, tail, st.skip, False)
        if resync:
            if status == INVALID_BYTES:
                self._pg_resync_at_end(conn, sc, data, gap, tail, end_ns, out)
                return
            st.state = FRAMING
            sc.server_lost = False
        st.skip, st.buf = skip, rest
        if messages:
            self._pg_responses(conn, sc, messages, end_ns, out)
        if status == OK:
            return
        if status == INVALID_BYTES:
            self.parse_error(reason)
        elif tail:
            results = _pg_tail_end(tail)
            if results is not None:
                self.counts["sql_tail_recoveries"] += 1
                self._pg_unit_done(conn, sc, results, end_ns, out)
                st.reset(FRAMING)
                return
        self.counts["sql_framing_lost"] += 1
        st.reset(RESYNC)
        sc.server_lost = True

    def _pg_resync_at_end(self, conn, sc, data: bytes, gap: int, tail: bytes,
                          end_ns: int, out: list) -> None:
        """An event that does not start at a message boundary, while the
        server's framing is unknown: if it ends with ReadyForQuery (in its
        tail, or in its bytes when all were captured), the oldest unit is
        over and framing resumes after it."""
        last = tail if tail else data[-TAIL_BYTES:] if not gap else b""
        results = _pg_tail_end(last) if last else None
        if results is None:
            self.counts["sql_events_skipped_resync"] += 1
            return
        if sc.server_lost and sc.pending:
            self.counts["sql_tail_recoveries"] += 1
            self._pg_unit_done(conn, sc, results, end_ns, out)
        sc.server_lost = False
        sc.server.reset(FRAMING)

    def _pg_responses(self, conn, sc, messages: list, end_ns: int,
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
                    if entry[0] == _PREPARE:
                        self._prepared(conn, sc, entry, out)
                        continue
                    if entry[0] == _SIMPLE:
                        self.complete(conn, entry[1], None, end_ns, out)
                    break
            elif kind == _E:
                if not pending:
                    continue
                entry = pending[0]
                code = m.code or _UNKNOWN_CODE
                if entry[0] == _SIMPLE:
                    if entry[1] is not None and entry[1].error_code is None:
                        entry[1].error_code = code
                elif entry[0] == _EXECUTE or entry[0] == _PREPARE:
                    # The error fails the unit's oldest Execute (a failed
                    # Parse or Bind fails the statement too), or the prepare
                    # of a unit without one; the server skips the rest of
                    # the unit up to its Sync.
                    pending.popleft()
                    if entry is sc.prepare:
                        sc.prepare = None
                    self.complete(conn, entry[1], code, end_ns, out)
                    while pending and (pending[0][0] == _EXECUTE or pending[0][0] == _PREPARE):
                        entry = pending.popleft()
                        if entry[0] == _PREPARE:
                            self._prepared(conn, sc, entry, out)
                        elif entry[1] is not None:
                            counts["sql_executes_skipped"] += 1
            elif pending and pending[0][0] == _EXECUTE:     # C, I, s
                self.complete(conn, pending.popleft()[1], None, end_ns, out)
            elif not pending or pending[0][0] == _SYNC:
                counts["sql_responses_without_request"] += 1

    def _prepared(self, conn, sc, entry: list, out: list) -> None:
        """A prepare ended without an error: no span (the linker lets go
        of what it keeps for it)."""
        if entry is sc.prepare:
            sc.prepare = None
        if entry[1] is not None:
            out.append((ITEM_TAG, conn, entry[1], PREPARE_DONE))

    def _pg_unit_done(self, conn, sc, results: list, end_ns: int,
                      out: list) -> int:
        """The oldest unit ended with these results (the last ones before
        its ReadyForQuery, from an event's tail): they belong to its last
        Executes; the Executes before them completed unseen.  In a unit
        without Executes an error is its prepare's."""
        pending = sc.pending
        executes = []
        prepares = []
        last = None
        while pending:
            entry = pending.popleft()
            if entry[0] == _PREPARE:
                prepares.append(entry)
                continue
            if entry[0] != _EXECUTE:
                last = entry
                break
            executes.append(entry[1])
        codes = [(m.code or _UNKNOWN_CODE) if kind == _E else None for kind, m in results]
        done = 0
        failed = next((c for c in codes if c is not None), None) if not executes else None
        for entry in prepares:
            if failed is not None and entry[1] is not None:
                if entry is sc.prepare:
                    sc.prepare = None
                self.complete(conn, entry[1], failed, end_ns, out)
                failed = None
                done += 1
            else:
                self._prepared(conn, sc, entry, out)
        if last is not None and last[0] == _SIMPLE and last[1] is not None:
            query = last[1]
            if query.error_code is None:
                query.error_code = next((c for c in codes if c is not None), None)
            self.complete(conn, query, None, end_ns, out)
            done += 1
        shift = len(executes) - len(codes)
        for i, query in enumerate(executes):
            if query is not None:
                self.complete(conn, query, codes[i - shift] if i >= shift else None, end_ns, out)
                done += 1
        return done

    def fallback(self, conn, sc, out: list) -> None:
        """The response whose framing was lost is over (the client sent its
        next request or closed): complete the oldest unit, ending with the
        last server event seen."""
        sc.server_lost = False
        self.counts["sql_fallback_completions"] += self._pg_unit_done(
            conn, sc, [], sc.last_server_end_ns, out)


class PostgresHandler(_PostgresResponses):
    PROTOCOL = C["PROTOCOL_POSTGRES"]
    NAME = "postgresql"
    # agent/parsers/postgres.py's reasons, and the shared handler's.
    PARSE_ERRORS = parse_errors(
        NAME, "bad_type", "bad_length", "bad_protocol", "bad_startup", "bad_query", "bad_parse",
        "bad_bind", "bad_execute", "bad_describe", "bad_command_complete", "bad_ready_for_query",
        "bad_error_response", "bad_parameter_status", "bad_authentication", *SQL_PARSE_ERRORS)
    DIALECT = "postgresql"

    def new_state(self, client_direction: int) -> PgState:
        return PgState(client_direction)

    def client_direction(self, payload: bytes, direction: int):
        """The direction requests travel, from bytes only a client sends
        first; None when the bytes do not tell."""
        if looks_like_postgres_startup(payload) or (
                payload[:1] and payload[0] in _REQUEST_STARTS
                and looks_like_postgres_frontend(payload)):
            return direction
        return None

    def reset_phase(self, sc: PgState) -> None:
        sc.ssl_wait = False
        sc.prepare = None

    def client(self, conn, sc, data: bytes, gap: int, tail: bytes, tid: int, ts: int,
               out: list) -> None:
        st = sc.client
        data = st.join(data)
        if st.state == INIT:
            if len(data) < 8 and not gap:
                st.buf = data             # too little to tell yet
                return
            if looks_like_postgres_startup(data):
                st.state = _STARTUP
                if sc.server.state == INIT:
                    sc.server.state = FRAMING
            else:
                st.state = RESYNC
        if st.state == _STARTUP:
            data = self._pg_startup(conn, sc, data, gap)
            if data is None:
                return
        resync = st.state == RESYNC
        if resync:
            if not looks_like_postgres_frontend(data):
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.skip = 0
        messages, status, skip, rest, reason = _pg_walk(data, gap, tail, st.skip, True)
        if resync:
            if status == INVALID_BYTES:
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.state = FRAMING
        st.skip, st.buf = skip, rest
        if messages:
            self._pg_requests(conn, sc, messages, tid, ts, out)
        if status == OK:
            return
        if status == INVALID_BYTES:
            self.parse_error(reason)
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
                st.reset(FRAMING)
                if chain:
                    self._pg_requests(conn, sc, chain, tid, ts, out)
                return
        self.counts["sql_framing_lost"] += 1
        st.reset(RESYNC)

    def _pg_startup(self, conn, sc, data: bytes, gap: int):
        """Startup packets: the bytes after the StartupMessage, or None when
        the event is used up."""
        st = sc.client
        while data:
            status, m, consumed, reason = parse_startup(data)
            if status == PARSED:
                data = data[consumed:]
                if type(m) is StartupMessage:
                    sc.namespace = m.database or m.user
                    st.state = FRAMING
                    return data
                if type(m) is SpecialRequest:
                    if m.kind == "cancel":
                        sc.ignored = True     # a CancelRequest connection: nothing follows
                        return None
                    sc.ssl_wait = True
                continue
            if status == INVALID:
                if looks_like_postgres_frontend(data):
                    st.state = FRAMING       # no startup after all: joined late
                    return data
                self.parse_error(reason)
            elif not gap and consumed <= BUFFER_LIMIT:
                st.buf = data
                return None
            self.counts["sql_framing_lost"] += 1
            st.reset(RESYNC)
            return None
        return None

    def _pg_requests(self, conn, sc, messages: list, tid: int, ts: int,
                     out: list) -> None:
        if sc.server_lost and sc.pending:
            self.fallback(conn, sc, out)
        limit = 2 * self.limits.max_pending
        for i, (kind, m) in enumerate(messages):
            if kind in _PREPARE_STARTS and sc.prepare is None:
                self._prepare(conn, sc, messages, i, tid, ts, limit, out)
            if kind == _E:
                text = sc.portals.get(m.portal) if m.portal is not None else None
                if text is None:
                    self.counts["sql_unknown_statements"] += 1
                if sc.prepare is not None:
                    self._prepare_superseded(conn, sc, out)
                query = self.query(sc, text, tid, ts)
                self.push(sc, [_EXECUTE, query], limit)
                out.append((ITEM_TAG, conn, query, None))
            elif kind == _S:
                sc.prepare = None
                self.push(sc, [_SYNC, None], limit)
            elif kind == _DESCRIBE:
                pass
            elif kind == _B:
                if m.portal is not None:
                    portals = sc.portals
                    if m.portal not in portals and len(portals) >= self.limits.max_statements:
                        del portals[next(iter(portals))]
                        self.counts["sql_statements_evicted"] += 1
                    text = sc.statements.get(m.statement) if m.statement is not None else None
                    if text is not None and m.statement:
                        sc.statements.move_to_end(m.statement)
                    portals[m.portal] = text
            elif kind == _P:
                if m.statement is not None and m.query is not None:
                    self.define(sc, m.statement, m.query)
            elif kind == _Q:
                sc.prepare = None
                query = self.query(sc, m.text, tid, ts)
                self.push(sc, [_SIMPLE, query], limit)
                out.append((ITEM_TAG, conn, query, None))
            elif kind == _C:
                if m.kind == "S":
                    sc.statements.pop(m.name, None)
                elif m.kind == "P":
                    sc.portals.pop(m.name, None)
            else:   # FunctionCall
                self.push(sc, [_CALL, None], limit)

    def _prepare(self, conn, sc, messages: list, i: int, tid: int, ts: int, limit: int,
                 out: list) -> None:
        """messages[i], a Parse, Bind or Describe, opens the prepare of a
        Sync unit, unless an Execute follows in the unit (it carries the
        unit's error then)."""
        for kind, _ in messages[i + 1:]:
            if kind == _E:
                return
            if kind in _UNIT_ENDS:
                break
        kind, m = messages[i]
        if kind == _P:
            text = m.query if m.statement is not None else None
        elif kind == _B:
            text = sc.statements.get(m.statement) if m.statement is not None else None
        elif m.kind == "S":
            text = sc.statements.get(m.name)
        else:
            text = sc.portals.get(m.name) if m.kind == "P" else None
        query = self.query(sc, text, tid, ts)
        sc.prepare = entry = [_PREPARE, query]
        self.push(sc, entry, limit)
        out.append((ITEM_TAG, conn, query, None))

    def _prepare_superseded(self, conn, sc, out: list) -> None:
        """An Execute in the unit whose prepare is waiting (its Parse came
        in an earlier event): the Execute carries the unit's outcome."""
        entry = sc.prepare
        try:
            sc.pending.remove(entry)
        except ValueError:
            sc.prepare = None       # already pushed out of the bounded queue
            return
        self._prepared(conn, sc, entry, out)

