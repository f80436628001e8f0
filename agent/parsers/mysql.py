"""MySQL / MariaDB client/server protocol, from captured bytes.

The stream of each direction is a run of packets: a 3-byte little-endian
payload length, a 1-byte sequence id, the payload.  A payload of 0xffffff
bytes continues in the next packet.  The client starts each command with
sequence id 0; the server's answer counts on from 1.

Levels, all pure and never raising:
- parse_packet(data, partial) frames one logical packet (continuations
  joined) -> (status, Packet, consumed, reason), statuses and the meaning
  of consumed as in agent.parsers.postgres (NEED_MORE: consumed is the total
  needed as far as known; partial=True: a truncated packet is PARSED with
  packet.truncated and consumed its declared size, which may exceed
  len(data): skip the rest in the stream that follows).
- decode_handshake / decode_handshake_response / decode_command /
  decode_response decode a payload -> (status, message, reason).
- parse_command(data) frames and decodes one client command.
- ResponseReader(command, capabilities) follows a server's answer across
  reads (OK, ERR, result sets with their column definitions and rows,
  COM_STMT_PREPARE_OK with its parameter and column definitions) without
  keeping rows, and says where it ends.

Secrets are not kept: the auth response in HandshakeResponse, parameter
values of COM_STMT_EXECUTE and COM_STMT_SEND_LONG_DATA, row data.  ERR
messages can quote literal values: Response.message is sensitive.
"""
from __future__ import annotations

from agent.parsers import INVALID, NEED_MORE, PARSED

MAX_PAYLOAD = 0xFFFFFF

# Capability flags (lower 32 bits as on the wire; MariaDB's extended
# capabilities are passed shifted left by 32).
CLIENT_LONG_PASSWORD = 0x1          # CLIENT_MYSQL in MariaDB's handshake
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_TRANSACTIONS = 0x2000
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_MULTI_RESULTS = 0x20000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_CONNECT_ATTRS = 0x100000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x200000
CLIENT_SESSION_TRACK = 0x800000
CLIENT_DEPRECATE_EOF = 0x1000000
CLIENT_QUERY_ATTRIBUTES = 0x8000000
MARIADB_CLIENT_PROGRESS = 1 << 32
MARIADB_CLIENT_CACHE_METADATA = 1 << 36

SERVER_STATUS_IN_TRANS = 0x1
SERVER_MORE_RESULTS_EXISTS = 0x8

COM_SLEEP = 0x00
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PROCESS_KILL = 0x0C
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F
COM_STMT_BULK_EXECUTE = 0xFA   # MariaDB

COMMAND_NAMES = {
    COM_SLEEP: "COM_SLEEP", COM_QUIT: "COM_QUIT", COM_INIT_DB: "COM_INIT_DB",
    COM_QUERY: "COM_QUERY", COM_FIELD_LIST: "COM_FIELD_LIST",
    0x05: "COM_CREATE_DB", 0x06: "COM_DROP_DB", 0x07: "COM_REFRESH",
    0x08: "COM_SHUTDOWN", COM_STATISTICS: "COM_STATISTICS",
    0x0A: "COM_PROCESS_INFO", 0x0B: "COM_CONNECT", COM_PROCESS_KILL: "COM_PROCESS_KILL",
    0x0D: "COM_DEBUG", COM_PING: "COM_PING", 0x0F: "COM_TIME", 0x10: "COM_DELAYED_INSERT",
    COM_CHANGE_USER: "COM_CHANGE_USER", 0x12: "COM_BINLOG_DUMP", 0x13: "COM_TABLE_DUMP",
    0x14: "COM_CONNECT_OUT", 0x15: "COM_REGISTER_SLAVE",
    COM_STMT_PREPARE: "COM_STMT_PREPARE", COM_STMT_EXECUTE: "COM_STMT_EXECUTE",
    COM_STMT_SEND_LONG_DATA: "COM_STMT_SEND_LONG_DATA", COM_STMT_CLOSE: "COM_STMT_CLOSE",
    COM_STMT_RESET: "COM_STMT_RESET", COM_SET_OPTION: "COM_SET_OPTION",
    COM_STMT_FETCH: "COM_STMT_FETCH", 0x1D: "COM_DAEMON", 0x1E: "COM_BINLOG_DUMP_GTID",
    COM_RESET_CONNECTION: "COM_RESET_CONNECTION", COM_STMT_BULK_EXECUTE:
    "COM_STMT_BULK_EXECUTE",
}
# Commands the server does not answer.
NO_RESPONSE = frozenset((COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA))

_LE = int.from_bytes


class Packet:
    """One logical packet: seq is the first physical packet's sequence id,
    length the stream bytes it occupies (headers included), more True when
    partial framing stopped at a 0xffffff packet whose continuation was not
    seen (skip the next packet too)."""

    __slots__ = ("seq", "payload", "length", "truncated", "more")

    def __init__(self, seq, payload, length, truncated=False, more=False):
        self.seq = seq
        self.payload = payload
        self.length = length
        self.truncated = truncated
        self.more = more

    def __repr__(self) -> str:
        return f"Packet(seq={self.seq}, {len(self.payload)} bytes)"


def parse_packet_header(data: bytes):
    """(status, payload length, sequence id, reason) from the first 4 bytes."""
    if len(data) < 4:
        return NEED_MORE, -1, -1, ""
    return PARSED, _LE(data[:3], "little"), data[3], ""


def parse_packet(data: bytes, partial: bool = False, max_payload: int = 1 << 30):
    """One logical packet at the start of data."""
    n = len(data)
    if n < 4:
        return NEED_MORE, None, 4, ""
    length = _LE(data[:3], "little")
    seq = data[3]
    if length < MAX_PAYLOAD and 4 + length <= n:   # the common case
        return PARSED, Packet(seq, data[4:4 + length], 4 + length), 4 + length, ""
    pos = 0
    parts = []
    expect_seq = seq
    while True:
        if n - pos < 4:
            if partial:
                return PARSED, Packet(seq, b"".join(parts), pos, True, True), pos, ""
            return NEED_MORE, None, pos + 4, ""
        length = _LE(data[pos:pos + 3], "little")
        if data[pos + 3] != expect_seq:
            return INVALID, None, 0, "bad_sequence"
        end = pos + 4 + length
        if end > n:
            if partial:
                parts.append(data[pos + 4:n])
                return PARSED, Packet(seq, b"".join(parts), end, True,
                                      length == MAX_PAYLOAD), end, ""
            return NEED_MORE, None, end, ""
        parts.append(data[pos + 4:end])
        pos = end
        if length < MAX_PAYLOAD:
            return PARSED, Packet(seq, b"".join(parts), pos), pos, ""
        if pos > max_payload:
            return INVALID, None, 0, "too_large"
        expect_seq = (expect_seq + 1) & 0xFF


def _lenenc(data, pos):
    """(value, next position) of a length-encoded integer, or (-1, -1)."""
    if pos >= len(data):
        return -1, -1
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None or pos + 1 + size > len(data):
        return -1, -1
    return _LE(data[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def _cstr(data, pos):
    nul = data.find(b"\0", pos)
    if nul < 0:
        return None, -1
    return data[pos:nul].decode("utf-8", "replace"), nul + 1


# -------------------------------------------------------------- handshake

class Handshake:
    """The server's greeting (protocol 10).  version is the server's version
    string with MariaDB's "5.5.5-" replication prefix removed; mariadb is
    True for MariaDB servers; capabilities holds MariaDB's extended flags
    shifted left by 32."""

    __slots__ = ("protocol", "version", "mariadb", "connection_id", "capabilities",
                 "charset", "status", "auth_plugin")

    def __init__(self, protocol, version, mariadb, connection_id, capabilities, charset,
                 status, auth_plugin):
        self.protocol = protocol
        self.version = version
        self.mariadb = mariadb
        self.connection_id = connection_id
        self.capabilities = capabilities
        self.charset = charset
        self.status = status
        self.auth_plugin = auth_plugin

    def __repr__(self) -> str:
        return f"Handshake({self.version!r})"


def decode_handshake(payload: bytes):
    """(status, Handshake | Response (an ERR greeting) | None, reason)."""
    if not payload:
        return INVALID, None, "empty"
    if payload[0] == 0xFF:
        return decode_response(payload, CLIENT_PROTOCOL_41)
    if payload[0] != 10:
        return INVALID, None, "bad_protocol"
    version, pos = _cstr(payload, 1)
    if pos < 0 or pos + 13 > len(payload) or not version.isprintable():
        return INVALID, None, "bad_handshake"
    connection_id = _LE(payload[pos:pos + 4], "little")
    pos += 13  # connection id, 8 bytes of scramble, filler
    caps = _LE(payload[pos:pos + 2], "little")
    pos += 2
    charset = status = 0
    plugin = None
    if len(payload) >= pos + 16:
        charset = payload[pos]
        status = _LE(payload[pos + 1:pos + 3], "little")
        caps |= _LE(payload[pos + 3:pos + 5], "little") << 16
        scramble_len = payload[pos + 5]
        if not caps & CLIENT_LONG_PASSWORD:  # MariaDB: extended capabilities
            caps |= _LE(payload[pos + 12:pos + 16], "little") << 32
        pos += 16
        if caps & CLIENT_SECURE_CONNECTION:
            pos += max(13, scramble_len - 8)
        if caps & CLIENT_PLUGIN_AUTH and pos < len(payload):
            plugin = payload[pos:].split(b"\0", 1)[0].decode("ascii", "replace")
    mariadb = "mariadb" in version.lower()
    if version.startswith("5.5.5-"):
        version = version[6:]
    return PARSED, Handshake(10, version, mariadb, connection_id, caps, charset, status,
                             plugin), ""


class HandshakeResponse:
    """The client's login: capabilities (MariaDB extended flags shifted left
    by 32), user, database (None without CLIENT_CONNECT_WITH_DB),
    auth_plugin, attributes (connection attributes such as _client_name and
    program_name).  ssl_request is True for the short packet a client sends
    before TLS; the rest of the connection is then encrypted.  The auth
    response is never kept."""

    __slots__ = ("capabilities", "max_packet", "charset", "user", "database", "auth_plugin",
                 "attributes", "ssl_request")

    def __init__(self, capabilities, max_packet, charset, user=None, database=None,
                 auth_plugin=None, attributes=None, ssl_request=False):
        self.capabilities = capabilities
        self.max_packet = max_packet
        self.charset = charset
        self.user = user
        self.database = database
        self.auth_plugin = auth_plugin
        self.attributes = attributes or {}
        self.ssl_request = ssl_request

    def __repr__(self) -> str:
        return f"HandshakeResponse(user={self.user!r}, database={self.database!r})"


def decode_handshake_response(payload: bytes):
    """(status, HandshakeResponse | None, reason) of a HandshakeResponse41
    or SSLRequest payload."""
    if len(payload) < 32:
        return INVALID, None, "short"
    caps = _LE(payload[:4], "little")
    if not caps & CLIENT_PROTOCOL_41:
        return INVALID, None, "old_protocol"
    if payload[13:23] != bytes(10):
        return INVALID, None, "bad_filler"
    if not caps & CLIENT_LONG_PASSWORD:
        caps |= _LE(payload[28:32], "little") << 32
    m = HandshakeResponse(caps, _LE(payload[4:8], "little"), payload[8])
    if len(payload) == 32:
        if not caps & CLIENT_SSL:
            return INVALID, None, "short"
        m.ssl_request = True
        return PARSED, m, ""
    m.user, pos = _cstr(payload, 32)
    if pos < 0:
        return INVALID, None, "bad_user"
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        size, pos = _lenenc(payload, pos)
    elif caps & CLIENT_SECURE_CONNECTION:
        size = payload[pos] if pos < len(payload) else -1
        pos += 1
    else:
        nul = payload.find(b"\0", pos)
        size = -1 if nul < 0 else nul - pos + 1
    if size < 0 or pos + size > len(payload):
        return INVALID, None, "bad_auth_response"
    pos += size
    if caps & CLIENT_CONNECT_WITH_DB and pos < len(payload):
        m.database, pos = _cstr(payload, pos)
        if pos < 0:
            return INVALID, None, "bad_database"
    if caps & CLIENT_PLUGIN_AUTH and pos < len(payload):
        m.auth_plugin, pos = _cstr(payload, pos)
        if pos < 0:
            return INVALID, None, "bad_auth_plugin"
    if caps & CLIENT_CONNECT_ATTRS and 0 <= pos < len(payload):
        size, pos = _lenenc(payload, pos)
        end = pos + size
        if size < 0 or end > len(payload):
            return INVALID, None, "bad_attributes"
        while pos < end:
            klen, pos = _lenenc(payload, pos)
            if klen < 0 or pos + klen > end:
                return INVALID, None, "bad_attributes"
            key = payload[pos:pos + klen].decode("utf-8", "replace")
            pos += klen
            vlen, pos = _lenenc(payload, pos)
            if vlen < 0 or pos + vlen > end:
                return INVALID, None, "bad_attributes"
            m.attributes[key] = payload[pos:pos + vlen].decode("utf-8", "replace")
            pos += vlen
    return PARSED, m, ""


def looks_like_mysql_handshake(data: bytes) -> bool:
    """Cheap check: a server greeting (protocol 10) at the start of data."""
    if len(data) < 6 or data[3] != 0 or data[4] != 10:
        return False
    length = _LE(data[:3], "little")
    return 30 <= length <= 1024 and 0x30 <= data[5] <= 0x39


def looks_like_greeting_payload(data: bytes) -> bool:
    """A server greeting's payload without its packet header: what a client
    that reads the 4-byte header and the payload with separate calls
    (Connector/Python) reads second.  Protocol 10, then a version string
    ("8.0.36", "5.5.5-10.11.6-MariaDB") ended by NUL."""
    if len(data) < 40 or data[0] != 10 or not 0x31 <= data[1] <= 0x39:
        return False
    end = data.find(b"\0", 2, 64)
    return end > 2 and data[2:end].isascii() and b"." in data[2:end]


# --------------------------------------------------------------- commands

class Command:
    """A client command.  query for COM_QUERY / COM_STMT_PREPARE (the
    prefix when truncated), schema for COM_INIT_DB, statement_id for the
    COM_STMT_* commands that name one.  Parameter values are not kept."""

    __slots__ = ("code", "name", "query", "schema", "statement_id", "length", "truncated")

    def __init__(self, code, length, truncated=False):
        self.code = code
        self.name = COMMAND_NAMES.get(code, "COM_UNKNOWN")
        self.query = self.schema = self.statement_id = None
        self.length = length
        self.truncated = truncated

    def __repr__(self) -> str:
        return f"Command({self.name})"


def decode_command(payload: bytes, capabilities: int = 0, truncated: bool = False,
                   length: int = -1):
    """(status, Command | None, reason) of a command payload (sequence id 0)."""
    if not payload:
        return INVALID, None, "empty"
    code = payload[0]
    if code not in COMMAND_NAMES:
        return INVALID, None, "bad_command"
    m = Command(code, length if length >= 0 else len(payload) + 4, truncated)
    if code == COM_QUERY or code == COM_STMT_PREPARE:
        pos = 1
        if code == COM_QUERY and capabilities & CLIENT_QUERY_ATTRIBUTES:
            count, pos = _lenenc(payload, 1)
            sets, pos = _lenenc(payload, pos)
            if count != 0 or pos < 0:
                # Query attributes with values: the query follows typed
                # values this parser does not walk.
                return PARSED, m, "query_attributes"
        m.query = payload[pos:].decode("utf-8", "replace")
    elif code == COM_INIT_DB:
        m.schema = payload[1:].decode("utf-8", "replace")
    elif code in (COM_STMT_EXECUTE, COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH,
                  COM_STMT_SEND_LONG_DATA, COM_STMT_BULK_EXECUTE):
        if len(payload) < 5:
            if truncated:
                return PARSED, m, ""
            return INVALID, None, "short"
        m.statement_id = _LE(payload[1:5], "little")
        if not truncated and ((code == COM_STMT_CLOSE or code == COM_STMT_RESET)
                              and len(payload) != 5
                              or code == COM_STMT_EXECUTE and len(payload) < 10
                              or code == COM_STMT_FETCH and len(payload) != 9):
            return INVALID, None, "bad_length"
    elif code in (COM_QUIT, COM_PING, COM_STATISTICS, COM_RESET_CONNECTION) \
            and len(payload) != 1 and not truncated:
        return INVALID, None, "bad_length"
    return PARSED, m, ""


def parse_command(data: bytes, capabilities: int = 0, partial: bool = False):
    """Frame and decode one client command: (status, Command, consumed, reason)."""
    status, packet, consumed, reason = parse_packet(data, partial)
    if status != PARSED:
        if status == NEED_MORE and len(data) >= 5 and (
                data[3] != 0 or data[4] not in COMMAND_NAMES):
            return INVALID, None, 0, "bad_command"
        return status, None, consumed, reason
    if packet.seq != 0:
        return INVALID, None, 0, "bad_sequence"
    status, m, reason = decode_command(packet.payload, capabilities, packet.truncated,
                                       packet.length)
    if status != PARSED:
        return status, None, 0, reason
    return PARSED, m, consumed, reason


def looks_like_mysql_command(data: bytes) -> bool:
    """Cheap check: a command packet (sequence 0, known command byte, and
    for COM_QUERY / COM_STMT_PREPARE text-looking bytes) at the start of data."""
    if len(data) < 5 or data[3] != 0:
        return False
    length = _LE(data[:3], "little")
    code = data[4]
    if length == 0 or code not in COMMAND_NAMES:
        return False
    if code == COM_QUERY or code == COM_STMT_PREPARE:
        first = data[5:6]
        return length >= 2 and (not first or first.isascii() and (
            first.isalpha() or first in b" \t\r\n(/-"))
    if code in (COM_QUIT, COM_PING, COM_STATISTICS, COM_RESET_CONNECTION):
        return length == 1
    if code in (COM_STMT_CLOSE, COM_STMT_RESET):
        return length == 5
    return code in (COM_INIT_DB, COM_STMT_EXECUTE, COM_STMT_FETCH, COM_STMT_SEND_LONG_DATA,
                    COM_SET_OPTION, COM_FIELD_LIST, COM_CHANGE_USER)


# -------------------------------------------------------------- responses

class Response:
    """A server's answer to one command.  kind: "ok", "error", "eof",
    "resultset", "prepare_ok", "local_infile", "text" (COM_STATISTICS) or
    "other".  For errors: error_code, sql_state (5 characters, None when
    the ERR has no '#' marker) and message (SENSITIVE: can quote literal
    values).  For result sets: columns and rows (summed over the result sets
    of a multi-result answer, result_sets counting them).  For prepare_ok:
    statement_id, num_params, num_columns."""

    __slots__ = ("kind", "affected_rows", "last_insert_id", "status_flags", "warnings",
                 "error_code", "sql_state", "message", "columns", "rows", "result_sets",
                 "statement_id", "num_params", "num_columns")
    sensitive = ("message",)

    def __init__(self, kind):
        self.kind = kind
        self.affected_rows = self.last_insert_id = self.error_code = None
        self.sql_state = self.message = self.statement_id = None
        self.num_params = self.num_columns = None
        self.status_flags = self.warnings = 0
        self.columns = self.rows = self.result_sets = 0

    def __repr__(self) -> str:
        if self.kind == "error":
            return f"Response(error {self.error_code} {self.sql_state})"
        return f"Response({self.kind})"


def _decode_ok(payload, capabilities, m):
    """Fill m from an OK (or 0xfe OK-as-EOF) payload; False if malformed."""
    m.affected_rows, pos = _lenenc(payload, 1)
    if pos < 0:
        return False
    m.last_insert_id, pos = _lenenc(payload, pos)
    if pos < 0:
        return False
    if capabilities & CLIENT_PROTOCOL_41 or capabilities == 0:
        if pos + 4 > len(payload):
            return pos == len(payload) and capabilities == 0
        m.status_flags = _LE(payload[pos:pos + 2], "little")
        m.warnings = _LE(payload[pos + 2:pos + 4], "little")
    return True


def decode_response(payload: bytes, capabilities: int = CLIENT_PROTOCOL_41):
    """(status, Response, reason) of a lone OK, ERR or EOF payload."""
    if not payload:
        return INVALID, None, "empty"
    first = payload[0]
    if first == 0xFF:
        m = Response("error")
        if len(payload) < 3:
            return INVALID, None, "short"
        m.error_code = _LE(payload[1:3], "little")
        if payload[3:4] == b"#" and len(payload) >= 9:
            m.sql_state = payload[4:9].decode("ascii", "replace")
            m.message = payload[9:].decode("utf-8", "replace")
        else:
            m.message = payload[3:].decode("utf-8", "replace")
        return PARSED, m, ""
    if first == 0x00:
        m = Response("ok")
        if not _decode_ok(payload, capabilities, m):
            return INVALID, None, "bad_ok"
        return PARSED, m, ""
    if first == 0xFE and len(payload) < 9:
        m = Response("eof")
        if len(payload) >= 5:
            m.warnings = _LE(payload[1:3], "little")
            m.status_flags = _LE(payload[3:5], "little")
        return PARSED, m, ""
    if first == 0xFE:
        m = Response("ok")  # OK with an EOF header (CLIENT_DEPRECATE_EOF)
        if not _decode_ok(payload, capabilities, m):
            return INVALID, None, "bad_ok"
        return PARSED, m, ""
    return INVALID, None, "not_ok_err_eof"


# ResponseReader states
_FIRST, _DEFS, _DEFS_EOF, _ROWS, _DONE, _FAILED = range(6)
# Packets larger than this are skipped by length rather than buffered, unless
# they must be decoded (a terminator or an error is always small).
_DECODE_LIMIT = 1 << 16


class ResponseReader:
    """Follows the server's answer to one command across reads.

    feed(data) -> (status, consumed): PARSED when the answer ends inside
    data (consumed: the bytes of data up to its end; self.response then
    holds the Response); NEED_MORE having consumed all of data; INVALID when
    the bytes cannot be the answer.  Rows and column definitions are
    skipped by length and counted, never buffered.  capabilities: the
    client's HandshakeResponse capabilities (they decide whether EOF
    packets follow definitions, and MariaDB's metadata cache).
    """

    __slots__ = ("command", "capabilities", "response", "_state", "_defs", "_phase",
                 "_buf", "_skip", "_continued", "_pending_columns")

    def __init__(self, command: int, capabilities: int = CLIENT_PROTOCOL_41):
        self.command = command
        self.capabilities = capabilities
        self.response = None
        self._state = _DONE if command in NO_RESPONSE else _FIRST
        if command in NO_RESPONSE:
            self.response = Response("other")
        elif command == COM_STMT_FETCH:
            self.response = Response("resultset")
            self._state = _ROWS
        self._defs = 0
        self._phase = 0          # prepare_ok: 0 params, 1 columns; result set: 1
        self._buf = b""
        self._skip = 0
        self._continued = False  # the next packet continues a 0xffffff one
        self._pending_columns = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes):
        state = self._state
        if state == _DONE:
            return PARSED, 0
        if state == _FAILED:
            return INVALID, 0
        base = len(self._buf)
        buf = self._buf + data if base else data
        self._buf = b""
        pos = 0
        n = len(buf)
        while True:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                if self._skip:
                    return NEED_MORE, len(data)
            if self._state == _DONE:
                return PARSED, pos - base
            if n - pos < 5:
                self._buf = buf[pos:]
                return NEED_MORE, len(data)
            length = _LE(buf[pos:pos + 3], "little")
            first = buf[pos + 4]
            if self._continued:
                self._continued = length == MAX_PAYLOAD
                self._skip = 4 + length
                continue
            if length == 0:
                self._fail()
                return INVALID, pos - base
            state = self._state
            needs_decode = (state == _FIRST or state == _DEFS_EOF or first == 0xFF
                            or (first == 0xFE and length < MAX_PAYLOAD
                                and (length < 9 or self.capabilities & CLIENT_DEPRECATE_EOF))
                            and state == _ROWS)
            if not needs_decode or length > _DECODE_LIMIT:
                if state == _DEFS:
                    self._defs -= 1
                    if self._defs == 0:
                        self._end_defs()
                elif state == _ROWS:
                    self.response.rows += 1
                else:
                    self._fail()
                    return INVALID, pos - base
                self._continued = length == MAX_PAYLOAD
                self._skip = 4 + length
                continue
            end = pos + 4 + length
            if end > n:
                self._buf = buf[pos:]
                return NEED_MORE, len(data)
            if not self._packet(buf[pos + 4:end]):
                self._fail()
                return INVALID, pos - base
            pos = end

    def _fail(self):
        self._state = _FAILED

    def _packet(self, payload: bytes) -> bool:
        """Handle one packet that needs decoding; False when invalid."""
        state = self._state
        first = payload[0]
        caps = self.capabilities
        if first == 0xFF:
            status, m, _ = decode_response(payload, caps)
            if status != PARSED:
                return False
            if m.error_code == 0xFFFF and caps & MARIADB_CLIENT_PROGRESS:
                return True  # progress report, not the answer
            if self.response is not None and self.response.kind == "resultset":
                r = self.response
                r.kind, r.error_code, r.sql_state, r.message = \
                    "error", m.error_code, m.sql_state, m.message
            else:
                self.response = m
            self._state = _DONE
            return True
        if state == _DEFS_EOF:
            if first != 0xFE or len(payload) >= 9:
                return False
            self._after_defs_eof()
            return True
        if state == _ROWS:
            status, m, _ = decode_response(payload, caps)
            if status != PARSED:
                return False
            r = self.response
            r.status_flags, r.warnings = m.status_flags, m.warnings
            if m.kind == "ok":
                r.affected_rows, r.last_insert_id = m.affected_rows, m.last_insert_id
            if m.status_flags & SERVER_MORE_RESULTS_EXISTS:
                self._state = _FIRST
            else:
                self._state = _DONE
            return True
        # _FIRST
        command = self.command
        if command == COM_STMT_PREPARE and first == 0x00:
            if len(payload) < 12:
                return False
            r = self.response = Response("prepare_ok")
            r.statement_id = _LE(payload[1:5], "little")
            r.num_columns = _LE(payload[5:7], "little")
            r.num_params = _LE(payload[7:9], "little")
            r.warnings = _LE(payload[10:12], "little")
            self._phase = 0
            self._pending_columns = r.num_columns
            self._start_defs(r.num_params)
            return True
        if first == 0x00 or first == 0xFE:
            status, m, _ = decode_response(payload, caps)
            if status != PARSED:
                return False
            if command == COM_STATISTICS:
                m = Response("text")
            prev = self.response
            if prev is not None and prev.kind == "resultset":
                # The OK ending a multi-result answer (e.g. a CALL).
                prev.affected_rows, prev.status_flags = m.affected_rows, m.status_flags
                m = prev
            self.response = m
            self._state = _FIRST if m.status_flags & SERVER_MORE_RESULTS_EXISTS \
                and m.kind != "text" else _DONE
            return True
        if command == COM_STATISTICS:
            self.response = Response("text")
            self._state = _DONE
            return True
        if first == 0xFB and command == COM_QUERY:
            self.response = Response("local_infile")
            self._state = _DONE
            return True
        if command not in (COM_QUERY, COM_STMT_EXECUTE, COM_FIELD_LIST):
            self.response = Response("other")
            self._state = _DONE
            return True
        if command == COM_FIELD_LIST:
            # Column definitions then EOF; the first one is in hand.
            r = self.response = Response("resultset")
            r.columns = 1
            self._phase = 1
            self._state = _ROWS
            return True
        count, pos = _lenenc(payload, 0)
        if count <= 0 or count > 4096:
            return False
        r = self.response
        if r is None or r.kind != "resultset":
            r = self.response = Response("resultset")
        r.columns = count
        r.result_sets += 1
        metadata = True
        if caps & MARIADB_CLIENT_CACHE_METADATA and pos < len(payload):
            metadata = payload[pos] != 0
        self._phase = 1
        if metadata:
            self._start_defs(count)
        else:
            self._state = _ROWS
        return True

    def _start_defs(self, count):
        if count:
            self._defs = count
            self._state = _DEFS
        else:
            self._end_defs(skip_eof=True)

    def _end_defs(self, skip_eof=False):
        if not skip_eof and not self.capabilities & CLIENT_DEPRECATE_EOF:
            self._state = _DEFS_EOF
        else:
            self._after_defs_eof()

    def _after_defs_eof(self):
        if self._phase == 0:           # prepare_ok: parameters done
            self._phase = 1
            count = self._pending_columns
            if count:
                self._defs = count
                self._state = _DEFS
            else:
                self._state = _DONE
        elif self.response.kind == "prepare_ok":
            self._state = _DONE
        else:
            self._state = _ROWS


def read_response(data: bytes, command: int, capabilities: int = CLIENT_PROTOCOL_41):
    """The answer to command at the start of data, in one call:
    (status, Response | None, consumed, reason)."""
    reader = ResponseReader(command, capabilities)
    status, consumed = reader.feed(data)
    if status == PARSED:
        return PARSED, reader.response, consumed, ""
    if status == NEED_MORE:
        return NEED_MORE, None, len(data) + 1, ""
    return INVALID, None, 0, "bad_response"
