"""MySQL/MariaDB protocol parser against streams real clients and a real
server exchanged (tests/fixtures/mysql, made by tests/fixtures/capture_sql.py:
PyMySQL and mysql-connector-python against MariaDB 10.11), plus crafted
edge cases (CLIENT_DEPRECATE_EOF, large packets, multi-result answers)."""
from __future__ import annotations

import os

import pytest

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers import mysql as my

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "mysql")
NAMES = sorted({n.rsplit(".", 2)[0] for n in os.listdir(FIXTURES) if n.endswith(".bin")})


def load(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def conversation(name: str):
    """(handshake, login, [(command, response)]) of one fixture connection,
    asserting that both streams frame exactly."""
    client, server = load(f"{name}.client.bin"), load(f"{name}.server.bin")
    status, p, spos, _ = my.parse_packet(server)
    assert status == PARSED and p.seq == 0
    status, handshake, _ = my.decode_handshake(p.payload)
    assert status == PARSED
    status, p, cpos, _ = my.parse_packet(client)
    assert status == PARSED and p.seq == 1
    status, login, _ = my.decode_handshake_response(p.payload)
    assert status == PARSED
    while True:                      # authentication exchange, up to OK
        status, p, consumed, _ = my.parse_packet(server[spos:])
        assert status == PARSED
        spos += consumed
        if p.payload[0] in (0x00, 0xFF):
            break
        status, _, consumed, _ = my.parse_packet(client[cpos:])
        cpos += consumed
    exchanges = []
    while cpos < len(client):
        status, command, consumed, reason = my.parse_command(client[cpos:], login.capabilities)
        assert status == PARSED, (cpos, reason)
        cpos += consumed
        reader = my.ResponseReader(command.code, login.capabilities)
        status, consumed = reader.feed(server[spos:])
        assert status == PARSED, (command, spos)
        if command.code not in my.NO_RESPONSE:
            spos += consumed
        exchanges.append((command, reader.response))
    assert cpos == len(client) and spos == len(server)
    return handshake, login, exchanges


@pytest.mark.parametrize("name", NAMES)
def test_every_stream_frames(name):
    handshake, login, exchanges = conversation(name)
    assert handshake.mariadb and handshake.version.startswith("10.11.")
    assert handshake.auth_plugin == "mysql_native_password"
    assert login.user == "app"
    assert exchanges[-1][0].code == my.COM_QUIT


def test_text_queries():
    _, login, exchanges = conversation("pymysql_text")
    assert login.database == "shop" and login.capabilities & my.CLIENT_CONNECT_WITH_DB
    assert login.attributes.get("_client_name") == "pymysql"
    queries = [(c.query, r.kind) for c, r in exchanges if c.code == my.COM_QUERY]
    assert ("SELECT id, item, qty FROM orders WHERE qty > 1 ORDER BY id", "resultset") in queries
    select = [r for c, r in exchanges if c.query and c.query.startswith("SELECT id")][0]
    assert (select.columns, select.rows) == (3, 2)
    affected = [r.affected_rows for c, r in exchanges
                if c.query and c.query.split()[0] in ("UPDATE", "INSERT", "DELETE")]
    assert affected == [1, 1, 1]


def test_errors():
    _, _, exchanges = conversation("pymysql_errors")
    errors = [(c.query, r.error_code, r.sql_state) for c, r in exchanges if r.kind == "error"]
    assert errors == [("INSERT INTO orders VALUES (1, 'dup', 1)", 1062, "23000"),
                      ("SELEC item FROM orders", 1064, "42000")]
    dup = [r for c, r in exchanges if r.kind == "error"][0]
    assert "Duplicate entry" in dup.message and "message" in my.Response.sensitive


def test_init_db_and_ping():
    _, login, exchanges = conversation("pymysql_init_db")
    assert login.database is None and not login.capabilities & my.CLIENT_CONNECT_WITH_DB
    schemas = [c.schema for c, _ in exchanges if c.code == my.COM_INIT_DB]
    assert schemas == ["shop", "other"]
    assert [r.kind for c, r in exchanges if c.code in (my.COM_INIT_DB, my.COM_PING)] == [
        "ok"] * 3


def test_server_side_prepared_statements():
    _, login, exchanges = conversation("connector_prepared")
    assert login.attributes.get("_client_name") == "mysql-connector-python"
    prepared = {r.statement_id: (c.query, r.num_params, r.num_columns)
                for c, r in exchanges if c.code == my.COM_STMT_PREPARE}
    assert prepared == {1: ("SELECT item, qty FROM orders WHERE id = ?", 1, 2),
                        2: ("UPDATE orders SET qty = ? WHERE id = ?", 2, 0)}
    executes = [(c.statement_id, r.kind, r.rows, r.affected_rows)
                for c, r in exchanges if c.code == my.COM_STMT_EXECUTE]
    assert executes == [(1, "resultset", 1, None), (1, "resultset", 1, None),
                        (2, "ok", 0, 1)]
    assert [c.statement_id for c, _ in exchanges if c.code == my.COM_STMT_CLOSE] == [1, 2]


@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("name", NAMES)
def test_truncation_at_every_offset(name, side):
    data = load(f"{name}.{side}.bin")
    pos = 0
    while pos < len(data):
        status, p, size, _ = my.parse_packet(data[pos:])
        assert status == PARSED
        whole = data[pos:pos + size]
        for cut in range(size):
            status, p, need, _ = my.parse_packet(whole[:cut])
            assert status == NEED_MORE and need == (4 if cut < 4 else size)
            if cut >= 4:
                status, p, consumed, _ = my.parse_packet(whole[:cut], partial=True)
                assert status == PARSED and p.truncated and consumed == size
        pos += size


def test_response_reader_across_every_split():
    """Feeding a server's answer in two pieces at any split gives the same
    response as feeding it whole."""
    _, login, exchanges = conversation("pymysql_text")
    server = load("pymysql_text.server.bin")
    # The SELECT's answer: find it by running the reader from each offset.
    client = load("pymysql_text.client.bin")
    del client
    select_at = server.find(b"\x01\x00\x00\x01\x03")   # column count 3, seq 1
    assert select_at > 0
    whole = my.read_response(server[select_at:], my.COM_QUERY, login.capabilities)
    assert whole[0] == PARSED and whole[1].rows == 2
    end = select_at + whole[2]
    answer = server[select_at:end]
    for split in range(len(answer) + 1):
        reader = my.ResponseReader(my.COM_QUERY, login.capabilities)
        s1, c1 = reader.feed(answer[:split])
        if s1 == PARSED:
            assert split == len(answer)
        else:
            assert s1 == NEED_MORE and c1 == split
            s2, c2 = reader.feed(answer[split:])
            assert s2 == PARSED and c2 == len(answer) - split
        assert (reader.response.columns, reader.response.rows) == (3, 2)


def test_deprecate_eof_result_set():
    caps = my.CLIENT_PROTOCOL_41 | my.CLIENT_DEPRECATE_EOF
    coldef = b"\x03def\x04shop\x06orders\x06orders\x02id\x02id\x0c\x3f\x00\x0b\x00\x00\x00" \
             b"\x03\x03\x42\x00\x00\x00"
    stream = (packet(1, b"\x01") + packet(2, coldef) + packet(3, b"\x011") + packet(4, b"\x012")
              + packet(5, b"\xfe\x00\x00\x02\x00\x00\x00"))
    status, r, consumed, _ = my.read_response(stream + b"extra", my.COM_QUERY, caps)
    assert status == PARSED and consumed == len(stream)
    assert (r.kind, r.columns, r.rows, r.status_flags) == ("resultset", 1, 2, 2)
    # Without CLIENT_DEPRECATE_EOF the same bytes need an EOF after columns.
    status, r, _, _ = my.read_response(stream, my.COM_QUERY, my.CLIENT_PROTOCOL_41)
    assert status != PARSED or r.rows != 2


def test_error_in_the_middle_of_rows():
    coldef = b"\x03def" + b"\x00" * 5 + b"\x0c\x3f\x00\x0b\x00\x00\x00\x03\x03\x42\x00\x00\x00"
    err = b"\xff\x15\x05#HY000Query execution was interrupted"
    stream = (packet(1, b"\x01") + packet(2, coldef) + packet(3, b"\xfe\x00\x00\x22\x00")
              + packet(4, b"\x011") + packet(5, err))
    status, r, consumed, _ = my.read_response(stream, my.COM_QUERY, my.CLIENT_PROTOCOL_41)
    assert status == PARSED and consumed == len(stream)
    assert (r.kind, r.error_code, r.sql_state, r.rows) == ("error", 1301, "HY000", 1)


def test_multi_result_sets():
    caps = my.CLIENT_PROTOCOL_41
    coldef = b"\x03def" + b"\x00" * 5 + b"\x0c\x3f\x00\x0b\x00\x00\x00\x03\x03\x42\x00\x00\x00"
    more = (my.SERVER_MORE_RESULTS_EXISTS | 2).to_bytes(2, "little")
    stream = (packet(1, b"\x01") + packet(2, coldef) + packet(3, b"\xfe\x00\x00" + more)
              + packet(4, b"\x011") + packet(5, b"\xfe\x00\x00" + more)
              + packet(6, b"\x00\x00\x00\x02\x00\x00\x00"))
    status, r, consumed, _ = my.read_response(stream, my.COM_QUERY, caps)
    assert status == PARSED and consumed == len(stream)
    assert (r.kind, r.rows, r.result_sets) == ("resultset", 1, 1)


def test_large_packet_continuation():
    query = b"SELECT '" + b"x" * (my.MAX_PAYLOAD + 100) + b"'"
    payload = bytes([my.COM_QUERY]) + query
    stream = packet(0, payload[:my.MAX_PAYLOAD]) + packet(1, payload[my.MAX_PAYLOAD:])
    status, command, consumed, _ = my.parse_command(stream)
    assert status == PARSED and consumed == len(stream)
    assert len(command.query) == len(query)
    status, p, consumed, _ = my.parse_packet(stream[:4096], partial=True)
    assert status == PARSED and p.truncated and p.more
    assert consumed == 4 + my.MAX_PAYLOAD
    status, command, consumed, _ = my.parse_command(stream[:4096], partial=True)
    assert status == PARSED and command.query.startswith("SELECT 'xxx") and command.truncated
    status, _, need, _ = my.parse_packet(stream[:4 + my.MAX_PAYLOAD])
    assert status == NEED_MORE and need == 8 + my.MAX_PAYLOAD


def test_stmt_execute_keeps_no_values():
    payload = (bytes([my.COM_STMT_EXECUTE]) + (7).to_bytes(4, "little") + b"\x00"
               + (1).to_bytes(4, "little") + b"\x00\x01\xfe\x00\x07hunter2")
    status, command, _, _ = my.parse_command(packet(0, payload))
    assert status == PARSED and command.statement_id == 7
    assert all("hunter2" not in repr(getattr(command, s)) for s in my.Command.__slots__)


def test_handshake_response_ignores_auth_bytes():
    _, login, _ = conversation("pymysql_text")
    assert login.auth_plugin == "mysql_native_password"
    assert not hasattr(login, "auth_response")


def test_looks_like():
    assert my.looks_like_mysql_handshake(load("pymysql_text.server.bin"))
    assert not my.looks_like_mysql_handshake(b"HTTP/1.1 200 OK\r\n\r\n")
    client = load("pymysql_text.client.bin")
    _, _, first, _ = my.parse_packet(client)
    assert my.looks_like_mysql_command(client[first:])
    assert my.looks_like_mysql_command(packet(0, b"\x03SELECT 1"))
    assert my.looks_like_mysql_command(packet(0, b"\x0e"))
    assert not my.looks_like_mysql_command(b"GET / HTTP/1.1\r\n")
    assert not my.looks_like_mysql_command(packet(0, b"\x03\x00\x01"))


def test_invalid():
    assert my.parse_command(packet(0, b"\x99abc"))[0] == INVALID
    assert my.parse_command(packet(3, b"\x03SELECT 1"))[0] == INVALID
    assert my.decode_handshake(b"\x09abc")[0] == INVALID
    assert my.decode_handshake_response(b"\x00" * 10)[0] == INVALID
    assert my.read_response(packet(1, b"\x00"), my.COM_QUERY)[0] == INVALID
