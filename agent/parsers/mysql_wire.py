"""MySQL / MariaDB packets: framing, the protocol's constants and its
length-encoded integers and NUL-ended strings.  The levels above
(agent.parsers.mysql_handshake, agent.parsers.mysql_response and the
commands in agent.parsers.mysql) decode the payloads these frame."""
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


def read_lenenc(data, pos):
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


def read_cstr(data, pos):
    nul = data.find(b"\0", pos)
    if nul < 0:
        return None, -1
    return data[pos:nul].decode("utf-8", "replace"), nul + 1
