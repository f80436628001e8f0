"""MySQL / MariaDB client/server protocol, from captured bytes.

The stream of each direction is a run of packets: a 3-byte little-endian
payload length, a 1-byte sequence id, the payload.  A payload of 0xffffff
bytes continues in the next packet.  The client starts each command with
sequence id 0; the server's answer counts on from 1.

Levels, all pure and never raising, each in its module and all importable
from this one:
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
from agent.parsers.mysql_handshake import (Handshake, HandshakeResponse, decode_handshake,
                                           decode_handshake_response, looks_like_greeting_payload,
                                           looks_like_mysql_handshake)
from agent.parsers.mysql_response import Response, ResponseReader, decode_response, read_response
from agent.parsers.mysql_wire import (_LE, CLIENT_CONNECT_ATTRS, CLIENT_CONNECT_WITH_DB,
                                      CLIENT_DEPRECATE_EOF, CLIENT_LONG_PASSWORD,
                                      CLIENT_MULTI_RESULTS, CLIENT_PLUGIN_AUTH,
                                      CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, CLIENT_PROTOCOL_41,
                                      CLIENT_QUERY_ATTRIBUTES, CLIENT_SECURE_CONNECTION,
                                      CLIENT_SESSION_TRACK, CLIENT_SSL, CLIENT_TRANSACTIONS,
                                      COMMAND_NAMES, COM_CHANGE_USER, COM_FIELD_LIST, COM_INIT_DB,
                                      COM_PING, COM_PROCESS_KILL, COM_QUERY, COM_QUIT,
                                      COM_RESET_CONNECTION, COM_SET_OPTION, COM_SLEEP,
                                      COM_STATISTICS, COM_STMT_BULK_EXECUTE, COM_STMT_CLOSE,
                                      COM_STMT_EXECUTE, COM_STMT_FETCH, COM_STMT_PREPARE,
                                      COM_STMT_RESET, COM_STMT_SEND_LONG_DATA,
                                      MARIADB_CLIENT_CACHE_METADATA, MARIADB_CLIENT_PROGRESS,
                                      MAX_PAYLOAD, NO_RESPONSE, SERVER_MORE_RESULTS_EXISTS,
                                      SERVER_STATUS_IN_TRANS, Packet, parse_packet,
                                      parse_packet_header, read_cstr, read_lenenc)


# Every name callers use, whichever module defines it.
__all__ = [
    'Handshake', 'HandshakeResponse', 'decode_handshake', 'decode_handshake_response',
    'looks_like_greeting_payload', 'looks_like_mysql_handshake', 'Response', 'ResponseReader',
    'decode_response', 'read_response', 'MAX_PAYLOAD', 'CLIENT_LONG_PASSWORD',
    'CLIENT_CONNECT_WITH_DB', 'CLIENT_PROTOCOL_41', 'CLIENT_SSL', 'CLIENT_TRANSACTIONS',
    'CLIENT_SECURE_CONNECTION', 'CLIENT_MULTI_RESULTS', 'CLIENT_PLUGIN_AUTH',
    'CLIENT_CONNECT_ATTRS', 'CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA', 'CLIENT_SESSION_TRACK',
    'CLIENT_DEPRECATE_EOF', 'CLIENT_QUERY_ATTRIBUTES', 'MARIADB_CLIENT_PROGRESS',
    'MARIADB_CLIENT_CACHE_METADATA', 'SERVER_STATUS_IN_TRANS', 'SERVER_MORE_RESULTS_EXISTS',
    'COM_SLEEP', 'COM_QUIT', 'COM_INIT_DB', 'COM_QUERY', 'COM_FIELD_LIST', 'COM_STATISTICS',
    'COM_PROCESS_KILL', 'COM_PING', 'COM_CHANGE_USER', 'COM_STMT_PREPARE', 'COM_STMT_EXECUTE',
    'COM_STMT_SEND_LONG_DATA', 'COM_STMT_CLOSE', 'COM_STMT_RESET', 'COM_SET_OPTION',
    'COM_STMT_FETCH', 'COM_RESET_CONNECTION', 'COM_STMT_BULK_EXECUTE', 'COMMAND_NAMES',
    'NO_RESPONSE', 'Packet', 'parse_packet_header', 'parse_packet', 'read_lenenc', 'read_cstr',
    'Command', 'decode_command', 'parse_command', 'looks_like_mysql_command',
]


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
            count, pos = read_lenenc(payload, 1)
            sets, pos = read_lenenc(payload, pos)
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
