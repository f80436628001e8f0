"""Redis wire protocol (RESP2 and RESP3) from captured bytes.

Requests (client to server) are RESP arrays of bulk strings, many per
buffer when the client pipelines, or inline commands (a text line, as
telnet and nc send).  Replies are any RESP2 or RESP3 value.

    parse_command(data, partial=False) -> (status, RedisCommand, consumed, reason)
    parse_commands(data, partial=False) -> (status, [RedisCommand], consumed, reason)
    parse_reply(data, partial=False, elements=False) -> (status, RedisReply, consumed, reason)

- PARSED: consumed is the stream size of what was parsed.  With
  partial=True (the caller holds only the first bytes of what the
  syscall moved) a value whose header is captured but whose body is not
  is still PARSED with .truncated set and consumed the declared size,
  which may exceed len(data): the caller skips the difference in the
  stream that follows.  When the bytes end inside an aggregate before its
  size is known (an array whose later elements are not captured), .framed
  is False and consumed is only a lower bound: that direction's framing is
  lost.
- NEED_MORE: data is a valid prefix; consumed is a lower bound of the
  total size (at least len(data) + 1).  Nothing is returned.
- INVALID: the bytes are not RESP; reason says why, consumed 0.
  parse_commands returns the commands before the bad bytes, with consumed
  where they start.

Nothing is kept of argument or reply values: a command keeps its name,
its argument count, the SELECT database index, the HELLO protocol
version, the CLIENT REPLY mode, and a query text with every argument
replaced by "?" (AUTH's password and HELLO's credentials included, like
any other argument).  An error reply keeps its prefix ("ERR",
"WRONGTYPE"), never its message.  Nothing here raises for bad input.

What a handler pairing commands with replies needs, and where it is:
- Replies come in command order; one per command, except: the
  (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE commands get one confirmation per
  channel (RedisCommand.arg_count of them; an UNSUBSCRIBE without
  arguments one per channel still subscribed, at least one);
  CLIENT REPLY OFF / SKIP (reply_mode) silence the replies that follow.
- Inside MULTI, each command is answered "+QUEUED" (reply.queued) and
  EXEC's array holds the real replies in order: parse EXEC's reply with
  elements=True to get one RedisReply per queued command (a null EXEC,
  reply.null, means WATCH aborted the transaction).
- Pushed messages are not replies: RESP3 push frames (reply.push) and, on
  a connection that has subscribed in RESP2, arrays whose first element is
  "message", "pmessage" or "smessage" (reply.pubsub_kind).  Subscription
  confirmations carry pubsub_kind "subscribe"... and .subscriptions, the
  count still active: the connection leaves the subscribed state at 0.
- HELLO's protocol (2 or 3) says which reply types to expect; SELECT's db
  is db.namespace from then on.
"""
from __future__ import annotations

import re

from agent.parsers import INVALID, NEED_MORE, PARSED

# proto-max-bulk-len is 512 MiB by default; servers may raise it.
MAX_BULK_LENGTH = 1 << 32
MAX_ELEMENTS = (1 << 31) - 1
# Inline commands longer than this are refused by the server (PROTO_INLINE_MAX_SIZE).
MAX_INLINE_LENGTH = 64 * 1024
# Nesting of aggregate replies followed before giving up.
MAX_DEPTH = 32
# Placeholders written into query_text; arg_count holds the exact count.
MAX_QUERY_ARGS = 32
# The longest header line of a length or count: sign, 19 digits, CRLF.
_MAX_HEADER = 22

# Commands whose first argument names a subcommand from a fixed set: the
# operation is "CONFIG GET", not "CONFIG", as Redis's command table names them.
CONTAINER_COMMANDS = frozenset((
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO", "DEBUG"))
SUBSCRIBE_COMMANDS = frozenset(("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"))
UNSUBSCRIBE_COMMANDS = frozenset(("UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"))
# First element of a pub/sub array: the pushed messages, then confirmations.
PUSHED_MESSAGES = frozenset(("message", "pmessage", "smessage"))
_PUBSUB_KINDS = {k.encode(): k for k in (
    "message", "pmessage", "smessage", "subscribe", "psubscribe", "ssubscribe",
    "unsubscribe", "punsubscribe", "sunsubscribe", "pong", "invalidate")}
_PUBSUB_KINDS.update({k.upper(): v for k, v in _PUBSUB_KINDS.items()})

_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9._|:-]{0,39}\Z")
_SUBCOMMAND = re.compile(rb"[A-Za-z][A-Za-z0-9_-]{0,23}\Z")
_ERROR_CODE = re.compile(rb"[A-Z][A-Z0-9_]{0,31}(?= |\Z)")
_DIGITS = re.compile(rb"-?[0-9]{1,19}\Z")

# Reply types (RESP3 adds everything after ':').
_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$!=")
_AGGREGATE_TYPES = frozenset(b"*~>")
_PAIR_TYPES = frozenset(b"%|")
_ERROR_TYPES = frozenset(b"-!")
_STAR, _DOLLAR, _PUSH, _ATTRIBUTE, _BANG = b"*$>|!"


class RedisCommand:
    """One command.  name: the operation, upper-cased ("GET", "CONFIG
    GET"), "_OTHER" for a name that is not a plausible command word;
    arg_count: arguments after the command word; query_text: name and one
    "?" per further argument; db (SELECT), protocol (HELLO), reply_mode
    (CLIENT REPLY: "ON", "OFF", "SKIP") or None; inline for a text-line
    command; length its stream size; truncated / framed as in the module
    docstring."""

    __slots__ = ("name", "arg_count", "query_text", "db", "protocol", "reply_mode", "inline",
                 "length", "truncated", "framed")

    def __repr__(self) -> str:
        return f"RedisCommand({self.query_text!r})"


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


def _number(data: bytes, start: int, end: int):
    """The integer in data[start:end], or None."""
    text = data[start:end]
    if text.isdigit() and len(text) < 20:
        return int(text)
    if _DIGITS.match(text) is None:
        return None
    return int(text)


def _header(data: bytes, pos: int, n: int):
    """(status, value, position after the CRLF) of the length/count line
    whose type byte is at pos; NEED_MORE gives a lower bound of the end."""
    crlf = data.find(b"\r\n", pos + 1, pos + _MAX_HEADER)
    if crlf < 0:
        if n - pos >= _MAX_HEADER or _HEADER_PREFIX.match(data, pos + 1, n) is None:
            return INVALID, 0, 0
        return NEED_MORE, 0, n + 1
    value = _number(data, pos + 1, crlf)
    if value is None:
        return INVALID, 0, 0
    return PARSED, value, crlf + 2


_HEADER_PREFIX = re.compile(rb"-?[0-9]*\r?\Z")


# ----------------------------------------------------------------- commands

def _command_name(name: bytes) -> str:
    """The upper-cased command word, remembered for the next time (the
    words a connection sends are few)."""
    known = _NAMES_SEEN.get(name)
    if known is None:
        known = name.upper().decode("ascii") if _NAME.match(name) else "_OTHER"
        if len(_NAMES_SEEN) < _NAMES_SEEN_MAX:
            _NAMES_SEEN[name] = known
    return known


_NAMES_SEEN: dict[bytes, str] = {}
_NAMES_SEEN_MAX = 4096


def _command(name: bytes, count: int, inline: bool, length: int) -> RedisCommand:
    c = RedisCommand.__new__(RedisCommand)
    c.name = _command_name(name)
    c.arg_count = count - 1
    c.db = c.protocol = c.reply_mode = None
    c.inline = inline
    c.length = length
    c.truncated = False
    c.framed = True
    return c


def _finish(c: RedisCommand, args) -> RedisCommand:
    """Set the fields that depend on the first arguments (args: those
    captured, as bytes) and the query text."""
    name = c.name
    words = 1
    if name in CONTAINER_COMMANDS and args and _SUBCOMMAND.match(args[0]):
        name = c.name = f"{name} {args[0].upper().decode('ascii')}"
        words = 2
        if name == "CLIENT REPLY" and len(args) > 1 and args[1].upper() in (b"ON", b"OFF", b"SKIP"):
            c.reply_mode = args[1].upper().decode("ascii")
    elif name == "SELECT" and args and c.arg_count == 1:
        c.db = _number(args[0], 0, len(args[0]))
    elif name == "HELLO" and args:
        c.protocol = _number(args[0], 0, len(args[0]))
    placeholders = c.arg_count - (words - 1)
    if placeholders <= 0:
        c.query_text = name
    elif placeholders <= MAX_QUERY_ARGS:
        c.query_text = name + _PLACEHOLDERS[placeholders]
    else:
        c.query_text = name + _PLACEHOLDERS[MAX_QUERY_ARGS] + " ..."
    return c


_PLACEHOLDERS = [" ?" * i for i in range(MAX_QUERY_ARGS + 1)]


def _array_command(data: bytes, base: int, n: int, partial: bool):
    """The command whose array starts at data[base]; positions are
    absolute, consumed and lengths relative to base."""
    status, count, pos = _header(data, base, n)
    if status != PARSED:
        if status == NEED_MORE:
            return NEED_MORE, None, n + 1 - base, ""
        return INVALID, None, 0, "bad_array_length"
    if count <= 0 or count > MAX_ELEMENTS:
        return INVALID, None, 0, "bad_array_length"
    name = None
    args = []
    for i in range(count):
        if pos >= n:
            break
        if data[pos] != 0x24:  # '$': a request is an array of bulk strings
            return INVALID, None, 0, "expected_bulk_string"
        crlf = data.find(b"\r\n", pos + 1, pos + _MAX_HEADER)
        if crlf < 0:
            if n - pos >= _MAX_HEADER or _HEADER_PREFIX.match(data, pos + 1, n) is None:
                return INVALID, None, 0, "bad_bulk_length"
            pos = n
            break
        size = _number(data, pos + 1, crlf)
        if size is None or size < 0 or size > MAX_BULK_LENGTH:
            return INVALID, None, 0, "bad_bulk_length"
        start = crlf + 2
        end = start + size
        if end + 2 <= n:
            if data[end:end + 2] != b"\r\n":
                return INVALID, None, 0, "bad_bulk_end"
        elif end < n and data[end] != 0x0D:
            return INVALID, None, 0, "bad_bulk_end"
        if i == 0:
            if end > n:
                # The command word itself is not all captured.
                name = data[start:n] if partial else None
            else:
                name = data[start:end]
        elif i <= 2 and end <= n:
            args.append(data[start:end])
        pos = end + 2
        if pos > n:
            # Inside this argument: its end is known from its header.
            if not partial:
                return NEED_MORE, None, pos - base + 4 * (count - i - 1), ""
            if name is None:
                return INVALID, None, 0, "bad_command_name"
            c = _command(name, count, False, pos - base)
            c.truncated = True
            c.framed = i == count - 1
            return PARSED, _finish(c, args), pos - base, ""
    else:
        if name is None or not name:
            return INVALID, None, 0, "bad_command_name"
        return PARSED, _finish(_command(name, count, False, pos - base), args), pos - base, ""
    # The bytes ran out between arguments or inside a header.
    if not partial or name is None:
        return NEED_MORE, None, max(pos, n) + 1 - base, ""
    c = _command(name, count, False, n - base)
    c.truncated = True
    c.framed = False
    return PARSED, _finish(c, args), n - base, ""


def _split_inline(line: bytes):
    """The arguments of an inline command line, as the server splits them
    (blanks separate, double or single quotes group); None when a quote is
    not closed."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args = []
    pos, n = 0, len(line)
    while True:
        while pos < n and line[pos] in b" \t\r\n":
            pos += 1
        if pos >= n:
            return args
        quote = line[pos]
        if quote in b"\"'":
            pos += 1
            word = bytearray()
            while pos < n and line[pos] != quote:
                if line[pos] == 0x5C and pos + 1 < n:  # backslash: keep the escaped byte
                    pos += 1
                word.append(line[pos])
                pos += 1
            if pos >= n:
                return None
            pos += 1
            args.append(bytes(word))
        else:
            start = pos
            while pos < n and line[pos] not in b" \t\r\n":
                pos += 1
            args.append(line[start:pos])


def _inline_command(data: bytes, n: int, partial: bool):
    nl = data.find(b"\n", 0, MAX_INLINE_LENGTH)
    if nl < 0:
        if n >= MAX_INLINE_LENGTH:
            return INVALID, None, 0, "inline_too_long"
        if not partial:
            if not _looks_textual(data):
                return INVALID, None, 0, "bad_inline"
            return NEED_MORE, None, n + 1, ""
        line, end, truncated = data, n, True
    else:
        line, end, truncated = data[:nl], nl + 1, False
    if not _looks_textual(line):
        return INVALID, None, 0, "bad_inline"
    args = _split_inline(line)
    if args is None:
        return INVALID, None, 0, "bad_inline_quotes"
    if not args:
        if truncated:
            return INVALID, None, 0, "bad_inline"
        return PARSED, None, end, ""   # a blank line: the server ignores it
    c = _command(args[0], len(args), True, end)
    c.truncated = truncated
    c.framed = not truncated
    return PARSED, _finish(c, args[1:3]), end, ""


def _looks_textual(line: bytes) -> bool:
    """No control bytes but blanks: what a person or a script types."""
    return not line.translate(None, _TEXT_BYTES)


_TEXT_BYTES = bytes(range(0x20, 0x7F)) + b"\t\r" + bytes(range(0x80, 0x100))


def parse_command(data: bytes, partial: bool = False):
    """The command at the start of data: (status, RedisCommand | None,
    consumed, reason).  PARSED with command None is a blank inline line."""
    n = len(data)
    if not n:
        return NEED_MORE, None, 1, ""
    if data[0] == _STAR:
        return _array_command(data, 0, n, partial)
    return _inline_command(data, n, partial)


def parse_commands(data: bytes, partial: bool = False):
    """Every command in data, pipelined: (status, commands, consumed,
    reason).  PARSED: all of data was commands (consumed may exceed
    len(data) when the last one is truncated); NEED_MORE: data[consumed:]
    starts a command still to complete; INVALID: data[consumed:] is not a
    command.  Blank inline lines are skipped."""
    commands = []
    pos, n = 0, len(data)
    while pos < n:
        if data[pos] == _STAR:
            status, c, consumed, reason = _array_command(data, pos, n, partial)
        else:
            status, c, consumed, reason = _inline_command(data[pos:], n - pos, partial)
        if status != PARSED:
            return status, commands, pos, reason
        if c is not None:
            commands.append(c)
        pos += consumed
    return PARSED, commands, pos, ""


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
            status, size, start = _header(data, pos, n)
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
            status, count, start = _header(data, pos, n)
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


_UNFRAMED = 3


def _line_text(data: bytes, pos: int, n: int):
    crlf = data.find(b"\r\n", pos + 1)
    return data[pos + 1:crlf if crlf >= 0 else n]


def _describe(data: bytes, pos: int, n: int, end: int, elements: bool) -> RedisReply:
    """The RedisReply of the value framed at data[pos:end]."""
    attributes = False
    if data[pos] == _ATTRIBUTE:
        # Skip the attribute map to the value it is attached to.
        attributes = True
        _, count, pos = _header(data, pos, n)
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
    _, count, start = _header(data, pos, n)
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
    status, size, start = _header(data, pos, n)
    if status != PARSED or not 4 <= size <= 12 or start + size + 2 > n:
        return
    kind = _PUBSUB_KINDS.get(data[start:start + size])
    r.pubsub_kind = kind
    if kind and kind.endswith("subscribe") and r.count == 3:
        # [kind, channel or null, count]
        status, end, _ = _skip(data, start + size + 2, n, False)
        if status == PARSED and end < n and data[end] == 0x3A:
            crlf = data.find(b"\r\n", end + 1, end + _MAX_HEADER)
            if crlf > 0:
                r.subscriptions = _number(data, end + 1, crlf)


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


# ------------------------------------------------------------- classifiers
# The same rules as bpf/cache_classify.h (is_redis_request/is_redis_reply),
# over at most CLASSIFY_WINDOW bytes: a test checks that both agree.

CLASSIFY_WINDOW = 32
_REQUEST_HEAD = re.compile(rb"\*[1-9][0-9]{0,6}\r\n\$([1-9][0-9]?)\r\n([A-Za-z][A-Za-z0-9._]*)")
_REPLY_HEADS = re.compile(
    rb"\+[A-Za-z]+(?:\r\n| )"
    rb"|-[A-Z]{2,}(?:\r\n| )"
    rb"|[:(]-?[0-9]{1,20}\r\n"
    rb"|[$*]-1\r\n"
    rb"|[$*%~>=!|](?:0|[1-9][0-9]{0,9})\r\n"
    rb"|_\r\n|#[tf]\r\n"
    rb"|,[0-9a-z.+-]{1,24}\r\n")


def looks_like_redis_request(data: bytes) -> bool:
    """A RESP array's header, then a bulk string that starts with a
    command word.  Inline commands are not recognised here: clients
    send arrays; inline text is what a person types."""
    m = _REQUEST_HEAD.match(data, 0, CLASSIFY_WINDOW)
    if m is None:
        return False
    size = int(m.group(1))
    word = len(m.group(2))
    start = m.start(2)
    if word > size:
        return False
    if word < size:
        # The word must reach the end of the window (or of data).
        return start + word == min(len(data), CLASSIFY_WINDOW)
    end = start + size
    tail = data[end:min(end + 2, CLASSIFY_WINDOW)]
    return b"\r\n".startswith(tail)


def looks_like_redis_reply(data: bytes) -> bool:
    """The first line of a RESP2/RESP3 value, complete within the window."""
    return _REPLY_HEADS.match(data, 0, CLASSIFY_WINDOW) is not None
