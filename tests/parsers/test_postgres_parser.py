"""PostgreSQL v3 protocol parser against streams real clients and servers
exchanged (tests/fixtures/postgres, made by tests/fixtures/capture_sql.py:
psycopg 3 and pgbench against PostgreSQL 15), plus crafted edge cases."""
from __future__ import annotations

import os
import struct

import pytest

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers import postgres as pg

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "postgres")


def load(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def frame_client(data: bytes):
    """Every message of a client stream: startup (after any SSLRequest), then
    frontend messages, each checked to frame exactly."""
    messages = []
    pos = 0
    while True:
        status, m, consumed, reason = pg.parse_startup(data[pos:])
        assert status == PARSED, (pos, reason)
        messages.append(m)
        pos += consumed
        if isinstance(m, pg.StartupMessage):
            break
    while pos < len(data):
        status, m, consumed, reason = pg.parse_frontend(data[pos:])
        assert status == PARSED, (pos, reason, data[pos:pos + 16])
        assert consumed == m.length > 0
        messages.append(m)
        pos += consumed
    assert pos == len(data)
    return messages


def frame_server(data: bytes):
    messages = []
    pos = 0
    if data[:1] == b"N":          # the answer to an SSLRequest
        messages.append("N")
        pos = 1
    while pos < len(data):
        status, m, consumed, reason = pg.parse_backend(data[pos:])
        assert status == PARSED, (pos, reason, data[pos:pos + 16])
        messages.append(m)
        pos += consumed
    assert pos == len(data)
    return messages


def client_files():
    return sorted(n for n in os.listdir(FIXTURES) if n.endswith(".client.bin"))


def server_files():
    return sorted(n for n in os.listdir(FIXTURES) if n.endswith(".server.bin"))


def of(messages, cls):
    return [m for m in messages if type(m) is cls]


def test_fixtures_exist():
    assert len(client_files()) >= 8 and len(server_files()) == len(client_files())


@pytest.mark.parametrize("name", client_files())
def test_every_client_stream_frames(name):
    messages = frame_client(load(name))
    startup = [m for m in messages if isinstance(m, pg.StartupMessage)][0]
    assert startup.user == "postgres" and startup.database == "postgres"
    assert startup.protocol == "3.0"
    assert messages[-1].type == "X"  # Terminate


@pytest.mark.parametrize("name", server_files())
def test_every_server_stream_frames(name):
    messages = frame_server(load(name))
    auth = of(messages, pg.Authentication)
    assert auth and auth[0].code == 0            # trust
    assert of(messages, pg.BackendKeyData)[0].pid > 0
    params = {m.name: m.value for m in of(messages, pg.ParameterStatus)}
    assert params["server_version"].startswith("15.")
    assert of(messages, pg.ReadyForQuery)


def test_simple_query():
    client = frame_client(load("psycopg_simple.client.bin"))
    assert client[0].application_name == "fixture"
    queries = [m.text for m in of(client, pg.Query)]
    assert queries == ["SELECT id, owner FROM accounts WHERE balance > 10 ORDER BY id",
                       "UPDATE accounts SET balance = balance + 1 WHERE id = 2"]
    server = frame_server(load("psycopg_simple.server.bin"))
    assert [m.tag for m in of(server, pg.CommandComplete)] == ["SELECT 2", "UPDATE 1"]
    assert [(m.command, m.rows) for m in of(server, pg.CommandComplete)] == [
        ("SELECT", 2), ("UPDATE", 1)]
    assert len(of(server, pg.DataRow)) == 2
    assert of(server, pg.RowDescription)[0].field_count == 2


def test_extended_protocol_and_prepared_statement():
    client = frame_client(load("psycopg_prepared.client.bin"))
    parses = of(client, pg.Parse)
    assert [(p.statement, p.query, p.param_type_count) for p in parses] == [
        ("", "SELECT owner FROM accounts WHERE id = $1", 1),
        ("_pg3_0", "SELECT balance FROM accounts WHERE id = $1", 1)]
    binds = of(client, pg.Bind)
    assert [b.statement for b in binds] == ["", "_pg3_0", "_pg3_0", "_pg3_0"]
    assert all(b.param_count == 1 and b.portal == "" for b in binds)
    # Bind keeps no values: nothing of the parameter survives on the object.
    assert not hasattr(binds[0], "values")
    assert [e.portal for e in of(client, pg.Execute)] == ["", "", "", ""]
    server = frame_server(load("psycopg_prepared.server.bin"))
    types = [m.type for m in server if isinstance(m, pg.Message)]
    assert types.count("1") == 2 and types.count("2") == 4
    assert [m.tag for m in of(server, pg.CommandComplete)] == ["SELECT 1"] * 4


def test_errors_keep_sqlstate_and_severity():
    server = frame_server(load("psycopg_errors.server.bin"))
    errors = of(server, pg.ErrorResponse)
    assert [(e.severity, e.code) for e in errors] == [("ERROR", "23505"), ("ERROR", "42601")]
    assert "accounts_pkey" in errors[0].message
    assert "message" in pg.ErrorResponse.sensitive
    assert [m.status for m in of(server, pg.ReadyForQuery)][-3:] == ["I", "I", "I"]
    client = frame_client(load("psycopg_errors.client.bin"))
    assert of(client, pg.Parse)[0].query == "INSERT INTO accounts VALUES ($1, $2, $3)"
    assert of(client, pg.Bind)[0].param_count == 3
    assert "SELEC owner FROM accounts" in [q.text for q in of(client, pg.Query)]


def test_transaction_status():
    client = frame_client(load("psycopg_transaction.client.bin"))
    assert [q.text for q in of(client, pg.Query)] == ["BEGIN", "COMMIT"]
    server = frame_server(load("psycopg_transaction.server.bin"))
    assert [m.tag for m in of(server, pg.CommandComplete)] == [
        "BEGIN", "UPDATE 1", "UPDATE 1", "COMMIT"]
    assert [m.status for m in of(server, pg.ReadyForQuery)] == ["I", "T", "T", "T", "I"]


def test_sqlcommenter_query_arrives_whole():
    client = frame_client(load("psycopg_sqlcommenter.client.bin"))
    text = of(client, pg.Query)[0].text
    assert text.startswith("SELECT count(*) FROM accounts /*") and "traceparent=" in text


def test_ssl_request_then_plain_startup():
    client = frame_client(load("psycopg_sslrequest.client.bin"))
    assert isinstance(client[0], pg.SpecialRequest) and client[0].kind == "ssl"
    assert isinstance(client[1], pg.StartupMessage)
    assert frame_server(load("psycopg_sslrequest.server.bin"))[0] == "N"


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench(mode):
    client = frame_client(load(f"pgbench_{mode}_2.client.bin"))
    server = frame_server(load(f"pgbench_{mode}_2.server.bin"))
    assert client[0].application_name == "pgbench"
    if mode == "simple":
        queries = [q.text for q in of(client, pg.Query)]
        assert len(queries) == 20
        assert all(q.startswith("SELECT abalance FROM pgbench_accounts WHERE aid = ")
                   for q in queries)
    else:
        assert [p.statement for p in of(client, pg.Parse)] == ["P_0"]
        assert len([b for b in of(client, pg.Bind) if b.statement == "P_0"]) == 20
    assert [m.tag for m in of(server, pg.CommandComplete)] == ["SELECT 1"] * 20


@pytest.mark.parametrize("name", client_files() + server_files())
def test_truncation_at_every_offset(name):
    """Every prefix of every message is NEED_MORE with a correct need, and
    partial parsing keeps the framing."""
    data = load(name)
    client = name.endswith(".client.bin")
    # Find message boundaries with the full parse first.
    bounds = []
    pos = 0
    if client:
        while True:
            _, m, consumed, _ = pg.parse_startup(data[pos:])
            bounds.append((pos, consumed, "startup"))
            pos += consumed
            if isinstance(m, pg.StartupMessage):
                break
    elif data[:1] == b"N":
        pos = 1
    while pos < len(data):
        parse = pg.parse_frontend if client else pg.parse_backend
        _, m, consumed, _ = parse(data[pos:])
        bounds.append((pos, consumed, "message"))
        pos += consumed
    for start, size, kind in bounds:
        whole = data[start:start + size]
        for cut in range(size):
            part = whole[:cut]
            if kind == "startup":
                status, m, need, _ = pg.parse_startup(part)
                assert status == NEED_MORE, (start, cut)
                assert need > cut
                continue
            parse = pg.parse_frontend if client else pg.parse_backend
            status, m, need, _ = parse(part)
            assert status == NEED_MORE, (start, cut)
            assert need == (5 if cut < 5 else size)
            if cut >= 5:
                hstatus, kind_letter, total, _ = pg.parse_header(part, client)
                assert hstatus == PARSED and total == size and kind_letter == chr(whole[0])
                status, m, consumed, _ = parse(part, partial=True)
                assert status == PARSED and m.truncated and consumed == size


def test_partial_long_query_keeps_prefix_and_length():
    text = "SELECT " + ", ".join(f"col{i}" for i in range(5000)) + " FROM wide"
    body = text.encode() + b"\0"
    msg = b"Q" + struct.pack("!I", 4 + len(body)) + body
    status, m, need, _ = pg.parse_frontend(msg[:256])
    assert status == NEED_MORE and need == len(msg)
    status, m, consumed, _ = pg.parse_frontend(msg[:256], partial=True)
    assert status == PARSED and m.truncated and consumed == len(msg)
    assert m.text == text[:251]
    assert pg.parse_header(msg[:5]) == (PARSED, "Q", len(msg), "")


def test_bind_values_are_skipped():
    secret = b"hunter2"
    body = (b"portal\0stmt\0" + struct.pack("!HH", 1, 1) + struct.pack("!H", 2)
            + struct.pack("!i", len(secret)) + secret + struct.pack("!i", -1)
            + struct.pack("!HH", 1, 1))
    msg = b"B" + struct.pack("!I", 4 + len(body)) + body
    status, m, consumed, _ = pg.parse_frontend(msg)
    assert status == PARSED and consumed == len(msg)
    assert (m.portal, m.statement, m.param_count, m.param_formats, m.result_formats) == (
        "portal", "stmt", 2, (1,), (1,))
    assert all(secret.decode() not in repr(getattr(m, s)) for s in pg.Bind.__slots__)


def test_cancel_request_keeps_pid_not_key():
    msg = struct.pack("!IIII", 16, pg.CANCEL_REQUEST_CODE, 4242, 0x5EC2E7)
    status, m, consumed, _ = pg.parse_startup(msg)
    assert status == PARSED and m.kind == "cancel" and m.pid == 4242 and consumed == 16
    assert pg.looks_like_postgres_startup(msg)


def test_invalid_inputs():
    assert pg.parse_frontend(b"GET / HTTP/1.1\r\n")[0] == INVALID
    assert pg.parse_backend(b"HTTP/1.1 200 OK\r\n")[0] == INVALID
    assert pg.parse_startup(b"GET / HTTP/1.1\r\n")[0] == INVALID
    assert pg.parse_frontend(b"S\x00\x00\x00\x05")[0] == INVALID     # Sync is 4
    assert pg.parse_frontend(b"Q\x7f\x00\x00\x00")[0] == INVALID      # > 1 GiB
    assert pg.parse_backend(b"Z\x00\x00\x00\x05X")[0] == INVALID


def test_looks_like():
    startup = load("psycopg_simple.client.bin")
    assert pg.looks_like_postgres_startup(startup)
    assert pg.looks_like_postgres_startup(load("psycopg_sslrequest.client.bin"))
    assert not pg.looks_like_postgres_startup(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    _, _, consumed, _ = pg.parse_startup(startup)
    assert pg.looks_like_postgres_frontend(startup[consumed:])
    assert not pg.looks_like_postgres_frontend(b"GET / HTTP/1.1\r\n")
    assert not pg.looks_like_postgres_frontend(b"POST /x HTTP/1.1\r\n")
    assert not pg.looks_like_postgres_frontend(b"\x16\x03\x01\x02\x00\x01")
    assert pg.looks_like_postgres_backend(load("psycopg_simple.server.bin"))


def test_skip_data_rows_counts():
    server = load("psycopg_simple.server.bin")
    pos = server.find(b"D\x00")
    rows, end = pg.skip_data_rows(server, pos)
    assert rows == 2 and server[end:end + 1] == b"C"


def test_command_tags():
    assert pg.parse_command_tag("INSERT 0 1") == ("INSERT", 1)
    assert pg.parse_command_tag("SELECT 5") == ("SELECT", 5)
    assert pg.parse_command_tag("CREATE TABLE") == ("CREATE TABLE", None)
    assert pg.parse_command_tag("COPY 12") == ("COPY", 12)


def test_truncated_error_keeps_leading_fields():
    server = load("psycopg_errors.server.bin")
    start = server.find(b"E\x00\x00")
    _, whole, size, _ = pg.parse_backend(server[start:])
    cut = server.find(b"M", start + 5) + 3 - start   # inside the message field
    status, m, consumed, _ = pg.parse_backend(server[start:start + cut], partial=True)
    assert status == PARSED and m.truncated and consumed == size
    assert (m.severity, m.code) == (whole.severity, whole.code) == ("ERROR", "23505")
