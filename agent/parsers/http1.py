"""HTTP/1.x message heads (RFC 9112) and chunked bodies, from captured bytes.

Only the head is parsed, and only the fields the agent needs are extracted:
the parser sits on the hot path of every captured message, so a head costs
one search for its end, one regex match for the start line, one regex
search that validates every field line, and one regex scan that visits
only the wanted fields.  Each of these loops in C; no list of lines or dict
of all headers is built.  Validation is strict enough to reject non-HTTP
bytes within the first few bytes (the agent sniffs arbitrary sockets) and
lenient where real peers deviate harmlessly (bare LF line ends, obs-fold).
"""
from __future__ import annotations

import re

from agent.parsers import INVALID, NEED_MORE, PARSED

_TCHAR = (b"!#$%&'*+-.^_`|~0123456789"
          b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TCHAR_CLASS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# request-target bytes: visible ASCII, plus obs-text because real clients
# send raw UTF-8 paths and rejecting them would lose the whole exchange.
_TARGET_BYTES = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_TARGET_CLASS = rb"[\x21-\x7e\x80-\xff]"
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"

# No registered method is longer than 17 characters; a bound lets a long run
# of token characters (text that is not HTTP) fail early.
_MAX_METHOD = 24
# Content-Length beyond 10**18 bytes is nonsense, and the bound keeps int()
# away from its digit limit, which raises.
_MAX_LENGTH_DIGITS = 18

_REQUEST_LINE = re.compile(
    rb"(%s{1,%d}) (%s+) HTTP/1\.(\d)(?:\r?\n|\Z)" % (_TCHAR_CLASS, _MAX_METHOD, _TARGET_CLASS))
_STATUS_LINE = re.compile(rb"HTTP/1\.(\d) ([1-9]\d\d)(?: [^\r\n]*)?(?:\r?\n|\Z)")
# A line that is neither a field line nor an obs-fold continuation.  An
# empty line also matches, which is how a head whose blank line is a bare LF
# is told apart from one that ends at the first CRLFCRLF.  Lines starting
# with whitespace are skipped, as RFC 9112 section 2.2 and 5.2 allow.
_BAD_LINE = re.compile(rb"\n(?!%s+:|[ \t])" % _TCHAR_CLASS)


def _fields(names):
    """A pattern finding (name, value) of the wanted fields, and a table from
    name to field code.  The table holds the usual spellings, so a name only
    needs lower() when a peer spells it unusually."""
    pattern = re.compile(b"\\n(" + b"|".join(map(re.escape, names)) + rb"):[ \t]*([^\r\n]*)",
                         re.IGNORECASE)
    codes = {}
    for code, name in enumerate(names):
        for spelling in (name, name.title(), name.upper()):
            codes[spelling] = code
    return pattern, codes


_HOST, _USER_AGENT, _TRACEPARENT, _TRACESTATE, _CONTENT_LENGTH, \
    _TRANSFER_ENCODING, _CONNECTION, _EXPECT = range(8)
_REQUEST_FIELDS, _REQUEST_CODES = _fields([
    b"host", b"user-agent", b"traceparent", b"tracestate", b"content-length",
    b"transfer-encoding", b"connection", b"expect"])
_RESPONSE_FIELDS, _RESPONSE_CODES = _fields([
    b"content-length", b"transfer-encoding", b"connection"])
_RESPONSE_CONTENT_LENGTH, _RESPONSE_TRANSFER_ENCODING, _RESPONSE_CONNECTION = range(3)

_MINOR_VERSIONS = {b"1": "1.1", b"0": "1.0"}


class HttpRequest:
    """A parsed request head.  content_length is -1 when absent;
    connection_close also covers HTTP/1.0 without keep-alive; header_bytes
    counts everything up to and including the blank line."""

    __slots__ = ("method", "target", "version", "host", "user_agent", "traceparent",
                 "tracestate", "content_length", "chunked", "connection_close",
                 "expect_continue", "header_bytes")

    def __init__(self, method, target, version, host, user_agent, traceparent, tracestate,
                 content_length, chunked, connection_close, expect_continue, header_bytes):
        self.method = method
        self.target = target
        self.version = version
        self.host = host
        self.user_agent = user_agent
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.content_length = content_length
        self.chunked = chunked
        self.connection_close = connection_close
        self.expect_continue = expect_continue
        self.header_bytes = header_bytes

    def __repr__(self) -> str:
        return f"HttpRequest({self.method} {self.target} HTTP/{self.version})"


class HttpResponse:
    """A parsed response head; fields as in HttpRequest."""

    __slots__ = ("version", "status_code", "content_length", "chunked", "connection_close",
                 "header_bytes")

    def __init__(self, version, status_code, content_length, chunked, connection_close,
                 header_bytes):
        self.version = version
        self.status_code = status_code
        self.content_length = content_length
        self.chunked = chunked
        self.connection_close = connection_close
        self.header_bytes = header_bytes

    def __repr__(self) -> str:
        return f"HttpResponse(HTTP/{self.version} {self.status_code})"


def _head(data: bytes, max_header_bytes: int):
    """Find the head: (head, header_bytes, bad_line).

    head runs from the start line to the end of the last field line and
    bad_line says whether a field line is malformed.  An unfinished head
    gives (None, where it starts, False): that skips the one empty line RFC
    9112 section 2.2 lets a message be preceded by (a stray CRLF after the
    previous body).
    """
    start = 0
    first = data[:1]
    if first == b"\r":
        if data[1:2] == b"\n":
            start = 2
        elif len(data) == 1:
            return None, 1, False
    elif first == b"\n":
        start = 1
    stop = start + max_header_bytes
    end = data.find(b"\r\n\r\n", start, stop)
    if end >= 0:
        head = data[start:end]
        if _BAD_LINE.search(head) is None:
            return head, end + 4, False
    # Bare LF line ends: the head ends at the first empty line, however
    # that line and the one before it are terminated.
    lf_lf = data.find(b"\n\n", start, stop)
    lf_crlf = data.find(b"\n\r\n", start, stop)
    if lf_lf < 0 and lf_crlf < 0:
        return None, start, False
    if lf_crlf < 0 or 0 <= lf_lf < lf_crlf:
        end, header_bytes = lf_lf, lf_lf + 2
    else:
        end, header_bytes = lf_crlf, lf_crlf + 3
    if end > start and data[end - 1] == 0x0D:
        end -= 1
    head = data[start:end]
    return head, header_bytes, _BAD_LINE.search(head) is not None


def _unfinished_error(data: bytes, start: int, max_header_bytes: int, start_line,
                      line_error, prefix_error) -> str:
    """Why an unfinished head cannot become a valid one, or ""."""
    buf = data[start:start + max_header_bytes]
    newline = buf.find(b"\n")
    if newline < 0:
        error = prefix_error(buf)
    elif start_line.match(buf) is None:
        error = line_error(buf[:newline])
    elif _BAD_LINE.search(buf, newline, buf.rfind(b"\n")) is not None:
        error = "bad_header"
    else:
        error = ""
    if not error and len(data) - start >= max_header_bytes:
        return "header_too_large"
    return error


def _method_error(method: bytes) -> str:
    if len(method) > _MAX_METHOD or method.translate(None, _TCHAR):
        return "bad_method"
    return ""


def _request_line_error(line: bytes) -> str:
    """Why a complete request line is invalid (it failed _REQUEST_LINE)."""
    if line[-1:] == b"\r":
        line = line[:-1]
    method = line.partition(b" ")[0]
    if not method or _method_error(method):
        return "bad_method"
    parts = line.split(b" ")
    if len(parts) != 3:
        return "bad_request_line"
    target = parts[1]
    if not target or target.translate(None, _TARGET_BYTES):
        return "bad_request_line"
    return "bad_version"


def _request_line_prefix_error(part: bytes) -> str:
    """Why part, the start of an unfinished request line, cannot begin one."""
    method, sp, rest = part.partition(b" ")
    error = _method_error(method)
    if error or not sp:
        return error
    if not method:
        return "bad_method"
    target, sp, version = rest.partition(b" ")
    if target.translate(None, _TARGET_BYTES) or (sp and not target):
        return "bad_request_line"
    if not sp:
        return ""
    if version[-1:] == b"\r":
        version = version[:-1]
        if len(version) != 8:
            return "bad_version"
    if len(version) < 8:
        return "" if b"HTTP/1.".startswith(version) else "bad_version"
    if len(version) == 8 and version[:7] == b"HTTP/1." and version[7] in _DIGITS:
        return ""
    return "bad_version"


def _status_line_error(line: bytes) -> str:
    """Why a complete status line is invalid (it failed _STATUS_LINE)."""
    if len(line) < 8 or line[:7] != b"HTTP/1." or line[7] not in _DIGITS:
        return "bad_version"
    return "bad_status_line"


_STATUS_PATTERN = b"HTTP/1.0 100 "


def _status_line_prefix_error(part: bytes) -> str:
    """Why part, the start of an unfinished status line, cannot begin one."""
    for i, byte in enumerate(part[:len(_STATUS_PATTERN)]):
        if i == 7 or 9 <= i <= 11:
            if byte not in _DIGITS or (i == 9 and byte == 0x30):
                return "bad_version" if i == 7 else "bad_status_line"
        elif byte != _STATUS_PATTERN[i] and not (i == 12 and byte == 0x0D):
            return "bad_version" if i < 8 else "bad_status_line"
    return ""


def _content_length(value: bytes) -> int:
    """The length, or -1 when the value is not a valid Content-Length."""
    if value.isdigit():
        return int(value) if len(value) <= _MAX_LENGTH_DIGITS else -1
    # RFC 9110 section 8.6: a list of identical values is one value.
    values = {v.strip(b" \t") for v in value.split(b",")}
    if len(values) != 1:
        return -1
    value = values.pop()
    if value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
        return int(value)
    return -1


def _connection_tokens(value: bytes):
    """(close, keep_alive) from a Connection field value."""
    value = value.lower()
    if b"," not in value:
        return value == b"close", value == b"keep-alive"
    tokens = [t.strip(b" \t") for t in value.split(b",")]
    return b"close" in tokens, b"keep-alive" in tokens


def _last_coding_is_chunked(value: bytes) -> bool:
    return value.rpartition(b",")[2].strip(b" \t").lower() == b"chunked"


def _start(data: bytes, max_header_bytes: int, start_line, line_error, prefix_error):
    """(PARSED, head, start-line match, header_bytes) for a complete head
    whose start line matches, else (NEED_MORE or INVALID, reason, None, 0)."""
    # Inlined common case of _head: CRLF line ends and no stray leading CRLF
    # (which _BAD_LINE flags, sending such heads to _head).
    end = data.find(b"\r\n\r\n", 0, max_header_bytes)
    head = data[:end] if end > 0 else None
    if head is not None and _BAD_LINE.search(head) is None:
        header_bytes = end + 4
        bad_line = False
    else:
        head, header_bytes, bad_line = _head(data, max_header_bytes)
    if head is None:
        error = _unfinished_error(data, header_bytes, max_header_bytes, start_line,
                                  line_error, prefix_error)
        return (INVALID, error, None, 0) if error else (NEED_MORE, "", None, 0)
    line = start_line.match(head)
    if line is None:
        return INVALID, line_error(head.partition(b"\n")[0]), None, 0
    if bad_line:
        return INVALID, "bad_header", None, 0
    return PARSED, head, line, header_bytes


def parse_request(data: bytes, max_header_bytes: int = 16384):
    """(status, HttpRequest | None, reason) for the head at the start of data."""
    status, head, line, header_bytes = _start(data, max_header_bytes, _REQUEST_LINE,
                                              _request_line_error, _request_line_prefix_error)
    if status != PARSED:
        return status, None, head
    method, target, minor = line.groups()

    host = user_agent = traceparent = tracestate = None
    content_length = -1
    chunked = close = keep_alive = expect = has_te = False
    codes = _REQUEST_CODES
    for name, value in _REQUEST_FIELDS.findall(head, line.end() - 1):
        code = codes.get(name)
        if code is None:
            code = codes[name.lower()]
        value = value.rstrip(b" \t")
        if code == _HOST:
            host = value.decode("utf-8", "replace")
        elif code == _USER_AGENT:
            user_agent = value.decode("utf-8", "replace")
        elif code == _CONTENT_LENGTH:
            length = _content_length(value)
            if length < 0 or (content_length >= 0 and length != content_length):
                return INVALID, None, "bad_content_length"
            content_length = length
        elif code == _TRANSFER_ENCODING:
            has_te = True
            chunked = _last_coding_is_chunked(value)
        elif code == _CONNECTION:
            c, k = _connection_tokens(value)
            close = close or c
            keep_alive = keep_alive or k
        elif code == _TRACEPARENT:
            # Repeated fields combine with commas (RFC 9110 section 5.3), which
            # makes a repeated traceparent invalid as the W3C spec requires and
            # joins a split tracestate as it allows.
            text = value.decode("latin-1")
            traceparent = text if traceparent is None else traceparent + "," + text
        elif code == _TRACESTATE:
            text = value.decode("latin-1")
            tracestate = text if tracestate is None else tracestate + "," + text
        else:
            expect = value.lower() == b"100-continue"
    if has_te and not chunked:
        # RFC 9112 section 6.3: the request body length cannot be known.
        return INVALID, None, "bad_transfer_encoding"
    version = _MINOR_VERSIONS.get(minor) or "1." + minor.decode()
    if minor == b"0" and not keep_alive:
        close = True
    return PARSED, HttpRequest(
        method.decode(), target.decode("utf-8", "replace"), version, host, user_agent,
        traceparent, tracestate, content_length, chunked, close, expect, header_bytes), ""


def parse_response(data: bytes, max_header_bytes: int = 16384):
    """(status, HttpResponse | None, reason) for the head at the start of data."""
    status, head, line, header_bytes = _start(data, max_header_bytes, _STATUS_LINE,
                                              _status_line_error, _status_line_prefix_error)
    if status != PARSED:
        return status, None, head
    minor, status = line.groups()

    content_length = -1
    chunked = close = keep_alive = False
    codes = _RESPONSE_CODES
    for name, value in _RESPONSE_FIELDS.findall(head, line.end() - 1):
        code = codes.get(name)
        if code is None:
            code = codes[name.lower()]
        value = value.rstrip(b" \t")
        if code == _RESPONSE_CONTENT_LENGTH:
            length = _content_length(value)
            if length < 0 or (content_length >= 0 and length != content_length):
                return INVALID, None, "bad_content_length"
            content_length = length
        elif code == _RESPONSE_TRANSFER_ENCODING:
            # A response whose last coding is not chunked runs until close,
            # which content_length -1 without chunked already says.
            chunked = _last_coding_is_chunked(value)
        else:
            c, k = _connection_tokens(value)
            close = close or c
            keep_alive = keep_alive or k
    if minor == b"0" and not keep_alive:
        close = True
    return PARSED, HttpResponse(_MINOR_VERSIONS.get(minor) or "1." + minor.decode(),
                                int(status), content_length, chunked, close, header_bytes), ""


def response_has_body(request_method: str, status_code: int) -> bool:
    """RFC 9112 section 6.3: responses to HEAD, and 1xx, 204 and 304, end
    with their head."""
    return not (request_method == "HEAD" or status_code < 200 or status_code == 204
                or status_code == 304)


# Resynchronisation after a capture gap lands on arbitrary body bytes, so a
# start only counts when it reads like a real request line: an upper-case
# method, then a target in one of the forms clients send, or a whole line.
_REQUEST_START = re.compile(
    rb"[A-Z][A-Z_-]{0,23} (?:/|https?://|%s+ HTTP/1\.\d\r?\n)" % _TARGET_CLASS)
_RESPONSE_START = re.compile(rb"HTTP/1\.\d [1-9]\d\d[ \r\n]")


def looks_like_request(data: bytes) -> bool:
    return _REQUEST_START.match(data) is not None


def looks_like_response(data: bytes) -> bool:
    return _RESPONSE_START.match(data) is not None


def split_target(target: str):
    """(path, query or None) of a request-target.

    Absolute-form gives the path and query of its URI ("/" for an empty
    path, as RFC 9112 section 3.2.1 makes its origin-form); asterisk-form
    and authority-form have no path or query and come back unchanged.
    """
    if target[:1] != "/":
        scheme_end = target.find("://")
        if scheme_end <= 0:
            return target, None
        path_start = scheme_end + 3
        while path_start < len(target) and target[path_start] not in "/?#":
            path_start += 1
        target = target[path_start:]
        if target[:1] != "/":
            target = "/" + target
    path, mark, query = target.partition("?")
    return (path, query) if mark else (path, None)


# ChunkedBody states.
_SIZE = 0        # in a chunk-size line (size, extensions, line end)
_DATA = 1        # in chunk data
_DATA_CR = 2     # expecting the CR (or bare LF) after chunk data
_DATA_LF = 3     # expecting the LF after chunk data
_TRAILER = 4     # in the trailer section, up to its empty line
_DONE = 5
_FAILED = 6

# Extensions and trailers are unbounded on the wire; the bounds keep a
# non-HTTP stream from growing the line buffer forever.
_MAX_SIZE_LINE = 4096
_MAX_TRAILER = 16384


class ChunkedBody:
    """Resumable scanner over a chunked body (RFC 9112 section 7.1).

    feed(data) -> (status, consumed): PARSED with the bytes up to the end of
    the body when it ends inside data; NEED_MORE with len(data) when it does
    not; INVALID on a malformed chunk-size line or line end.  Once it has
    returned PARSED or INVALID it keeps doing so, consuming nothing.
    """

    __slots__ = ("_state", "_remaining", "_line", "_trailer_bytes")

    def __init__(self):
        self._state = _SIZE
        self._remaining = 0
        self._line = b""
        self._trailer_bytes = 0

    def feed(self, data: bytes):
        state = self._state
        if state >= _DONE:
            return (PARSED if state == _DONE else INVALID), 0
        pos = 0
        end = len(data)
        while pos < end:
            if state == _DATA:
                if end - pos < self._remaining:
                    self._remaining -= end - pos
                    self._state = state
                    return NEED_MORE, end
                pos += self._remaining
                self._remaining = 0
                state = _DATA_CR
            elif state == _DATA_CR or state == _DATA_LF:
                byte = data[pos]
                pos += 1
                if byte == 0x0A:
                    state = _SIZE
                elif byte == 0x0D and state == _DATA_CR:
                    state = _DATA_LF
                else:
                    self._state = _FAILED
                    return INVALID, pos
            else:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._line += data[pos:]
                    self._state = state
                    if state == _SIZE:
                        if len(self._line) > _MAX_SIZE_LINE or _size_prefix_error(self._line):
                            self._state = _FAILED
                            return INVALID, end
                    elif self._trailer_bytes + len(self._line) > _MAX_TRAILER:
                        self._state = _FAILED
                        return INVALID, end
                    return NEED_MORE, end
                line = self._line + data[pos:newline] if self._line else data[pos:newline]
                self._line = b""
                pos = newline + 1
                if state == _SIZE:
                    size = _chunk_size(line)
                    if size < 0:
                        self._state = _FAILED
                        return INVALID, pos
                    if size:
                        self._remaining = size
                        state = _DATA
                    else:
                        state = _TRAILER
                elif line == b"" or line == b"\r":
                    self._state = _DONE
                    return PARSED, pos
                else:
                    self._trailer_bytes += len(line) + 1
                    if self._trailer_bytes > _MAX_TRAILER:
                        self._state = _FAILED
                        return INVALID, pos
        self._state = state
        return NEED_MORE, end


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (without its LF), or -1."""
    if len(line) > _MAX_SIZE_LINE:
        return -1
    if line[-1:] == b"\r":
        line = line[:-1]
    size = line
    for i, byte in enumerate(line):
        if byte not in _HEX:
            if byte not in b" \t;":
                return -1
            size = line[:i]
            break
    if not size or len(size) > 16:
        return -1
    return int(size, 16)


def _size_prefix_error(part: bytes) -> bool:
    """Whether part cannot begin a chunk-size line."""
    for i, byte in enumerate(part):
        if byte not in _HEX:
            return i == 0 or byte not in b" \t;\r"
        if i >= 16:
            return True
    return False
