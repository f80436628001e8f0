"""PostgreSQL frontend/backend protocol v3 messages, from captured bytes.

Every function takes the bytes of one connection direction, starting at a
message boundary, and returns (status, message, consumed, reason):

- PARSED: message is the decoded message and consumed the number of stream
  bytes it occupies (its declared length plus the type byte).  With
  partial=True a message whose header is complete but whose body is not
  captured in full is still PARSED, with message.truncated set, the fields
  that fit in data decoded, and consumed still the declared size: consumed
  may then exceed len(data), and the caller skips the difference in the
  stream that follows.  This is how a capture that holds only the first N
  bytes of a long Query or DataRow keeps its framing.
- NEED_MORE: data is a valid prefix; consumed is how many bytes the message
  needs in total (at least len(data) + 1), message is None.
- INVALID: the bytes cannot be this protocol; reason says why, consumed 0.

Secrets are never kept: Bind parameter values, password and SASL messages,
the cancel key.  ErrorResponse/NoticeResponse messages can quote literals
from the query: ErrorResponse.message is marked sensitive and must not be
exported unredacted.  Nothing here raises for bad input.
"""
from __future__ import annotations

from agent.parsers import INVALID, NEED_MORE, PARSED

_U32 = int.from_bytes

# The server rejects a startup packet longer than this
# (MAX_STARTUP_PACKET_LENGTH in src/include/libpq/pqcomm.h).
MAX_STARTUP_LENGTH = 10000
# The bytes of a syscall the kernel classifies by (bpf/classify.h).
_CLASSIFY_BYTES = 32
# PQ_LARGE_MESSAGE_LIMIT: the server never accepts a message longer than
# 1 GiB - 1; a declared length beyond it is not PostgreSQL.
MAX_MESSAGE_LENGTH = 0x3FFFFFFF

PROTOCOL_3 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Frontend message types (after startup) and backend message types.  The
# value is the exact declared length for fixed-size messages, else 0.
FRONTEND_TYPES = {
    b"Q"[0]: 0, b"P"[0]: 0, b"B"[0]: 0, b"E"[0]: 0, b"D"[0]: 0, b"C"[0]: 0,
    b"S"[0]: 4, b"H"[0]: 4, b"X"[0]: 4, b"c"[0]: 4,
    b"d"[0]: 0, b"f"[0]: 0, b"F"[0]: 0, b"p"[0]: 0,
}
BACKEND_TYPES = {
    b"R"[0]: 0, b"K"[0]: 0, b"S"[0]: 0, b"Z"[0]: 5, b"T"[0]: 0, b"D"[0]: 0,
    b"C"[0]: 0, b"E"[0]: 0, b"N"[0]: 0, b"A"[0]: 0, b"t"[0]: 0, b"G"[0]: 0,
    b"H"[0]: 0, b"W"[0]: 0, b"d"[0]: 0, b"V"[0]: 0, b"v"[0]: 0,
    b"I"[0]: 4, b"n"[0]: 4, b"1"[0]: 4, b"2"[0]: 4, b"3"[0]: 4, b"s"[0]: 4,
    b"c"[0]: 4,
}
# Smallest valid declared length of variable-size messages, per side.
_FRONTEND_MIN = {b"Q"[0]: 5, b"P"[0]: 8, b"B"[0]: 12, b"E"[0]: 9, b"D"[0]: 6, b"C"[0]: 6,
                 b"f"[0]: 5}
_BACKEND_MIN = {b"K"[0]: 12, b"R"[0]: 8, b"E"[0]: 5, b"N"[0]: 5, b"C"[0]: 5, b"T"[0]: 6,
                b"D"[0]: 6, b"S"[0]: 6}


class StartupMessage:
    """The first message of a plain connection; protocol like "3.0"; the
    other fields are None when absent; options holds every parameter
    (libpq sends e.g. client_encoding, DateStyle, options)."""

    __slots__ = ("user", "database", "application_name", "protocol", "options", "length")

    def __init__(self, user, database, application_name, protocol, options, length):
        self.user = user
        self.database = database
        self.application_name = application_name
        self.protocol = protocol
        self.options = options
        self.length = length

    def __repr__(self) -> str:
        return f"StartupMessage(user={self.user!r}, database={self.database!r})"


class SpecialRequest:
    """SSLRequest, GSSENCRequest or CancelRequest (kind "ssl", "gssenc",
    "cancel").  A cancel keeps the backend pid, never its secret key.  After
    "ssl" or "gssenc" the server answers one byte, 'S' or 'G' (encryption
    follows: plaintext is only visible through TLS uprobes) or 'N' (a
    StartupMessage follows in clear)."""

    __slots__ = ("kind", "pid", "length")

    def __init__(self, kind, pid, length):
        self.kind = kind
        self.pid = pid
        self.length = length

    def __repr__(self) -> str:
        return f"SpecialRequest({self.kind})"


class Message:
    """Any message: type is its type letter ("S" for Sync, "D" for a
    DataRow...), length the declared stream size including the type byte.
    Subclasses add decoded fields."""

    __slots__ = ("type", "length", "truncated")

    def __init__(self, type, length, truncated=False):
        self.type = type
        self.length = length
        self.truncated = truncated

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.type!r}, {self.length})"


class Query(Message):
    """Simple query 'Q': text may hold several statements."""
    __slots__ = ("text",)


class Parse(Message):
    """'P': statement is "" for the unnamed statement; param_type_count is
    -1 when truncated before it."""
    __slots__ = ("statement", "query", "param_type_count")


class Bind(Message):
    """'B': binds a statement to a portal ("" = unnamed).  Parameter values
    are deliberately not kept.  param_formats and result_formats are tuples
    of 0 (text) / 1 (binary); param_count -1 when truncated before it."""
    __slots__ = ("portal", "statement", "param_count", "param_formats", "result_formats")


class Execute(Message):
    """'E': runs a portal; max_rows 0 means all rows."""
    __slots__ = ("portal", "max_rows")


class Describe(Message):
    """'D' (frontend) or Close 'C' (frontend): kind "S" statement or "P" portal."""
    __slots__ = ("kind", "name")


class Close(Describe):
    __slots__ = ()


class CommandComplete(Message):
    """'C' (backend): tag like "INSERT 0 1"; command its first word and
    rows the row count it reports (None for tags without one)."""
    __slots__ = ("tag", "command", "rows")


class ErrorResponse(Message):
    """'E' (backend) or NoticeResponse 'N' (is_notice).  severity is the
    non-localised one (field V) when sent, else field S; code the SQLSTATE.
    message (field M) is SENSITIVE: servers quote literal values in it
    (duplicate keys, bad input syntax); export it only redacted."""
    __slots__ = ("severity", "code", "message", "is_notice")
    sensitive = ("message",)


class ReadyForQuery(Message):
    """'Z': status "I" idle, "T" in a transaction, "E" in a failed transaction."""
    __slots__ = ("status",)


class RowDescription(Message):
    """'T' or DataRow 'D' (backend): field_count columns (-1 if truncated)."""
    __slots__ = ("field_count",)


class DataRow(RowDescription):
    __slots__ = ()


class ParameterStatus(Message):
    """'S' (backend): a run-time parameter such as server_version."""
    __slots__ = ("name", "value")


class BackendKeyData(Message):
    """'K': the backend's pid; the cancel secret key is not kept."""
    __slots__ = ("pid",)


class Authentication(Message):
    """'R': code 0 ok, 3 cleartext, 5 MD5, 10 SASL, 11 SASL continue,
    12 SASL final; mechanisms lists SASL mechanisms (code 10)."""
    __slots__ = ("code", "mechanisms")


def _cstr(data, start, end):
    """(text, position after the NUL) of the C string at start, or
    (None, -1) when there is no NUL before end."""
    nul = data.find(b"\0", start, end)
    if nul < 0:
        return None, -1
    return data[start:nul].decode("utf-8", "replace"), nul + 1


def _cstr_partial(data, start, end):
    """As _cstr, but the text up to end when no NUL comes before it."""
    nul = data.find(b"\0", start, end)
    if nul < 0:
        return data[start:end].decode("utf-8", "replace"), -1
    return data[start:nul].decode("utf-8", "replace"), nul + 1


# ---------------------------------------------------------------- startup

def parse_startup(data: bytes):
    """The first message a client sends: (status, StartupMessage |
    SpecialRequest | None, consumed, reason)."""
    n = len(data)
    if n < 4:
        if n and data[0] != 0:
            return INVALID, None, 0, "bad_length"
        return NEED_MORE, None, 8, ""
    length = _U32(data[:4], "big")
    if length < 8 or length > MAX_STARTUP_LENGTH:
        return INVALID, None, 0, "bad_length"
    if n < 8:
        # The code's first two bytes: 3 for protocol 3, 1234 for special.
        if n >= 6 and data[4:6] not in (b"\x00\x03", b"\x04\xd2"):
            return INVALID, None, 0, "bad_protocol"
        return NEED_MORE, None, length, ""
    code = _U32(data[4:8], "big")
    if code >> 16 == 1234:
        if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
            if length != 8:
                return INVALID, None, 0, "bad_length"
            kind = "ssl" if code == SSL_REQUEST_CODE else "gssenc"
            return PARSED, SpecialRequest(kind, None, 8), 8, ""
        if code == CANCEL_REQUEST_CODE:
            # 16 bytes; protocol 3.2 allows a longer key.
            if length < 16 or length > 264:
                return INVALID, None, 0, "bad_length"
            if n < 12:
                return NEED_MORE, None, length, ""
            return PARSED, SpecialRequest("cancel", _U32(data[8:12], "big"), length), length, ""
        return INVALID, None, 0, "bad_protocol"
    if code >> 16 != 3:
        return INVALID, None, 0, "bad_protocol"
    if n < length:
        return NEED_MORE, None, length, ""
    if data[length - 1] != 0:
        return INVALID, None, 0, "bad_startup"
    options = {}
    pos = 8
    end = length - 1
    while pos < end:
        name, pos = _cstr(data, pos, end)
        if pos < 0:
            return INVALID, None, 0, "bad_startup"
        value, pos = _cstr(data, pos, end)
        if pos < 0 or not name:
            return INVALID, None, 0, "bad_startup"
        options[name] = value
    protocol = f"{code >> 16}.{code & 0xFFFF}"
    return PARSED, StartupMessage(options.get("user"), options.get("database"),
                                  options.get("application_name"), protocol, options,
                                  length), length, ""


def looks_like_postgres_startup(data: bytes) -> bool:
    """Cheap check: a StartupMessage (protocol 3.x), SSLRequest,
    GSSENCRequest or CancelRequest at the start of data."""
    if len(data) < 8:
        return False
    length = _U32(data[:4], "big")
    code = _U32(data[4:8], "big")
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        return length == 8
    if code == CANCEL_REQUEST_CODE:
        return 16 <= length <= 264
    if code >> 16 != 3 or not 8 < length <= MAX_STARTUP_LENGTH:
        return False
    # The first parameter name (libpq sends "user" or "database" first), in
    # the bytes the kernel's classifier sees too (bpf/sql.bpf.c,
    # pg_first_name): not empty, ASCII up to its NUL.  Eight bytes alone (a
    # message read in pieces) do not tell yet.
    name = data[8:_CLASSIFY_BYTES].partition(b"\0")[0]
    return name.isascii() if name else len(data) == 8


# ---------------------------------------------------------------- headers

def parse_header(data: bytes, frontend: bool = True):
    """(status, type letter, total stream length, reason) of the message at
    the start of data; only the first 5 bytes are needed, so a caller holding
    the head of a long message can still skip it.  frontend chooses which
    side's message types are valid."""
    if len(data) < 5:
        if data and data[0] not in (FRONTEND_TYPES if frontend else BACKEND_TYPES):
            return INVALID, None, 0, "bad_type"
        return NEED_MORE, None, 5, ""
    kind = data[0]
    fixed = (FRONTEND_TYPES if frontend else BACKEND_TYPES).get(kind)
    if fixed is None:
        return INVALID, None, 0, "bad_type"
    length = _U32(data[1:5], "big")
    if fixed:
        if length != fixed:
            return INVALID, None, 0, "bad_length"
    elif length < (_FRONTEND_MIN if frontend else _BACKEND_MIN).get(kind, 4) \
            or length > MAX_MESSAGE_LENGTH:
        return INVALID, None, 0, "bad_length"
    return PARSED, chr(kind), length + 1, ""


def looks_like_postgres_frontend(data: bytes) -> bool:
    """Cheap check: a frontend message that a client starts a request with
    (Query, Parse, Bind, Execute, Describe, Sync...) at the start of data,
    with a plausible length; for Query and Parse also text-looking bytes."""
    if len(data) < 5:
        return False
    kind = data[0]
    fixed = FRONTEND_TYPES.get(kind)
    if fixed is None:
        return False
    length = _U32(data[1:5], "big")
    if fixed:
        return length == fixed
    if length < _FRONTEND_MIN.get(kind, 4) or length > MAX_MESSAGE_LENGTH:
        return False
    if kind == 0x51:  # 'Q': text starts right away
        first = data[5:6]
        return not first or (first.isascii() and (first.isalpha() or first in b" \t\r\n(/-"))
    return True


def looks_like_postgres_backend(data: bytes) -> bool:
    return parse_header(data, False)[0] == PARSED


# --------------------------------------------------------------- frontend

def _frame(data, types, frontend, partial):
    """(status, kind, total, end, truncated, reason): end is where the
    captured body stops (min(total, len(data)))."""
    status, kind, total, reason = parse_header(data, frontend)
    if status != PARSED:
        return status, None, total, 0, False, reason
    n = len(data)
    if n >= total:
        return PARSED, data[0], total, total, False, ""
    if not partial:
        return NEED_MORE, None, total, 0, False, ""
    return PARSED, data[0], total, n, True, ""


def _message(cls, kind, total, truncated):
    m = cls.__new__(cls)
    m.type = chr(kind)
    m.length = total
    m.truncated = truncated
    return m


def parse_frontend(data: bytes, partial: bool = False):
    """One frontend message (after startup): (status, message, consumed, reason)."""
    status, kind, total, end, truncated, reason = _frame(data, FRONTEND_TYPES, True, partial)
    if status != PARSED:
        return status, None, total, reason
    if kind == 0x51:  # 'Q'
        m = _message(Query, kind, total, truncated)
        m.text, pos = _cstr_partial(data, 5, end)
        if pos < 0 and not truncated:
            return INVALID, None, 0, "bad_query"
        return PARSED, m, total, ""
    if kind == 0x50:  # 'P'
        m = _message(Parse, kind, total, truncated)
        m.statement, pos = _cstr(data, 5, end)
        if pos < 0:
            if not truncated:
                return INVALID, None, 0, "bad_parse"
            m.statement, m.query, m.param_type_count = None, None, -1
            return PARSED, m, total, ""
        m.query, pos = _cstr_partial(data, pos, end)
        m.param_type_count = -1
        if pos >= 0 and pos + 2 <= end:
            count = _U32(data[pos:pos + 2], "big")
            if not truncated and pos + 2 + 4 * count != end:
                return INVALID, None, 0, "bad_parse"
            m.param_type_count = count
        elif not truncated:
            return INVALID, None, 0, "bad_parse"
        return PARSED, m, total, ""
    if kind == 0x42:  # 'B'
        return _bind(data, kind, total, end, truncated)
    if kind == 0x45:  # 'E'
        m = _message(Execute, kind, total, truncated)
        m.portal, pos = _cstr(data, 5, end)
        if pos < 0 or pos + 4 != end:
            if not truncated:
                return INVALID, None, 0, "bad_execute"
            m.max_rows = -1
        else:
            m.max_rows = _U32(data[pos:pos + 4], "big")
        return PARSED, m, total, ""
    if kind == 0x44 or kind == 0x43:  # 'D' Describe, 'C' Close
        m = _message(Describe if kind == 0x44 else Close, kind, total, truncated)
        which = data[5:6]
        if which not in (b"S", b"P"):
            if which or not truncated:
                return INVALID, None, 0, "bad_describe"
            m.kind = m.name = None
            return PARSED, m, total, ""
        m.kind = which.decode()
        m.name, pos = _cstr(data, 6, end)
        if pos != end and not truncated:
            return INVALID, None, 0, "bad_describe"
        return PARSED, m, total, ""
    # Sync, Flush, Terminate, CopyData/Done/Fail, FunctionCall, and 'p'
    # (password, SASL, GSS: secrets): framed, never decoded.
    return PARSED, _message(Message, kind, total, truncated), total, ""


def _bind(data, kind, total, end, truncated):
    m = _message(Bind, kind, total, truncated)
    m.param_count = -1
    m.param_formats = m.result_formats = ()
    m.portal, pos = _cstr(data, 5, end)
    if pos >= 0:
        m.statement, pos = _cstr(data, pos, end)
    else:
        m.statement = None
    if pos < 0 or pos + 2 > end:
        if truncated:
            return PARSED, m, total, ""
        return INVALID, None, 0, "bad_bind"
    nformats = _U32(data[pos:pos + 2], "big")
    pos += 2
    if pos + 2 * nformats + 2 > end:
        if truncated:
            return PARSED, m, total, ""
        return INVALID, None, 0, "bad_bind"
    m.param_formats = tuple(data[pos + 1:pos + 2 * nformats:2]) if nformats else ()
    pos += 2 * nformats
    count = _U32(data[pos:pos + 2], "big")
    pos += 2
    if nformats > 1 and nformats != count:
        return INVALID, None, 0, "bad_bind"
    m.param_count = count
    # Skip the values (never kept), then read the result formats.
    for _ in range(count):
        if pos + 4 > end:
            if truncated:
                return PARSED, m, total, ""
            return INVALID, None, 0, "bad_bind"
        size = _U32(data[pos:pos + 4], "big")
        pos += 4
        if size != 0xFFFFFFFF:  # -1 is NULL
            pos += size
    if pos + 2 > end:
        if truncated:
            return PARSED, m, total, ""
        return INVALID, None, 0, "bad_bind"
    nresult = _U32(data[pos:pos + 2], "big")
    pos += 2
    if pos + 2 * nresult != end:
        if truncated and pos + 2 * nresult > end:
            return PARSED, m, total, ""
        return INVALID, None, 0, "bad_bind"
    m.result_formats = tuple(data[pos + 1:end:2])
    return PARSED, m, total, ""


# ---------------------------------------------------------------- backend

def parse_command_tag(tag: str):
    """(command, rows) of a CommandComplete tag: "INSERT 0 1" -> ("INSERT",
    1), "SELECT 5" -> ("SELECT", 5), "CREATE TABLE" -> ("CREATE TABLE",
    None)."""
    head, sp, last = tag.rpartition(" ")
    if sp and last.isdigit() and len(last) <= 20:
        if head.startswith("INSERT "):
            head = "INSERT"
        return head, int(last)
    return tag, None


def _fields(data, pos, end, truncated=False):
    """The typed fields of an ErrorResponse/NoticeResponse as a dict of
    single-letter code to text; None when malformed.  Truncated: the
    complete fields before end."""
    fields = {}
    while pos < end:
        code = data[pos]
        if code == 0:
            return fields if pos + 1 == end else None
        value, pos = _cstr(data, pos + 1, end)
        if pos < 0:
            return fields if truncated else None
        fields[chr(code)] = value
    return fields if truncated else None


def parse_backend(data: bytes, partial: bool = False):
    """One backend message: (status, message, consumed, reason)."""
    status, kind, total, end, truncated, reason = _frame(data, BACKEND_TYPES, False, partial)
    if status != PARSED:
        return status, None, total, reason
    if kind == 0x44 or kind == 0x54:  # 'D' DataRow, 'T' RowDescription
        m = _message(DataRow if kind == 0x44 else RowDescription, kind, total, truncated)
        m.field_count = _U32(data[5:7], "big") if end >= 7 else -1
        return PARSED, m, total, ""
    if kind == 0x43:  # 'C'
        m = _message(CommandComplete, kind, total, truncated)
        tag, pos = _cstr_partial(data, 5, end)
        if pos != end and not truncated:
            return INVALID, None, 0, "bad_command_complete"
        m.tag = tag
        m.command, m.rows = parse_command_tag(tag)
        return PARSED, m, total, ""
    if kind == 0x5A:  # 'Z'
        m = _message(ReadyForQuery, kind, total, truncated)
        st = data[5:6]
        if st not in (b"I", b"T", b"E"):
            if st or not truncated:
                return INVALID, None, 0, "bad_ready_for_query"
            m.status = None
        else:
            m.status = st.decode()
        return PARSED, m, total, ""
    if kind == 0x45 or kind == 0x4E:  # 'E', 'N'
        m = _message(ErrorResponse, kind, total, truncated)
        fields = _fields(data, 5, end, truncated)
        if fields is None:
            return INVALID, None, 0, "bad_error_response"
        m.severity = fields.get("V") or fields.get("S")
        m.code = fields.get("C")
        m.message = fields.get("M")
        m.is_notice = kind == 0x4E
        return PARSED, m, total, ""
    if kind == 0x53:  # 'S'
        m = _message(ParameterStatus, kind, total, truncated)
        m.name, pos = _cstr(data, 5, end)
        m.value, pos2 = _cstr(data, pos, end) if pos >= 0 else (None, -1)
        if pos2 != end and not truncated:
            return INVALID, None, 0, "bad_parameter_status"
        return PARSED, m, total, ""
    if kind == 0x4B:  # 'K'
        m = _message(BackendKeyData, kind, total, truncated)
        m.pid = _U32(data[5:9], "big") if end >= 9 else None
        return PARSED, m, total, ""
    if kind == 0x52:  # 'R'
        m = _message(Authentication, kind, total, truncated)
        m.code = _U32(data[5:9], "big") if end >= 9 else None
        m.mechanisms = ()
        if m.code == 10:
            names = data[9:end].split(b"\0")
            m.mechanisms = tuple(x.decode("ascii", "replace") for x in names if x)
        elif m.code in (0, 3, 7) and total != 9:
            return INVALID, None, 0, "bad_authentication"
        return PARSED, m, total, ""
    return PARSED, _message(Message, kind, total, truncated), total, ""


def skip_data_rows(data: bytes, pos: int = 0):
    """(rows, position) after the run of complete DataRow messages starting
    at pos: the cheap way through a result set, without objects."""
    rows = 0
    n = len(data)
    while pos + 5 <= n and data[pos] == 0x44:
        length = _U32(data[pos + 1:pos + 5], "big")
        if length < 6 or pos + 1 + length > n:
            break
        pos += 1 + length
        rows += 1
    return rows, pos
