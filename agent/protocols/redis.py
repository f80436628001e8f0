"""Redis connections (RESP2 and RESP3): commands paired with their replies
(agent/protocols/cache_base.py has the framing and the work items).

- Pipelining: many commands in one write, many replies in one read; each
  reply pairs with the oldest command waiting.
- MULTI/EXEC: every command is one span.  A command queued inside MULTI
  is answered "+QUEUED"; it completes with its own reply out of EXEC's
  array, at EXEC's end.  DISCARD, or an EXEC that WATCH aborted (a null
  array), ends the queued commands without a span (redis_queued_not_run).
- Pub/sub: (P|S)SUBSCRIBE gets one confirmation per channel; its span ends
  with the last.  Messages pushed to a subscribed connection (RESP2
  arrays "message"/"pmessage"/"smessage", every RESP3 push frame that is
  not a confirmation) are no replies: counted (redis_pushes), no span.
- The connection handshake client libraries send (HELLO, AUTH, CLIENT
  SETINFO...: agent/parsers/redis.py HANDSHAKE_COMMANDS) is paired but
  gives no span: its errors (Redis 7.0 rejects redis-py 8's CLIENT
  SETINFO) would mark every new connection, and AUTH's argument is a
  password.  No argument is ever kept, AUTH's included.
- SELECT's database index, once the server accepted it, is db.namespace of
  the commands that follow (0 until then).
- CLIENT REPLY OFF/SKIP (which silence replies) is not followed: a
  connection that uses it loses its pairing until its commands expire.
"""
from __future__ import annotations

from agent.counters import counter, parse_errors
from agent.parsers import PARSED
from agent.parsers.redis import (HANDSHAKE_COMMANDS, PUSHED_MESSAGES, SUBSCRIBE_COMMANDS,
                                 UNSUBSCRIBE_COMMANDS, looks_like_redis_reply,
                                 looks_like_redis_request, parse_commands, parse_reply)
from agent.capture.records import C
from agent.protocols.cache_base import CACHE_PARSE_ERRORS, COUNTERS as CACHE_COUNTERS, \
    CacheHandler, CacheOp, ITEM_TAG

SYSTEM = "redis"

COUNTERS = CACHE_COUNTERS + (
    counter("redis_pushes", "redis_pushes",
            "Redis messages pushed to subscribed connections (pub/sub, RESP3 push frames): "
            "no span each."),
    counter("redis_queued_not_run", "redis_queued_not_run",
            "Redis commands queued in MULTI that never ran (DISCARD, or EXEC aborted by WATCH)."),
)

# Pending entry kinds (entry[1]).
_PLAIN, _HANDSHAKE, _SELECT, _QUEUED, _EXEC, _DISCARD, _SUBSCRIBE = range(7)
_CONFIRMATIONS = frozenset(("subscribe", "psubscribe", "ssubscribe", "unsubscribe",
                            "punsubscribe", "sunsubscribe"))
_TRANSACTION_CONTROL = frozenset(("MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"))


class RedisConn:
    """A connection's Redis state: the database selected, whether it is
    subscribed, the commands queued in an open MULTI (None: none open)."""

    __slots__ = ("db", "subscribed", "multi", "queued")

    def __init__(self):
        self.db = "0"
        self.subscribed = False
        self.multi = False
        # Commands answered QUEUED, waiting for EXEC's array.
        self.queued: list = []


class RedisHandler(CacheHandler):
    PROTOCOL = C["PROTOCOL_REDIS"]
    NAME = SYSTEM
    SYSTEM = SYSTEM
    COUNTERS = COUNTERS
    PARSE_ERRORS = parse_errors(
        NAME, "bad_array_length", "expected_bulk_string", "bad_bulk_length", "bad_bulk_end",
        "bad_command_name", "bad_inline", "bad_inline_quotes", "inline_too_long", "bad_integer",
        "bad_null", "bad_boolean", "bad_aggregate_length", "too_deep", "bad_type",
        *CACHE_PARSE_ERRORS)

    @staticmethod
    def is_request(payload: bytes):
        if looks_like_redis_request(payload):
            return True
        if looks_like_redis_reply(payload):
            return False
        return None

    @staticmethod
    def new_extra() -> RedisConn:
        return RedisConn()

    def after_gap(self, sc) -> None:
        """The commands queued in an open MULTI can no longer be paired."""
        rc = sc.extra
        self._not_run(rc)
        rc.multi = False

    # -- commands ---------------------------------------------------------
    def commands(self, conn, sc, data: bytes, partial: bool, tid: int, start_ns: int,
                 end_ns: int, out: list):
        status, commands, consumed, reason = parse_commands(data, partial)
        rc = sc.extra
        for c in commands:
            name = c.name
            if name in HANDSHAKE_COMMANDS:
                self.push(sc, [None, _HANDSHAKE])
                continue
            op = CacheOp(SYSTEM, name, c.query_text, rc.db, tid, start_ns)
            out.append((ITEM_TAG, conn, op, None))
            if rc.multi and name not in _TRANSACTION_CONTROL:
                kind = _QUEUED
            elif name == "SELECT":
                kind = _SELECT
                op.hits = c.db if c.db is not None else -1   # the index asked for
            elif name == "MULTI":
                rc.multi = True
                kind = _PLAIN
            elif name == "EXEC":
                rc.multi = False
                kind = _EXEC
            elif name == "DISCARD":
                rc.multi = False
                kind = _DISCARD
            elif name in SUBSCRIBE_COMMANDS or name in UNSUBSCRIBE_COMMANDS:
                kind = _SUBSCRIBE
                op.batch_size = c.arg_count if c.arg_count > 0 else -1
            else:
                kind = _PLAIN
            self.push(sc, [op, kind])
        return consumed, status, reason

    # -- replies ----------------------------------------------------------
    def replies(self, conn, sc, data: bytes, partial: bool, end_ns: int, out: list):
        rc = sc.extra
        pending = sc.pending
        pos, n = 0, len(data)
        while pos < n:
            exec_next = bool(pending) and pending[0][1] == _EXEC
            status, r, consumed, reason = parse_reply(data[pos:] if pos else data, partial,
                                                      exec_next)
            if status != PARSED:
                return pos, status, reason
            pos += consumed
            kind = r.pubsub_kind
            if r.push or (rc.subscribed and kind in PUSHED_MESSAGES):
                if not (kind in _CONFIRMATIONS and pending and pending[0][1] == _SUBSCRIBE):
                    self.counts["redis_pushes"] += 1
                    continue
            if not pending:
                self.counts["cache_responses_without_request"] += 1
                continue
            entry = pending[0]
            op, what = entry
            if what == _SUBSCRIBE:
                if r.subscriptions is not None:
                    rc.subscribed = r.subscriptions > 0
                if op is not None and op.batch_size > 0:
                    op.batch_size -= 1
                    if op.batch_size:
                        continue
                elif r.subscriptions:      # an UNSUBSCRIBE of all: until none is left
                    continue
                pending.popleft()
                if op is not None:
                    op.batch_size = 0
                    op.error_type = r.error
                self.complete(conn, op, end_ns, out)
                continue
            pending.popleft()
            if op is None:
                continue
            op.error_type = r.error
            if what == _QUEUED and r.queued:
                rc.queued.append(op)     # completes with EXEC
                continue
            if what == _SELECT:
                if r.error is None and op.hits >= 0:
                    rc.db = str(op.hits)
                op.hits = -1
            elif what == _EXEC:
                self._exec_done(conn, rc, r, end_ns, out)
            elif what == _DISCARD:
                self._not_run(rc)
            self.complete(conn, op, end_ns, out)
        return pos, PARSED, ""

    def _exec_done(self, conn, rc: RedisConn, r, end_ns: int, out: list) -> None:
        queued, rc.queued = rc.queued, []
        if r.error is not None or r.null or r.elements is None:
            self.counts["redis_queued_not_run"] += len(queued)
            return
        for op, reply in zip(queued, r.elements):
            op.error_type = reply.error
            self.complete(conn, op, end_ns, out)
        # Replies the capture did not hold: the commands ran, their outcome is unknown.
        for op in queued[len(r.elements):]:
            self.complete(conn, op, end_ns, out)

    def _not_run(self, rc: RedisConn) -> None:
        self.counts["redis_queued_not_run"] += len(rc.queued)
        rc.queued = []
