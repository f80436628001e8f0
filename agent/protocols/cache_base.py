"""Redis and memcached connections: what both handlers share
(agent/protocols/redis.py, agent/protocols/memcached.py).

Per connection: each direction's framing (the client's commands, the
server's replies) and the commands waiting for their reply, oldest first.
Both protocols answer in command order, so a reply pairs with the oldest
command that expects one.  Work items (agent/protocols/contract.py), tag
ITEM_TAG:

  (ITEM_TAG, conn, op, None)   a command was sent (client) or read (server)
  (ITEM_TAG, conn, op, op)     its reply completed it: the same CacheOp

Times are the kernel's: a client command starts at the entry of the write
that carried it, a server's at the exit of the read; a command ends with
the syscall that carried the end of its reply.

Framing.  An event holds the first `captured` bytes of what its syscall
moved.  A value longer than that (a large bulk reply, a memcached data
block) is skipped by its declared size: the parsers' partial mode gives
the size from the header alone.  When a message boundary falls into bytes
that were not captured (more replies pipelined behind a large one), that
direction's framing is lost: the commands waiting are dropped (counted)
and the direction waits for an event that starts a message after the
client has spoken again (a client that does not pipeline has read every
reply by then).

Everything kept is bounded (commands waiting: Limits.max_pending; bytes
kept between events: BUFFER_LIMIT) and every drop is counted (COUNTERS).
No key, value, argument or error message is kept: commands keep their name
and counts, errors their prefix.
"""
from __future__ import annotations

from collections import deque

from agent.capture.records import C, EVENT_HEADER_SIZE
from agent.counters import counter
from agent.parsers import INVALID as _INVALID, NEED_MORE as _NEED_MORE
from agent.protocols.contract import ProtocolHandler, expire_waiting
from agent.protocols.sql_base import split_event

ITEM_TAG = "cache"

COUNTERS = (
    counter("cache_requests_without_response", "cache_commands_without_reply",
            "Redis/memcached commands dropped unanswered (connection closed, expired or "
            "evicted, too many waiting, timeout, lost records or framing)."),
    counter("cache_responses_without_request", "cache_replies_without_command",
            "Redis/memcached replies with no command waiting for them."),
    counter("cache_framing_lost", "cache_framing_lost",
            "Redis/memcached message boundaries lost (uncaptured or bad bytes)."),
    counter("cache_tail_recoveries", "cache_tail_recoveries",
            "Redis/memcached replies framed from an event's captured tail, behind a value "
            "longer than the capture size (FLAG_TAIL)."),
    counter("cache_events_without_direction", "cache_events_without_direction",
            "Redis/memcached events seen before the requesting side was known, skipped."),
    counter("cache_events_skipped_resync", "cache_events_skipped_resync",
            "Redis/memcached events skipped while waiting for a message start."),
)

# Parse errors both handlers count (agent/counters.py).
CACHE_PARSE_ERRORS = ("internal", "message_too_long")

_INGRESS = C["DIRECTION_INGRESS"]
_EGRESS = C["DIRECTION_EGRESS"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]
_FLAG_TLS = C.get("FLAG_TLS", 0)

# An incomplete message up to this size waits for the next event's bytes.
BUFFER_LIMIT = 16384

# A direction's state.
FRAMING = 0   # at a known message boundary
RESYNC = 1    # lost: wait for an event that starts a message


class CacheOp:
    """One command: what the span stage needs.  operation: the command
    ("GET", "CONFIG GET", "get", "mg"); query_text: Redis's command with
    "?" for each argument, else None; namespace: the Redis database index;
    error_type: the error prefix or word, None on success; batch_size:
    keys of a multi-key retrieval (memcached), else 0; hits: keys found
    by a memcached retrieval, else -1."""

    __slots__ = ("system", "operation", "query_text", "namespace", "tid", "start_ns", "end_ns",
                 "error_type", "batch_size", "hits", "traceparent", "tracestate", "context")

    def __init__(self, system: str, operation: str, query_text, namespace, tid: int,
                 start_ns: int):
        self.system = system
        self.operation = operation
        self.query_text = query_text
        self.namespace = namespace
        self.tid = tid
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.error_type = None
        self.batch_size = 0
        self.hits = -1
        # Neither protocol carries trace context: the linker's serving
        # thread makes a client command a child (agent/spans/cache.py).
        self.traceparent = self.tracestate = None
        self.context = None

    def __repr__(self) -> str:
        return f"CacheOp({self.system} {self.operation}, error={self.error_type})"


class CacheStream:
    """One direction: buf holds the start of a message the next event
    completes, skip the bytes of a message still to come."""

    __slots__ = ("state", "buf", "skip")

    def __init__(self):
        self.state = FRAMING
        self.buf = b""
        self.skip = 0

    def reset(self, state: int) -> None:
        self.state = state
        self.buf = b""
        self.skip = 0


class CacheState:
    __slots__ = ("client_direction", "ts_at_entry", "client", "server", "pending", "tls",
                 "client_spoke", "extra")

    def __init__(self, client_direction: int):
        self.client_direction = client_direction
        self.ts_at_entry = client_direction == _EGRESS
        self.client = CacheStream()
        self.server = CacheStream()
        # Entries: [op or None (a command that gives no span), protocol data].
        self.pending: deque[list] = deque()
        self.tls = False
        # The client wrote since the server's framing was lost.
        self.client_spoke = False
        self.extra = None      # the protocol's own state


class CacheHandler(ProtocolHandler):
    """The contract's side both cache protocols share.  A subclass sets
    SYSTEM and implements is_request(payload) (True, False, or None when
    the bytes do not tell), new_extra(), commands(conn, sc, data, partial,
    tid, start_ns, end_ns, out) and replies(conn, sc, data, partial,
    end_ns, out), both returning (consumed, status, reason) with the
    parsers' statuses."""

    COUNTERS = COUNTERS
    SYSTEM = ""

    def open(self, conn, record, hot: tuple) -> bool:
        direction, role = hot[9], hot[10]
        if role == _ROLE_SERVER:
            client_direction = _INGRESS
        elif role == _ROLE_CLIENT:
            client_direction = _EGRESS
        else:
            payload = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + hot[8]])
            request = self.is_request(payload)
            if request is None:
                self.counts["cache_events_without_direction"] += 1
                return False
            client_direction = direction if request else (
                _INGRESS if direction == _EGRESS else _EGRESS)
        conn.role = _ROLE_CLIENT if client_direction == _EGRESS else _ROLE_SERVER
        sc = conn.state = CacheState(client_direction)
        sc.extra = self.new_extra()
        return True

    def record(self, conn, record, hot: tuple, out: list) -> None:
        (_, _, tid, _, _, start_ns, end_ns, length, captured, direction, _, _, flags, _,
         _) = hot
        sc = conn.state
        if flags & _FLAG_TLS:
            sc.tls = True
        elif sc.tls:
            return      # the socket's ciphertext of a connection read through TLS probes
        payload = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + captured])
        payload, gap, tail = split_event(payload, length, flags)
        try:
            if direction == sc.client_direction:
                sc.client_spoke = True
                ts = start_ns if sc.ts_at_entry else end_ns
                self._walk(conn, sc, sc.client, payload, gap, True, tid, ts, end_ns, out, tail)
            else:
                if sc.server.state == RESYNC and not sc.client_spoke:
                    self.counts["cache_events_skipped_resync"] += 1
                    return
                self._walk(conn, sc, sc.server, payload, gap, False, tid, 0, end_ns, out, tail)
        except Exception:  # pragma: no cover - defensive: bytes must never stop the agent
            self.parse_error("internal")
            self.gap(conn)

    def _walk(self, conn, sc: CacheState, stream: CacheStream, payload: bytes, gap: int,
              client: bool, tid: int, start_ns: int, end_ns: int, out: list,
              tail: bytes = b"") -> None:
        """Frame one event's bytes: payload (captured) then gap uncaptured,
        then the event's captured last bytes (tail, FLAG_TAIL)."""
        n = len(payload)
        if stream.skip:
            if stream.skip > n:
                beyond = stream.skip - n
                stream.skip = 0
                self._past_head(conn, sc, stream, beyond, gap, tail, client, tid, start_ns,
                                end_ns, out)
                return
            payload = payload[stream.skip:]
            n = len(payload)
            stream.skip = 0
            if not n:
                if gap:
                    self.lost(conn, stream, client)
                return
        if stream.state == RESYNC:
            stream.state = FRAMING
            resync = True
        else:
            resync = False
        if stream.buf:
            payload = stream.buf + payload
            stream.buf = b""
            n = len(payload)
        if not n:
            return
        if client:
            consumed, status, reason = self.commands(conn, sc, payload, gap > 0, tid, start_ns,
                                                     end_ns, out)
        else:
            consumed, status, reason = self.replies(conn, sc, payload, gap > 0, end_ns, out)
        if status == _INVALID:
            if resync:
                self.counts["cache_events_skipped_resync"] += 1
                stream.state = RESYNC
                return
            self.parse_error(reason)
            self.lost(conn, stream, client)
            return
        if status == _NEED_MORE:
            rest = payload[consumed:]
            if gap:
                self.lost(conn, stream, client)
            elif len(rest) > BUFFER_LIMIT:
                self.parse_error("message_too_long")
                self.lost(conn, stream, client)
            else:
                stream.buf = rest
            return
        # PARSED: consumed may run past the captured bytes.
        if consumed > n:
            self._past_head(conn, sc, stream, consumed - n, gap, tail, client, tid, start_ns,
                            end_ns, out)
        elif gap:
            self.lost(conn, stream, client)

    def _past_head(self, conn, sc: CacheState, stream: CacheStream, beyond: int, gap: int,
                   tail: bytes, client: bool, tid: int, start_ns: int, end_ns: int,
                   out: list) -> None:
        """A message (a large value) ends `beyond` bytes past the captured
        head: in the uncaptured bytes (its followers are lost), in the tail
        (the messages pipelined behind it are framed from there), or in a
        later event (skipped there)."""
        t = len(tail)
        if beyond > gap + t:
            stream.skip = beyond - gap - t
        elif beyond < gap or (beyond == gap and not t):
            if beyond < gap:
                self.lost(conn, stream, client)
        elif beyond < gap + t:
            self.counts["cache_tail_recoveries"] += 1
            self._walk(conn, sc, stream, tail[beyond - gap:], 0, client, tid, start_ns, end_ns,
                       out)

    def lost(self, conn, stream: CacheStream, client: bool) -> None:
        """A message boundary fell into uncaptured or bad bytes."""
        self.counts["cache_framing_lost"] += 1
        stream.reset(RESYNC)
        sc = conn.state
        if not client:
            self.drop_pending(sc)
            sc.client_spoke = False

    def drop_pending(self, sc: CacheState) -> None:
        self.counts["cache_requests_without_response"] += sum(
            1 for entry in sc.pending if entry[0] is not None)
        sc.pending.clear()

    def push(self, sc: CacheState, entry: list) -> None:
        pending = sc.pending
        if len(pending) >= self.limits.max_pending:
            old = pending.popleft()
            if old[0] is not None:
                self.counts["cache_requests_without_response"] += 1
        pending.append(entry)

    def gap(self, conn) -> None:
        sc = conn.state
        self.drop_pending(sc)
        sc.client.reset(RESYNC)
        sc.server.reset(RESYNC)
        sc.client_spoke = False
        self.after_gap(sc)

    def after_gap(self, sc: CacheState) -> None:
        """The protocol's own state after lost records."""

    def discard(self, conn) -> None:
        self.drop_pending(conn.state)

    def expire_requests(self, conn, now_ns: int) -> None:
        """Commands waiting longer than the request timeout stay in line as
        placeholders, so that later replies keep their pairing."""
        self.counts["cache_requests_without_response"] += expire_waiting(
            conn.state.pending, 0, self.limits.request_timeout_ns, now_ns)

    @staticmethod
    def complete(conn, op: CacheOp | None, end_ns: int, out: list) -> None:
        if op is not None:
            op.end_ns = end_ns
            out.append((ITEM_TAG, conn, op, op))

