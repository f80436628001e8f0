"""RESP2 and RESP3 values (Redis replies) from captured bytes.

    parse_reply(data, partial=False, elements=False) -> (status, RedisReply, consumed, reason)

Statuses, `partial`, .truncated and .framed as described in
agent/parsers/redis.py, which re-exports parse_reply and says what a
handler pairing replies with commands needs.  An error reply keeps its
prefix ("ERR", "WRONGTYPE"), never its message; no value is kept.
Nothing here raises for bad input.
"""
from __future__ import annotations

import re

from agent.parsers import INVALID, NEED_MORE, PARSED

# proto-max-bulk-len is 512 MiB by default; servers may raise it.
MAX_BULK_LENGTH = 1 << 32
MAX_ELEMENTS = (1 << 31) - 1
# Nesting of aggregate replies followed before giving up.
MAX_DEPTH = 32
# The longest header line of a length or count: sign, 19 digits, CRLF.
MAX_HEADER = 22

# First element of a pub/sub array: the pushed messages, then confirmations.
PUSHED_MESSAGES = frozenset(("message", "pmessage", "smessage"))
_PUBSUB_KINDS = {k.encode(): k for k in (
    "message", "pmessage", "smessage", "subscribe", "psubscribe", "ssubscribe",
    "unsubscribe", "punsubscribe", "sunsubscribe", "pong", "invalidate")}
_PUBSUB_KINDS.update({k.upper(): v for k, v in _PUBSUB_KINDS.items()})

_ERROR_CODE = re.compile(rb"[A-Z][A-Z0-9_]{0,31}(?= |\Z)")
_DIGITS = re.compile(rb"-?[0-9]{1,19}\Z")
HEADER_PREFIX = re.compile(rb"-?[0-9]*\r?\Z")

# Reply types (RESP3 adds everything after ':').
_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATE_TYPES = frozenset(b"*~>")
_PAIR_TYPES = frozenset(b"%|")
_STAR, _DOLLAR, _PUSH, _ATTRIBUTE, _BANG = b"*$>|!"
# _skip's fourth outcome (partial only): the bytes end before the value's end is known.
_UNFRAMED = 3


class RedisReply:
    """One reply value.  kind: its type byte as a character ("+", "$",
    "*", "%", ">"...); error: the error prefix ("ERR", "WRONGTYPE",
    "_OTHER" when the message starts with no code) or None; null; count:
    elements of an aggregate (pairs for maps), bulk size for blobs, else
    -1; queued: "+QUEUED"; push: a RESP3 push frame; pubsub_kind: the first
    element of an array or push ("message", "subscribe"...) when it is a
    pub/sub word, else None; subscriptions: the count a subscription
    confirmation reports; attributes: RESP3 attributes preceded the value;
    elements: with elements=True, the top-level aggregate's children (one
    RedisReply each), else None."""

    __slots__ = ("kind", "error", "null", "count", "queued", "push", "pubsub_kind",
                 "subscriptions", "attributes", "elements", "length", "truncated", "framed")

    def __repr__(self) -> str:
        extra = f" {self.error}" if self.error else ""
        return f"RedisReply({self.kind!r}{extra}, {self.length})"


def number(data: bytes, start: int, end: int):
    """The integer in data[start:end], or None."""
    text = data[start:end]
    if text.isdigit() and len(text) < 20:
        return int(text)
    if _DIGITS.match(text) is None:
        return None
    return int(text)


def header(data: bytes, pos: int, n: int):
    """(status, value, position after the CRLF) of the length/count line
    whose type byte is at pos; NEED_MORE gives a lower bound of the end."""
    crlf = data.find(b"\r\n", pos + 1, pos + MAX_HEADER)
    if crlf < 0:
        if n - pos >= MAX_HEADER or HEADER_PREFIX.match(data, pos + 1, n) is None:
            return INVALID, 0, 0
        return NEED_MORE, 0, n + 1
    value = number(data, pos + 1, crlf)
    if value is None:
        return INVALID, 0, 0
    return PARSED, value, crlf + 2


# ------------------------------------------------------------------ replies

def _reply(kind: int, length: int) -> RedisReply:
    r = RedisReply.__new__(RedisReply)
    r.kind = chr(kind)
    r.error = None
    r.null = False
    r.count = -1
    r.queued = r.push = r.attributes = False
    r.pubsub_kind = r.subscriptions = r.elements = None
    r.length = length
    r.truncated = False
    r.framed = True
    return r


def _error_prefix(text: bytes) -> str:
    m = _ERROR_CODE.match(text)
    return m.group().decode("ascii") if m else "_OTHER"


def _skip(data: bytes, pos: int, n: int, partial: bool):
    """Frame the value at pos: (status, end, reason) with status PARSED
    (end: where it ends, possibly past n when partial and the last value
    runs past the bytes), NEED_MORE (end: a lower bound), INVALID, or
    _UNFRAMED (partial: the bytes end before the end is known)."""
    remaining = 1            # values still to frame at the current level
    stack = []
    while True:
        if pos >= n:
            return (_UNFRAMED if partial else NEED_MORE), n + 1, ""
        t = data[pos]
        if t in _LINE_TYPES:
            crlf = data.find(b"\r\n", pos + 1)
            if crlf < 0:
                return (_UNFRAMED if partial else NEED_MORE), n + 1, ""
            if t == 0x3A or t == 0x28:   # ':' integer, '(' big number
                text = data[pos + 1:crlf]
                if not (text.isdigit() or text[:1] in b"-+" and text[1:].isdigit()):
                    return INVALID, 0, "bad_integer"
            elif t == 0x5F and crlf != pos + 1:   # '_' null
                return INVALID, 0, "bad_null"
            elif t == 0x23 and data[pos + 1:crlf] not in (b"t", b"f"):   # '#' boolean
                return INVALID, 0, "bad_boolean"
            pos = crlf + 2
        elif t in _BLOB_TYPES:
            status, size, start = header(data, pos, n)
            if status != PARSED:
                if status == NEED_MORE:
                    return (_UNFRAMED if partial else NEED_MORE), n + 1, ""
                return INVALID, 0, "bad_bulk_length"
            if size == -1 and t == _DOLLAR:
                pos = start
            elif size < 0 or size > MAX_BULK_LENGTH:
                return INVALID, 0, "bad_bulk_length"
            else:
                end = start + size
                if end + 2 <= n:
                    if data[end:end + 2] != b"\r\n":
                        return INVALID, 0, "bad_bulk_end"
                elif end < n and data[end] != 0x0D:
                    return INVALID, 0, "bad_bulk_end"
                pos = end + 2
                if pos > n:
                    if not partial:
                        return NEED_MORE, pos, ""
                    if remaining == 1 and not any(stack):
                        return PARSED, pos, ""     # the last value: its end is known
                    return _UNFRAMED, pos, ""
        elif t in _AGGREGATE_TYPES or t in _PAIR_TYPES:
            status, count, start = header(data, pos, n)
            if status != PARSED:
                if status == NEED_MORE:
                    return (_UNFRAMED if partial else NEED_MORE), n + 1, ""
                return INVALID, 0, "bad_aggregate_length"
            pos = start
            if count == -1 and t == _STAR:
                pass
            elif count < 0 or count > MAX_ELEMENTS:
                return INVALID, 0, "bad_aggregate_length"
            elif count:
                if len(stack) >= MAX_DEPTH:
                    return INVALID, 0, "too_deep"
                stack.append(remaining - 1)
                # An attribute map is followed by the value it describes.
                remaining = count * 2 + (1 if t == _ATTRIBUTE else 0) \
                    if t in _PAIR_TYPES else count
                continue
            elif t == _ATTRIBUTE:
                continue      # an empty attribute map: the value follows
        else:
            return INVALID, 0, "bad_type"
        remaining -= 1
        while not remaining:
            if not stack:
                return PARSED, pos, ""
            remaining = stack.pop()



def _line_text(data: bytes, pos: int, n: int):
    crlf = data.find(b"\r\n", pos + 1)
    return data[pos + 1:crlf if crlf >= 0 else n]


def _describe(data: bytes, pos: int, n: int, end: int, elements: bool) -> RedisReply:
    """The RedisReply of the value framed at data[pos:end]."""
    attributes = False
    if data[pos] == _ATTRIBUTE:
        # Skip the attribute map to the value it is attached to.
        attributes = True
        _, count, pos = header(data, pos, n)
        for _ in range(2 * count):
            status, pos, _ = _skip(data, pos, n, False)
            if status != PARSED:
                break
        if pos >= n or pos >= end:
            r = _reply(_ATTRIBUTE, end)
            r.attributes = True
            return r
    t = data[pos]
    r = _reply(t, end)
    r.attributes = attributes
    if t in _LINE_TYPES:
        if t == 0x2D:   # '-'
            r.error = _error_prefix(_line_text(data, pos, n))
        elif t == 0x2B:
            r.queued = data[pos + 1:pos + 9] == b"QUEUED\r\n"
        elif t == 0x5F:
            r.null = True
        return r
    _, count, start = header(data, pos, n)
    r.count = count
    if count == -1:
        r.null = True
        return r
    if t == _BANG:
        r.error = _error_prefix(data[start:min(start + count, n)])
        return r
    if t in _BLOB_TYPES:
        return r
    r.push = t == _PUSH
    if t == _STAR or t == _PUSH:
        _pubsub(r, data, start, n)
    if elements and count and t not in _PAIR_TYPES:
        r.elements = _children(data, start, n, count)
    return r


def _pubsub(r: RedisReply, data: bytes, pos: int, n: int) -> None:
    """Set pubsub_kind and subscriptions from an array's first elements."""
    if pos >= n or data[pos] != 0x24 or not 2 <= r.count <= 4:
        return
    status, size, start = header(data, pos, n)
    if status != PARSED or not 4 <= size <= 12 or start + size + 2 > n:
        return
    kind = _PUBSUB_KINDS.get(data[start:start + size])
    r.pubsub_kind = kind
    if kind and kind.endswith("subscribe") and r.count == 3:
        # [kind, channel or null, count]
        status, end, _ = _skip(data, start + size + 2, n, False)
        if status == PARSED and end < n and data[end] == 0x3A:
            crlf = data.find(b"\r\n", end + 1, end + MAX_HEADER)
            if crlf > 0:
                r.subscriptions = number(data, end + 1, crlf)


def _children(data: bytes, pos: int, n: int, count: int):
    out = []
    for _ in range(count):
        status, end, _ = _skip(data, pos, n, False)
        if status != PARSED:
            break
        child = _describe(data, pos, n, end, False)
        child.length = end - pos
        out.append(child)
        pos = end
    return tuple(out)


def parse_reply(data: bytes, partial: bool = False, elements: bool = False):
    """The reply value at the start of data: (status, RedisReply | None,
    consumed, reason).  elements=True also describes the children of a
    top-level array, set or push (EXEC's queued replies)."""
    n = len(data)
    if not n:
        return NEED_MORE, None, 1, ""
    status, end, reason = _skip(data, 0, n, partial)
    if status == PARSED:
        r = _describe(data, 0, n, min(end, n), elements)
        r.length = end
        if end > n:
            r.truncated = True
        return PARSED, r, end, ""
    if status == _UNFRAMED:
        r = _describe(data, 0, n, n, elements)
        r.length = max(end, n)
        r.truncated = True
        r.framed = False
        return PARSED, r, r.length, ""
    if status == NEED_MORE:
        return NEED_MORE, None, max(end, n + 1), ""
    return INVALID, None, 0, reason
