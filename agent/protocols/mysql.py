"""MySQL and MariaDB connections (PROTOCOL_MYSQL): the client/server
protocol over the shared SQL handler (agent/protocols/sql_base.py).

A connection goes through its phases (MyState.phase): the server's
greeting, the client's HandshakeResponse (or an SSL request: TLS follows),
authentication up to the server's OK or ERR, then commands.  COM_QUERY and
COM_STMT_EXECUTE are queries; each command's answer is read by a
ResponseReader (agent/parsers/mysql.py), the oldest command's first.
"""
from __future__ import annotations

from agent.capture.records import C
from agent.counters import parse_errors
from agent.parsers import INVALID, PARSED
from agent.parsers import mysql as my
from agent.protocols.sql_base import (BUFFER_LIMIT, FRAMING, INIT, INVALID_BYTES, ITEM_TAG, LOST,
                                      OK, RESYNC, SKIP, SQL_PARSE_ERRORS, TAIL_BYTES, SqlHandler,
                                      SqlState, walk_event)

# Connection phases.
_MY_COMMAND = 0
_MY_START = 1         # the server greeting comes next
_MY_LOGIN = 2         # the client's HandshakeResponse comes next
_MY_AUTH = 3          # authentication until the server's OK/ERR

_MY_GUESSED_CAPS = my.CLIENT_PROTOCOL_41 | my.CLIENT_SECURE_CONNECTION | my.CLIENT_MULTI_RESULTS
_CLIENT_COMPRESS = 0x20
_MY_QUERIES = frozenset((my.COM_QUERY, my.COM_STMT_EXECUTE))


class MyState(SqlState):
    """phase: where the connection is (_MY_*); caps: the client's
    capabilities (guessed until its login is seen); reader: the
    ResponseReader of the oldest command."""

    __slots__ = ("phase", "caps", "caps_known", "reader")

    def __init__(self, client_direction: int):
        super().__init__("mysql", client_direction)
        self.phase = _MY_COMMAND
        self.caps = _MY_GUESSED_CAPS
        self.caps_known = False
        self.reader = None


def _my_frame(seg: bytes, pos: int, gap_after: int, packets: list, want: int):
    """MySQL packets of one segment, for walk_event: (seq, bytes of the
    packet as captured, truncated) for packets with sequence id `want`
    (every packet when want < 0)."""
    n = len(seg)
    while pos < n:
        if n - pos < 4:
            if gap_after:
                return 0, (LOST, 0, b"", "")
            return 0, (OK, 0, seg[pos:], "")
        total = 4 + (seg[pos] | seg[pos + 1] << 8 | seg[pos + 2] << 16)
        end = pos + total
        seq = seg[pos + 3]
        if want < 0 or seq == want:
            if end <= n:
                packets.append((seq, seg[pos:end], False))
            elif not gap_after and total <= BUFFER_LIMIT:
                return 0, (OK, 0, seg[pos:], "")
            else:
                packets.append((seq, seg[pos:], True))
        if end > n:
            return end - n, None
        pos = end
    return 0, None


def _my_walk(data: bytes, gap: int, tail: bytes, skip: int, want: int):
    """Physical MySQL packets over one event (see walk_event): returns
    (packets, status, skip, rest) where packets are as _my_frame gives them."""
    packets = []
    status, skip, rest, _ = walk_event(data, gap, tail, skip, _my_frame, packets, want)
    return packets, status, skip, rest


def _my_tail_end(tail: bytes, caps: int):
    """When tail ends with the final packet of an answer (ERR, or EOF /
    OK-as-EOF without SERVER_MORE_RESULTS_EXISTS) whose 3-byte length ends
    exactly at its end: that packet's Response; else None."""
    n = len(tail)
    for start in range(n - 5, -1, -1):
        if start + 4 + (tail[start] | tail[start + 1] << 8 | tail[start + 2] << 16) != n:
            continue
        first = tail[start + 4]
        if first != 0xFF and first != 0xFE:
            continue
        status, m, _ = my.decode_response(tail[start + 4:], caps)
        if status != PARSED:
            continue
        if m.kind == "error":
            if m.error_code != 0xFFFF:
                return m
        elif not m.status_flags & my.SERVER_MORE_RESULTS_EXISTS:
            return m
    return None


def _looks_like_login(data: bytes) -> bool:
    """A HandshakeResponse (sequence id 1, or 2 after TLS) at the start of data."""
    if len(data) < 36 or data[3] not in (1, 2):
        return False
    status, packet, _, _ = my.parse_packet(data, True)
    return status == PARSED and (
        my.decode_handshake_response(packet.payload)[0] == PARSED
        or packet.truncated and data[4 + 1] & (my.CLIENT_PROTOCOL_41 >> 8) != 0)


def _use_schema(text: str):
    """The schema a `USE name` statement switches to, else None."""
    if len(text) < 5 or text[:3].lower() != "use" or text[3] not in " \t\r\n`":
        return None
    name = text[3:].strip().rstrip(";").strip()
    if len(name) > 1 and name[0] == name[-1] == "`":
        name = name[1:-1].replace("``", "`")
    return name or None


class _MysqlResponses(SqlHandler):
    """The server's side: greeting, authentication, command answers."""

    def server(self, conn, sc, data: bytes, gap: int, tail: bytes, end_ns: int,
               out: list) -> None:
        st = sc.server
        if st.state == INIT:
            data = st.join(data)
            if not gap and my.looks_like_greeting_payload(data):
                # Its header was read by a call of its own, before the kernel
                # could tell the connection's protocol.
                data = len(data).to_bytes(3, "little") + b"\0" + data
            if len(data) < 6 and not gap:
                st.buf = data
                return
            st.state = FRAMING
            if sc.phase == _MY_COMMAND and sc.client.state == INIT and \
                    my.looks_like_mysql_handshake(data):
                sc.phase = _MY_START
        if sc.phase != _MY_COMMAND:
            self._my_handshake(conn, sc, data, gap, tail)
            return
        if st.state == RESYNC:
            # After lost records: the next answer starts after the next command.
            if not sc.pending:
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.state = FRAMING
        if sc.server_lost:
            # Skipping the rest of an answer whose framing was lost: it ends
            # with this event if the event ends with its final packet.
            last = tail if tail else data[-TAIL_BYTES:] if not gap else b""
            m = _my_tail_end(last, sc.caps) if last and sc.pending else None
            if m is None:
                self.counts["sql_events_skipped_resync"] += 1
                return
            self.counts["sql_tail_recoveries"] += 1
            sc.server_lost = False
            self._my_finish(conn, sc, m, end_ns, out)
            return
        status = self._my_feed(conn, sc, data, end_ns, out)
        if status == OK and gap:
            reader = sc.reader
            if reader is not None and not reader._buf and reader._skip >= gap:
                # The uncaptured bytes are inside the packet being skipped.
                reader._skip -= gap
                if tail:
                    status = self._my_feed(conn, sc, tail, end_ns, out)
            elif reader is not None or sc.pending:
                status = LOST
        if status == OK or status == SKIP:
            return
        if status == INVALID_BYTES:
            if not sc.caps_known:
                sc.caps ^= my.CLIENT_DEPRECATE_EOF    # the other guess for next time
        elif tail and sc.pending:
            m = _my_tail_end(tail, sc.caps)
            if m is not None:
                self.counts["sql_tail_recoveries"] += 1
                response = sc.reader.response if sc.reader is not None else None
                if response is not None and response.kind == "prepare_ok":
                    m = response
                sc.reader = None
                self._my_finish(conn, sc, m, end_ns, out)
                return
        sc.reader = None
        self.counts["sql_framing_lost"] += 1
        if sc.pending:
            sc.server_lost = True

    def _my_feed(self, conn, sc, data: bytes, end_ns: int, out: list) -> int:
        pos = 0
        n = len(data)
        while pos < n:
            reader = sc.reader
            if reader is None:
                if not sc.pending:
                    self.counts["sql_responses_without_request"] += 1
                    return SKIP
                reader = sc.reader = my.ResponseReader(sc.pending[0][0], sc.caps)
            status, consumed = reader.feed(data[pos:] if pos else data)
            if status == PARSED:
                pos += consumed
                self._my_finish(conn, sc, reader.response, end_ns, out)
            elif status == INVALID:
                self.parse_error("bad_response")
                return INVALID_BYTES
            else:
                return OK
        return OK

    def _my_finish(self, conn, sc, response, end_ns: int, out: list) -> None:
        """The oldest command's answer is complete."""
        if response.kind == "local_infile":
            # The client sends the file, then the server answers OK or ERR.
            sc.reader = my.ResponseReader(my.COM_PING, sc.caps)
            return
        sc.reader = None
        code, query, extra = sc.pending.popleft()
        kind = response.kind
        if code == my.COM_STMT_PREPARE:
            if kind == "prepare_ok" and extra is not None:
                self.define(sc, response.statement_id, extra)
            return
        if code == my.COM_INIT_DB:
            if kind == "ok":
                sc.namespace = extra
            return
        if code == my.COM_RESET_CONNECTION or code == my.COM_CHANGE_USER:
            if kind == "ok":
                sc.statements.clear()
            return
        if query is None:
            return
        if kind == "error":
            self.complete(conn, query, str(response.error_code), end_ns, out)
            return
        if code == my.COM_QUERY and query.text:
            schema = _use_schema(query.text)
            if schema is not None:
                sc.namespace = schema
        self.complete(conn, query, None, end_ns, out)

    def _my_handshake(self, conn, sc, data: bytes, gap: int, tail: bytes) -> None:
        """Greeting and authentication, up to the server's OK or ERR."""
        st = sc.server
        data = st.join(data)
        packets, status, skip, rest = _my_walk(data, gap, tail, st.skip, -1)
        st.skip, st.buf = skip, rest
        for seq, raw, _ in packets:
            payload = raw[4:]
            if not payload:
                continue
            if sc.phase == _MY_START:
                if seq == 0:
                    status_h, greeting, _ = my.decode_handshake(payload)
                    if status_h == PARSED and isinstance(greeting, my.Handshake):
                        sc.system = "mariadb" if greeting.mariadb else "mysql"
                    sc.phase = _MY_LOGIN
            elif sc.phase == _MY_AUTH and (payload[0] == 0x00 or payload[0] == 0xFF):
                sc.phase = _MY_COMMAND
                st.reset(FRAMING)
                return
        if status == LOST:
            st.reset(FRAMING)

    # -- housekeeping -----------------------------------------------------

    def fallback(self, conn, sc, out: list) -> None:
        """The answer whose framing was lost is over (the client sent its
        next command or closed): complete the oldest command, ending with
        the last server event seen."""
        sc.server_lost = False
        sc.reader = None
        query = sc.pending.popleft()[1]
        self.complete(conn, query, None, sc.last_server_end_ns, out)
        self.counts["sql_fallback_completions"] += query is not None


class MysqlHandler(_MysqlResponses):
    PROTOCOL = C["PROTOCOL_MYSQL"]
    NAME = "mysql"
    # Commands agent/parsers/mysql.py (and mysql_wire.py) rejects, an
    # answer that is not one, and the shared handler's.
    PARSE_ERRORS = parse_errors(NAME, "bad_command", "bad_length", "bad_sequence", "empty",
                                "short", "too_large", "bad_response", *SQL_PARSE_ERRORS)
    DIALECT = "mysql"     # MariaDB speaks MySQL's

    def new_state(self, client_direction: int) -> MyState:
        return MyState(client_direction)

    def client_direction(self, payload: bytes, direction: int):
        """The direction requests travel, from bytes only a server (the
        greeting) or a client (a command) sends first; None when the bytes
        do not tell."""
        if my.looks_like_mysql_handshake(payload) or my.looks_like_greeting_payload(payload):
            return 1 - direction
        if my.looks_like_mysql_command(payload):
            return direction
        return None

    def plaintext_starts(self, sc: MyState) -> None:
        """TLS plaintext of a connection whose socket switched to TLS: the
        HandshakeResponse (sequence id 2) comes next, inside it."""
        sc.phase = _MY_LOGIN

    def reset_phase(self, sc: MyState) -> None:
        sc.reader = None
        sc.phase = _MY_COMMAND

    def client(self, conn, sc, data: bytes, gap: int, tail: bytes, tid: int, ts: int,
               out: list) -> None:
        st = sc.client
        data = st.join(data)
        if st.state == INIT:
            if len(data) < 5 and not gap:
                st.buf = data
                return
            st.state = FRAMING
            if sc.phase == _MY_COMMAND:
                if _looks_like_login(data):
                    sc.phase = _MY_LOGIN      # the greeting was not seen, the login is
                elif not my.looks_like_mysql_command(data):
                    st.state = RESYNC
        phase = sc.phase
        if phase == _MY_START or phase == _MY_LOGIN:
            self._my_login(conn, sc, data, gap, tail)
            return
        if st.state == RESYNC:
            if not my.looks_like_mysql_command(data):
                self.counts["sql_events_skipped_resync"] += 1
                return
            st.reset(FRAMING)
        # Commands have sequence id 0; while authenticating (256: no
        # packet) the client's packets are only framed.
        packets, status, skip, rest = _my_walk(data, gap, tail, st.skip,
                                               0 if phase == _MY_COMMAND else 256)
        st.skip, st.buf = skip, rest
        if packets:
            if sc.server_lost and sc.pending:
                self.fallback(conn, sc, out)
            for _, raw, _ in packets:
                status_c, command, _, reason = my.parse_command(raw, sc.caps, True)
                if status_c != PARSED:
                    self.parse_error(reason)
                    self.counts["sql_framing_lost"] += 1
                    st.reset(RESYNC)
                    return
                self._my_command(conn, sc, command, tid, ts, out)
        if status == LOST:
            self.counts["sql_framing_lost"] += 1
            st.reset(RESYNC)

    def _my_login(self, conn, sc, data: bytes, gap: int, tail: bytes) -> None:
        st = sc.client
        packets, status, skip, rest = _my_walk(data, gap, tail, st.skip, -1)
        st.skip, st.buf = skip, rest
        for seq, raw, truncated in packets:
            if seq not in (1, 2) or len(raw) < 36:
                continue
            payload = raw[4:]
            status_l, login, _ = my.decode_handshake_response(payload)
            caps = int.from_bytes(payload[:4], "little")
            if status_l != PARSED and not (truncated and caps & my.CLIENT_PROTOCOL_41):
                continue
            if status_l == PARSED:
                caps = login.capabilities
                if login.ssl_request:
                    self.counts["sql_tls_connections"] += 1
                    sc.ignored = sc.tls = True
                    return
                if sc.namespace is None:
                    sc.namespace = login.database
            elif not caps & my.CLIENT_LONG_PASSWORD:
                # Truncated: the capabilities are in its first bytes.
                caps |= int.from_bytes(payload[28:32], "little") << 32
            sc.caps = caps
            sc.caps_known = True
            if caps & _CLIENT_COMPRESS:
                self.counts["sql_compressed_connections"] += 1
                sc.ignored = True
                return
            sc.phase = _MY_AUTH
            break
        if status == LOST:
            st.reset(FRAMING)

    def _my_command(self, conn, sc, command, tid: int, ts: int, out: list) -> None:
        code = command.code
        if code in _MY_QUERIES:
            if code == my.COM_QUERY:
                text = command.query
            else:
                text = sc.statements.get(command.statement_id)
            if text is None:
                self.counts["sql_unknown_statements"] += 1
            query = self.query(sc, text, tid, ts)
            self.push(sc, [code, query, None], self.limits.max_pending)
            out.append((ITEM_TAG, conn, query, None))
        elif code == my.COM_STMT_PREPARE:
            self.push(sc, [code, None, command.query], self.limits.max_pending)
        elif code == my.COM_INIT_DB:
            self.push(sc, [code, None, command.schema], self.limits.max_pending)
        elif code == my.COM_STMT_CLOSE:
            sc.statements.pop(command.statement_id, None)
        elif code not in my.NO_RESPONSE:
            self.push(sc, [code, None, None], self.limits.max_pending)

