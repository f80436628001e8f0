"""MySQL / MariaDB server answers: a lone OK, ERR or EOF payload
(decode_response), and ResponseReader, which follows a whole answer (result
sets with their column definitions and rows, COM_STMT_PREPARE_OK with its
parameter and column definitions) across reads without keeping rows."""
from __future__ import annotations

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.mysql_wire import (_LE, CLIENT_DEPRECATE_EOF, CLIENT_PROTOCOL_41, COM_FIELD_LIST,
                                      COM_QUERY, COM_STATISTICS, COM_STMT_EXECUTE, COM_STMT_FETCH,
                                      COM_STMT_PREPARE, MARIADB_CLIENT_CACHE_METADATA,
                                      MARIADB_CLIENT_PROGRESS, MAX_PAYLOAD, NO_RESPONSE,
                                      SERVER_MORE_RESULTS_EXISTS, read_lenenc)


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
    m.affected_rows, pos = read_lenenc(payload, 1)
    if pos < 0:
        return False
    m.last_insert_id, pos = read_lenenc(payload, pos)
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
        count, pos = read_lenenc(payload, 0)
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
