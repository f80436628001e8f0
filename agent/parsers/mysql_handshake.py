"""MySQL / MariaDB connection start: the server's greeting, the client's
login (HandshakeResponse41 or SSLRequest), and the cheap checks that
recognise a greeting on any port.  The auth response is never kept."""
from __future__ import annotations

from agent.parsers import INVALID, PARSED
from agent.parsers.mysql_response import decode_response
from agent.parsers.mysql_wire import (_LE, CLIENT_CONNECT_ATTRS, CLIENT_CONNECT_WITH_DB,
                                      CLIENT_LONG_PASSWORD, CLIENT_PLUGIN_AUTH,
                                      CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, CLIENT_PROTOCOL_41,
                                      CLIENT_SECURE_CONNECTION, CLIENT_SSL, read_cstr,
                                      read_lenenc)


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
    version, pos = read_cstr(payload, 1)
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
    m.user, pos = read_cstr(payload, 32)
    if pos < 0:
        return INVALID, None, "bad_user"
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        size, pos = read_lenenc(payload, pos)
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
        m.database, pos = read_cstr(payload, pos)
        if pos < 0:
            return INVALID, None, "bad_database"
    if caps & CLIENT_PLUGIN_AUTH and pos < len(payload):
        m.auth_plugin, pos = read_cstr(payload, pos)
        if pos < 0:
            return INVALID, None, "bad_auth_plugin"
    if caps & CLIENT_CONNECT_ATTRS and 0 <= pos < len(payload):
        size, pos = read_lenenc(payload, pos)
        end = pos + size
        if size < 0 or end > len(payload):
            return INVALID, None, "bad_attributes"
        while pos < end:
            klen, pos = read_lenenc(payload, pos)
            if klen < 0 or pos + klen > end:
                return INVALID, None, "bad_attributes"
            key = payload[pos:pos + klen].decode("utf-8", "replace")
            pos += klen
            vlen, pos = read_lenenc(payload, pos)
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
