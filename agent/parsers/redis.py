"""Redis wire protocol (RESP2 and RESP3) from captured bytes.

Requests (client to server) are RESP arrays of bulk strings, many per
buffer when the client pipelines, or inline commands (a text line, as
telnet and nc send).  Replies are any RESP2 or RESP3 value.

    parse_command(data, partial=False) -> (status, RedisCommand, consumed, reason)
    parse_commands(data, partial=False) -> (status, [RedisCommand], consumed, reason)
    parse_reply(data, partial=False, elements=False) -> (status, RedisReply, consumed, reason)
        (agent/parsers/resp.py, re-exported here)

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
from agent.parsers.resp import (HEADER_PREFIX, MAX_BULK_LENGTH, MAX_ELEMENTS, MAX_HEADER,
                                PUSHED_MESSAGES, RedisReply, header, number, parse_reply)

__all__ = ["CONTAINER_COMMANDS", "HANDSHAKE_COMMANDS", "PUSHED_MESSAGES", "SUBSCRIBE_COMMANDS", "UNSUBSCRIBE_COMMANDS",
           "RedisCommand", "RedisReply", "looks_like_redis_reply", "looks_like_redis_request",
           "parse_command", "parse_commands", "parse_reply"]

# Inline commands longer than this are refused by the server (PROTO_INLINE_MAX_SIZE).
MAX_INLINE_LENGTH = 64 * 1024
# Placeholders written into query_text; arg_count holds the exact count.
MAX_QUERY_ARGS = 32

# Commands whose first argument names a subcommand from a fixed set: the
# operation is "CONFIG GET", not "CONFIG", as Redis's command table names them.
CONTAINER_COMMANDS = frozenset((
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO", "DEBUG"))
# What client libraries send as they connect, before the application's
# first command (redis-py 8: HELLO 3 with AUTH, then CLIENT
# MAINT_NOTIFICATIONS and two CLIENT SETINFO, which Redis 7.0 rejects with
# ERR): a handler may keep them out of the spans, or their errors would
# mark every new connection.
HANDSHAKE_COMMANDS = frozenset((
    "HELLO", "AUTH", "CLIENT SETINFO", "CLIENT SETNAME", "CLIENT MAINT_NOTIFICATIONS",
    "CLIENT TRACKING", "READONLY"))
SUBSCRIBE_COMMANDS = frozenset(("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"))
UNSUBSCRIBE_COMMANDS = frozenset(("UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"))

_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9._|:-]{0,39}\Z")
_SUBCOMMAND = re.compile(rb"[A-Za-z][A-Za-z0-9_-]{0,23}\Z")
_STAR = 0x2A


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
        c.db = number(args[0], 0, len(args[0]))
    elif name == "HELLO" and args:
        c.protocol = number(args[0], 0, len(args[0]))
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
    status, count, pos = header(data, base, n)
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
        crlf = data.find(b"\r\n", pos + 1, pos + MAX_HEADER)
        if crlf < 0:
            if n - pos >= MAX_HEADER or HEADER_PREFIX.match(data, pos + 1, n) is None:
                return INVALID, None, 0, "bad_bulk_length"
            pos = n
            break
        size = number(data, pos + 1, crlf)
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
                name = b"" if partial else None    # "_OTHER": the word is cut
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
        if not name:
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
