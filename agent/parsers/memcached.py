"""memcached text and meta protocols from captured bytes.

    parse_request(data, partial=False) -> (status, MemcachedCommand, consumed, reason)
    parse_reply(data, partial=False) -> (status, MemcachedReply, consumed, reason)

Statuses and `partial` as in agent/parsers/redis.py: PARSED (consumed may
exceed len(data) when partial and a data block runs past the captured
bytes, .truncated; .framed False when the end is not known and consumed is
only a lower bound), NEED_MORE (consumed: a lower bound of the total),
INVALID (reason says why).

Only the text protocol (get/gets/gat/gats, set/add/replace/append/prepend/
cas, delete, incr/decr, touch, flush_all, version, stats, verbosity, quit)
and the meta protocol (mg/ms/md/ma/mn/me) are read.  The binary protocol
(first byte 0x80 request / 0x81 response, deprecated since 1.6) is left
out: its bytes are INVALID ("binary_protocol").

Keys and values are never kept: a command keeps its name and how many
keys it names; a reply its status word, how many values a retrieval
returned (hits), and for errors the error word, not its message.

What a handler pairing commands with replies needs:
- Replies come in command order.  Text commands with noreply get none.
- A retrieval (get/gets/gat/gats) of key_count keys is answered by one
  block (kind "END") whose hits says how many were found: misses are
  key_count - hits (db.operation.batch.size is key_count).
- Meta commands with the q flag (quiet) answer only what is not the usual
  outcome: mg q stays silent on a miss (EN), ms/md/ma q on success (HD).
  Clients end a run of quiet commands with mn, answered "MN": every quiet
  command before it that got no reply succeeded (or, for mg, missed).  An
  O (opaque) flag is echoed by the reply (.opaque) and pairs them exactly.
- mg: a hit is "VA" (with a value) or "HD", a miss "EN".
"""
from __future__ import annotations

import re

from agent.parsers import INVALID, NEED_MORE, PARSED

# memcached reads command lines into a 2 KiB buffer but lets a multi-get
# line grow; 250-byte keys, a few hundred of them.
MAX_LINE = 64 * 1024
# item_size_max is 1 MiB by default and at most 1 GiB (-I).
MAX_VALUE_LENGTH = 1 << 30

_STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
_RETRIEVAL = frozenset((b"get", b"gets"))
_TOUCH_RETRIEVAL = frozenset((b"gat", b"gats"))
_ONE_KEY = frozenset((b"delete", b"incr", b"decr", b"touch"))
_NO_KEY = frozenset((b"flush_all", b"version", b"stats", b"verbosity", b"quit", b"shutdown",
                     b"cache_memlimit", b"lru_crawler", b"slabs", b"lru", b"watch",
                     b"misbehave", b"debugtime", b"mn"))
_META_KEY = frozenset((b"mg", b"md", b"ma", b"me"))
COMMANDS = frozenset(_STORAGE | _RETRIEVAL | _TOUCH_RETRIEVAL | _ONE_KEY | _NO_KEY | _META_KEY
                     | {b"ms"})
_NAMES = {c: c.decode() for c in COMMANDS}

_STATUS_REPLIES = frozenset((b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED",
                             b"TOUCHED", b"OK", b"RESET", b"ERROR", b"END"))
_ERROR_REPLIES = frozenset((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))
_META_REPLIES = frozenset((b"HD", b"EN", b"NF", b"NS", b"EX", b"MN", b"ME"))
_WORD = re.compile(rb"[a-z_]{1,32}\Z")
_KEY_TOKEN = re.compile(rb"[\x21-\x7e\x80-\xff]{1,250}\Z")


class MemcachedCommand:
    """One command.  name as sent ("get", "mg"), "_OTHER" for an unknown
    word; meta: a meta command; key_count: keys it names; noreply: text
    noreply or meta q (quiet); data_length: the data block's size for
    set/add/.../cas/ms, else -1; opaque: the meta O flag's token or None;
    length / truncated / framed as in the module docstring."""

    __slots__ = ("name", "meta", "key_count", "noreply", "data_length", "opaque", "length",
                 "truncated", "framed")

    def __repr__(self) -> str:
        return f"MemcachedCommand({self.name} keys={self.key_count})"


class MemcachedReply:
    """One reply.  kind: the status word ("STORED", "END", "HD", "VA",
    "VERSION", "STAT"...; "NUMBER" for incr/decr's value); hits: values
    returned (VALUE items of a retrieval block; 1 for VA); error: "ERROR",
    "CLIENT_ERROR" or "SERVER_ERROR", else None; opaque: the meta O flag
    echoed; length / truncated / framed as in the module docstring."""

    __slots__ = ("kind", "hits", "error", "opaque", "length", "truncated", "framed")

    def __repr__(self) -> str:
        return f"MemcachedReply({self.kind} hits={self.hits})"


def _line(data: bytes, pos: int, n: int):
    """(line without its end, position after it) or (None, -1)."""
    nl = data.find(b"\n", pos, pos + MAX_LINE)
    if nl < 0:
        return None, -1
    end = nl - 1 if nl > pos and data[nl - 1] == 0x0D else nl
    return data[pos:end], nl + 1


def _size(token: bytes) -> int:
    if not token.isdigit() or len(token) > 10:
        return -1
    size = int(token)
    return size if size <= MAX_VALUE_LENGTH else -1


def _textual(line: bytes) -> bool:
    return not line.translate(None, _TEXT_BYTES)


_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\r" + bytes(range(0x80, 0x100))


def _opaque(tokens) -> str | None:
    for t in tokens:
        if t[:1] == b"O":
            return t[1:33].decode("ascii", "replace")
    return None


# ----------------------------------------------------------------- requests

def _command(name: bytes, tokens, length: int) -> MemcachedCommand:
    """The command of a line's tokens.  A line the server cannot read
    (fields missing, a bad data size) is still a command: the server
    answers it with ERROR or CLIENT_ERROR and reads no data block after
    it, so data_length stays -1."""
    c = MemcachedCommand.__new__(MemcachedCommand)
    c.name = _NAMES.get(name, "_OTHER")
    c.meta = len(name) == 2 and name[0] == 0x6D and c.name != "_OTHER"   # 'm'
    c.data_length = -1
    c.opaque = None
    c.length = length
    c.truncated = False
    c.framed = True
    argc = len(tokens) - 1
    c.noreply = argc > 0 and tokens[-1] == b"noreply"
    c.key_count = 1 if argc >= 1 else 0
    if c.meta:
        flags = tokens[2:]
        if name == b"ms":
            c.data_length = _size(tokens[2]) if argc >= 2 else -1
            flags = tokens[3:]
        elif name == b"mn":
            c.key_count = 0
        c.noreply = b"q" in flags
        c.opaque = _opaque(flags)
    elif name in _RETRIEVAL:
        c.key_count = argc
    elif name in _TOUCH_RETRIEVAL:
        c.key_count = max(argc - 1, 0)
    elif name in _STORAGE:
        want = 5 if name == b"cas" else 4
        if argc in (want, want + 1):
            c.data_length = _size(tokens[4])
    elif name not in _ONE_KEY:
        c.key_count = 0
    return c


def parse_request(data: bytes, partial: bool = False):
    """The command at the start of data: (status, MemcachedCommand | None,
    consumed, reason)."""
    n = len(data)
    if not n:
        return NEED_MORE, None, 1, ""
    if data[0] == 0x80:
        return INVALID, None, 0, "binary_protocol"
    line, pos = _line(data, 0, n)
    if line is None:
        if n >= MAX_LINE:
            return INVALID, None, 0, "line_too_long"
        tokens = data.split()
        head = tokens[0] if tokens else b""
        if not _textual(data) or (head and not _WORD.match(head)):
            return INVALID, None, 0, "bad_command"
        if not partial or not head:
            return NEED_MORE, None, n + 1, ""
        # A truncated line: the command and the keys captured so far.
        c = _command(head, tokens, n)
        c.truncated = True
        c.framed = False
        return PARSED, c, n, ""
    if not _textual(line):
        return INVALID, None, 0, "bad_command"
    tokens = line.split()
    if not tokens or not _WORD.match(tokens[0]):
        return INVALID, None, 0, "bad_command"
    c = _command(tokens[0], tokens, pos)
    if c.data_length >= 0:
        end = pos + c.data_length + 2
        if end <= n:
            if data[end - 2:end] != b"\r\n":
                return INVALID, None, 0, "bad_data_block"
        elif end - 2 < n and data[end - 2] != 0x0D:
            return INVALID, None, 0, "bad_data_block"
        elif not partial:
            return NEED_MORE, None, end, ""
        else:
            c.truncated = True
        c.length = pos = end
    return PARSED, c, pos, ""


# ------------------------------------------------------------------ replies

def _reply(kind: str, length: int) -> MemcachedReply:
    r = MemcachedReply.__new__(MemcachedReply)
    r.kind = kind
    r.hits = 0
    r.error = None
    r.opaque = None
    r.length = length
    r.truncated = False
    r.framed = True
    return r


def _block(data: bytes, pos: int, n: int, partial: bool):
    """A retrieval or stats block from pos up to and including END:
    (status, reply, consumed, reason)."""
    hits = 0
    stats = 0
    while True:
        line, after = _line(data, pos, n)
        if line is None:
            if n - pos >= MAX_LINE:
                return INVALID, None, 0, "line_too_long"
            if not partial:
                return NEED_MORE, None, n + 1, ""
            r = _reply("STAT" if stats else "END", n)
            r.hits = hits
            r.truncated = True
            r.framed = False
            return PARSED, r, n, ""
        if not _textual(line):
            return INVALID, None, 0, "bad_block_line"
        if line == b"END":
            r = _reply("STAT" if stats else "END", after)
            r.hits = hits
            return PARSED, r, after, ""
        if line[:6] == b"VALUE ":
            tokens = line.split()
            if len(tokens) not in (4, 5) or (size := _size(tokens[3])) < 0:
                return INVALID, None, 0, "bad_value_line"
            end = after + size + 2
            if end > n:
                if not partial:
                    return NEED_MORE, None, end + 5, ""
                if end - 2 < n and data[end - 2] != 0x0D:
                    return INVALID, None, 0, "bad_data_block"
                # The value runs past the capture: END (or more values) follow.
                r = _reply("END", end + 5)
                r.hits = hits + 1
                r.truncated = True
                r.framed = False
                return PARSED, r, end + 5, ""
            if data[end - 2:end] != b"\r\n":
                return INVALID, None, 0, "bad_data_block"
            hits += 1
            pos = end
        elif line[:5] == b"STAT " and not hits:
            stats += 1
            pos = after
        else:
            return INVALID, None, 0, "bad_block_line"


def parse_reply(data: bytes, partial: bool = False):
    """The reply at the start of data: (status, MemcachedReply | None,
    consumed, reason)."""
    n = len(data)
    if not n:
        return NEED_MORE, None, 1, ""
    if data[0] == 0x81:
        return INVALID, None, 0, "binary_protocol"
    line, after = _line(data, 0, n)
    if line is None:
        if n >= MAX_LINE or not _textual(data) or not data[:1].isalnum():
            return INVALID, None, 0, "bad_reply"
        if data[:6] == b"VALUE " or data[:5] == b"STAT ":
            return _block(data, 0, n, partial)
        return NEED_MORE, None, n + 1, ""
    if not _textual(line):
        return INVALID, None, 0, "bad_reply"
    word, _, rest = line.partition(b" ")
    if word == b"VALUE" or word == b"STAT" or word == b"END":
        return _block(data, 0, n, partial)
    if word in _STATUS_REPLIES and not rest:
        r = _reply(word.decode(), after)
        if word == b"ERROR":
            r.error = "ERROR"
        return PARSED, r, after, ""
    if word in _ERROR_REPLIES:
        r = _reply(word.decode(), after)
        r.error = r.kind
        return PARSED, r, after, ""
    if word == b"VERSION" and rest:
        return PARSED, _reply("VERSION", after), after, ""
    if word.isdigit() and not rest and len(word) <= 20:
        return PARSED, _reply("NUMBER", after), after, ""
    if word in _META_REPLIES:
        r = _reply(word.decode(), after)
        r.opaque = _opaque(rest.split())
        return PARSED, r, after, ""
    if word == b"VA":
        tokens = rest.split()
        if not tokens or (size := _size(tokens[0])) < 0:
            return INVALID, None, 0, "bad_value_line"
        r = _reply("VA", after + size + 2)
        r.hits = 1
        r.opaque = _opaque(tokens[1:])
        end = r.length
        if end <= n:
            if data[end - 2:end] != b"\r\n":
                return INVALID, None, 0, "bad_data_block"
        elif end - 2 < n and data[end - 2] != 0x0D:
            return INVALID, None, 0, "bad_data_block"
        elif not partial:
            return NEED_MORE, None, end, ""
        else:
            r.truncated = True
        return PARSED, r, end, ""
    return INVALID, None, 0, "unknown_reply"


# ------------------------------------------------------------- classifiers
# The same rules as bpf/cache_classify.h (is_memcached_request/_reply): a
# test checks that both agree.

# Commands that take arguments: the word, a blank, then a printable byte.
_ARG_COMMANDS = (b"get", b"gets", b"gat", b"gats", b"set", b"add", b"replace", b"append",
                 b"prepend", b"cas", b"delete", b"incr", b"decr", b"touch", b"mg", b"ms",
                 b"md", b"ma", b"me", b"verbosity", b"flush_all", b"stats")
# Commands that may come alone on their line.
_BARE_COMMANDS = (b"version", b"stats", b"flush_all", b"mn", b"quit")
_REQUEST_HEAD = re.compile(
    rb"(?:%s) [\x21-\x7e]|(?:%s)\r\n" % (b"|".join(_ARG_COMMANDS), b"|".join(_BARE_COMMANDS)))
_REPLY_PREFIXES = (
    b"VALUE ", b"END\r\n", b"STORED\r\n", b"NOT_STORED\r\n", b"EXISTS\r\n", b"NOT_FOUND\r\n",
    b"DELETED\r\n", b"TOUCHED\r\n", b"OK\r\n", b"ERROR\r\n", b"CLIENT_ERROR ",
    b"SERVER_ERROR ", b"VERSION ", b"STAT ", b"RESET\r\n", b"HD\r\n", b"HD ", b"VA ",
    b"EN\r\n", b"NF\r\n", b"NF ", b"NS\r\n", b"NS ", b"EX\r\n", b"EX ", b"MN\r\n", b"ME ")


def looks_like_memcached_request(data: bytes) -> bool:
    """A command word (lower case, as the server requires) and its first
    argument's first byte, or a command that stands alone and its CRLF."""
    return _REQUEST_HEAD.match(data) is not None


def looks_like_memcached_reply(data: bytes) -> bool:
    """A reply's status word with what follows it (a blank or CRLF).  A
    bare number (incr/decr) is not recognised: too many things start so."""
    return data.startswith(_REPLY_PREFIXES)
