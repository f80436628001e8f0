"""memcached connections (text and meta protocols): commands paired with
their replies (agent/protocols/cache_base.py has the framing and the work
items).  The binary protocol (deprecated since memcached 1.6) is not read:
its bytes are a parse error ("binary_protocol") and never classified as
memcached by the kernel.

- A retrieval (get/gets/gat/gats) of several keys is one span; its batch
  size is the keys it named, its hits the values returned.  mg: a hit is
  VA or HD, a miss EN.
- A text command with noreply gets no reply: its span ends with the write
  that sent it.  So does quit.
- Meta commands with the q flag answer only an unusual outcome; the mn
  that follows them ("MN") says the rest succeeded (mg: missed).  A reply
  with an O (opaque) token pairs with the quiet command that sent it.
- ERROR, CLIENT_ERROR and SERVER_ERROR replies set error.type to that word;
  their message is not kept.  No key or value is kept.
"""
from __future__ import annotations

from agent.capture.records import C
from agent.counters import parse_errors
from agent.parsers import PARSED
from agent.parsers.memcached import (looks_like_memcached_reply, looks_like_memcached_request,
                                     parse_reply, parse_request)
from agent.protocols.cache_base import CACHE_PARSE_ERRORS, ITEM_TAG, CacheHandler, CacheOp

SYSTEM = "memcached"

_RETRIEVALS = frozenset(("get", "gets", "gat", "gats"))
_NO_REPLY = frozenset(("quit",))
# Pending entry kinds (entry[1]).
_PLAIN, _QUIET, _NOOP = range(3)


def _frames(parse, data: bytes, partial: bool) -> tuple[list, int, int, str]:
    """The messages parse frames from data in turn, where they end (which
    may be past the captured bytes), and the status and reason where
    framing stopped (PARSED when the bytes ran out)."""
    found, pos, n = [], 0, len(data)
    while pos < n:
        status, message, consumed, reason = parse(data[pos:] if pos else data, partial)
        if status != PARSED:
            return found, pos, status, reason
        found.append(message)
        pos += consumed
    return found, pos, PARSED, ""


class MemcachedHandler(CacheHandler):
    PROTOCOL = C["PROTOCOL_MEMCACHED"]
    NAME = SYSTEM
    SYSTEM = SYSTEM
    PARSE_ERRORS = parse_errors(
        NAME, "binary_protocol", "line_too_long", "bad_command", "bad_data_block",
        "bad_block_line", "bad_value_line", "bad_reply", "unknown_reply", *CACHE_PARSE_ERRORS)

    @staticmethod
    def is_request(payload: bytes):
        if looks_like_memcached_request(payload):
            return True
        if looks_like_memcached_reply(payload):
            return False
        return None

    @staticmethod
    def new_extra():
        return None

    def commands(self, conn, sc, data: bytes, partial: bool, tid: int, start_ns: int,
                 end_ns: int, out: list):
        found, pos, status, reason = _frames(parse_request, data, partial)
        for c in found:
            if c.name == "mn":
                self.push(sc, [None, _NOOP])
                continue
            op = CacheOp(SYSTEM, c.name, None, None, tid, start_ns)
            op.batch_size = c.key_count
            if c.name in _RETRIEVALS or c.name == "mg":
                op.hits = 0
            out.append((ITEM_TAG, conn, op, None))
            if c.name in _NO_REPLY or (c.noreply and not c.meta):
                self.complete(conn, op, end_ns, out)
            elif c.noreply:
                self.push(sc, [op, _QUIET, c.opaque])
            else:
                self.push(sc, [op, _PLAIN, c.opaque])
        return pos, status, reason

    def replies(self, conn, sc, data: bytes, partial: bool, end_ns: int, out: list):
        found, pos, status, reason = _frames(parse_reply, data, partial)
        for r in found:
            entry = self._entry_for(conn, sc, r, end_ns, out)
            if entry is None:
                self.counts["cache_responses_without_request"] += 1
                continue
            op = entry[0]
            if op is None:
                continue
            op.error_type = r.error
            if op.hits >= 0:
                op.hits = r.hits if op.operation != "mg" else int(r.kind in ("VA", "HD"))
            self.complete(conn, op, end_ns, out)
        return pos, status, reason

    def _entry_for(self, conn, sc, r, end_ns: int, out: list):
        """The pending entry r answers, removed from the line; quiet
        commands it passes over succeeded silently and complete."""
        pending = sc.pending
        if not pending:
            return None
        if pending[0][1] != _QUIET:
            return pending.popleft()
        if r.kind == "MN":
            while pending and pending[0][1] == _QUIET:
                self.complete(conn, pending.popleft()[0], end_ns, out)
            return pending.popleft() if pending else None
        if r.opaque is not None:
            for i, entry in enumerate(pending):
                if entry[1] != _QUIET:
                    break
                if entry[2] == r.opaque:
                    for _ in range(i):
                        self.complete(conn, pending.popleft()[0], end_ns, out)
                    return pending.popleft()
        return pending.popleft()
