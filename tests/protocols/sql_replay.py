"""The harness of the SQL connection tests (test_sql_*.py beside it): the
PostgreSQL and MySQL handlers behind a router of their own, fed the recorded
PostgreSQL and MySQL/MariaDB conversations of tests/fixtures/postgres and
tests/fixtures/mysql (made by tests/fixtures/capture_sql.py) replayed as
kernel events, what each conversation must give, and the crafted answers
several of those files build.

The fixtures hold whole streams, not syscalls: the helpers below cut them
where the peers would have written (a PostgreSQL client's write ends with a
Sync, a Query or a startup packet, the server's with ReadyForQuery; a MySQL
command and its whole answer are one write each) and interleave each
request with its answer."""
from __future__ import annotations

import os

from agent.parsers import PARSED
from agent.parsers import mysql as my
from agent.parsers import postgres as pg
from agent.capture.records import C
from agent.protocols.mysql import MysqlHandler
from agent.protocols.postgres import PostgresHandler
from agent.protocols.router import ProtocolRouter
from agent.protocols.sql_base import PREPARE_DONE
from event_records import make_record

ITEM_SQL_REQUEST, ITEM_SQL_EXCHANGE, ITEM_SQL_PREPARED = "request", "exchange", "prepared"


class SqlConnectionHandler:
    """The SQL handlers behind a router of their own, driven as these tests
    drive them: record by record, closes and housekeeping by call.  Items
    come out as (ITEM_SQL_REQUEST | ITEM_SQL_EXCHANGE | ITEM_SQL_PREPARED,
    conn, query), the last for a prepare that ended without a span; the
    counts are copied into `counts` after every call."""

    def __init__(self, counts=None, errors=None, max_connections=16384, max_pending=64,
                 max_statements=256, request_timeout_ns=120 * 10**9):
        self.router = ProtocolRouter(max_connections=max_connections,
                                     max_pending_requests=max_pending,
                                     request_timeout_s=request_timeout_ns / 1e9,
                                     handlers=(PostgresHandler, MysqlHandler))
        for handler in self.router.handlers.values():
            handler.limits = handler.limits._replace(max_statements=max_statements,
                                                     request_timeout_ns=request_timeout_ns)
        self.counts = self.router.counts
        self.parse_errors = self.router.parse_errors
        self._counts = counts if counts is not None else {}
        self._errors = errors if errors is not None else {}
        self._sync()

    def _sync(self) -> None:
        self._counts.update(self.router.counts)
        self._errors.update(self.router.parse_errors)

    def __len__(self) -> int:
        return len(self.router.table)

    @property
    def connections(self) -> dict:
        return {conn_id: conn.state for conn_id, conn in self.router.table.by_id.items()}

    def _items(self, items, out) -> None:
        for _, conn, query, done in items:
            kind = ITEM_SQL_REQUEST if done is None else \
                ITEM_SQL_PREPARED if done is PREPARE_DONE else ITEM_SQL_EXCHANGE
            out.append((kind, conn, query))
        self._sync()

    def event(self, record, out) -> None:
        self._items(self.router.process([record]), out)

    def close(self, conn_id, out, seq=0) -> None:
        self._items(self.router.process([make_record(type=C["EVENT_CLOSE"], conn_id=conn_id,
                                                     seq=seq)]), out)

    def expire(self, now_ns, idle_timeout_ns, request_timeout_ns=None) -> int:
        self.router.table.idle_timeout_ns = idle_timeout_ns
        if request_timeout_ns is not None:
            for handler in self.router.handlers.values():
                handler.limits = handler.limits._replace(request_timeout_ns=request_timeout_ns)
        expired = self.router.expire(now_ns)
        self._sync()
        return expired

    def forget_process(self, pid) -> None:
        self.router.forget_process(pid)
        self._sync()


FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
EGRESS, INGRESS = C["DIRECTION_EGRESS"], C["DIRECTION_INGRESS"]
ROLE_UNKNOWN, ROLE_SERVER, ROLE_CLIENT = C["ROLE_UNKNOWN"], C["ROLE_SERVER"], C["ROLE_CLIENT"]
PG, MY = C["PROTOCOL_POSTGRES"], C["PROTOCOL_MYSQL"]
FLAG_TAIL, TAIL_BYTES = C["FLAG_TAIL"], C["SQL_TAIL_BYTES"]
LOOPBACK = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def load(sub: str, name: str) -> bytes:
    with open(os.path.join(FIXTURES, sub, name), "rb") as f:
        return f.read()


# ------------------------------------------------------------ conversations

def pg_writes(name: str) -> list[tuple[str, bytes]]:
    """("c" | "s", bytes) per write of a PostgreSQL fixture, in wire order."""
    client, server = load("postgres", f"{name}.client.bin"), load("postgres", f"{name}.server.bin")
    cwrites, pos = [], 0
    while True:                                     # SSLRequest, then the StartupMessage
        status, m, consumed, _ = pg.parse_startup(client[pos:])
        assert status == PARSED
        cwrites.append(("ssl" if isinstance(m, pg.SpecialRequest) else "startup",
                        client[pos:pos + consumed]))
        pos += consumed
        if isinstance(m, pg.StartupMessage):
            break
    start = pos
    while pos < len(client):
        status, m, consumed, _ = pg.parse_frontend(client[pos:])
        assert status == PARSED
        pos += consumed
        if m.type in "SQXF":
            cwrites.append((m.type, client[start:pos]))
            start = pos
    assert start == pos == len(client)
    swrites, pos, start = [], 0, 0
    if server[:1] == b"N":
        swrites.append(b"N")
        pos = start = 1
    while pos < len(server):
        status, m, consumed, _ = pg.parse_backend(server[pos:])
        assert status == PARSED
        pos += consumed
        if m.type == "Z":
            swrites.append(server[start:pos])
            start = pos
    assert start == pos == len(server)
    out, answers = [], iter(swrites)
    for kind, data in cwrites:
        out.append(("c", data))
        if kind != "X":
            out.append(("s", next(answers)))
    assert next(answers, None) is None
    return out


def my_writes(name: str) -> list[tuple[str, bytes]]:
    """("c" | "s", bytes) per write of a MySQL fixture, in wire order."""
    client, server = load("mysql", f"{name}.client.bin"), load("mysql", f"{name}.server.bin")
    out = []
    cpos = spos = 0

    def packet(data, pos):
        status, p, consumed, _ = my.parse_packet(data[pos:])
        assert status == PARSED
        return p, pos + consumed

    greeting, spos = packet(server, 0)
    out.append(("s", server[:spos]))
    p, cpos = packet(client, 0)
    _, login, _ = my.decode_handshake_response(p.payload)
    out.append(("c", client[:cpos]))
    while True:                                     # authentication, up to OK
        start = spos
        p, spos = packet(server, spos)
        out.append(("s", server[start:spos]))
        if p.payload[0] in (0x00, 0xFF):
            break
        start = cpos
        _, cpos = packet(client, cpos)
        out.append(("c", client[start:cpos]))
    while cpos < len(client):
        status, command, consumed, _ = my.parse_command(client[cpos:], login.capabilities)
        assert status == PARSED
        out.append(("c", client[cpos:cpos + consumed]))
        cpos += consumed
        if command.code in my.NO_RESPONSE:
            continue
        reader = my.ResponseReader(command.code, login.capabilities)
        status, consumed = reader.feed(server[spos:])
        assert status == PARSED
        out.append(("s", server[spos:spos + consumed]))
        spos += consumed
    assert spos == len(server)
    return out


def writes(protocol: int, name: str):
    return pg_writes(name) if protocol == PG else my_writes(name)


def login_length(protocol: int, conversation) -> int:
    """How many writes the connection setup takes: up to PostgreSQL's
    first ReadyForQuery, MySQL's authentication OK."""
    for i, (sender, data) in enumerate(conversation):
        if sender != "s":
            continue
        if protocol == PG and data[-6:-1] == b"Z\0\0\0\x05":
            return i + 1
        if protocol == MY and i > 1 and data[4] in (0x00, 0xFF):
            return i + 1
    raise AssertionError("no login")


# ------------------------------------------------------------------ events

class Replay:
    """Kernel records of one traced end of a connection: `side` is the
    traced process ("client" or "server"), `role` what the kernel knew.
    Event i (from 1) runs from 1000 * i to 1000 * i + 500 ns."""

    def __init__(self, protocol: int, side: str = "client", role: int | None = None,
                 conn_id: int = 7, pid: int = 300, numbered: bool = True):
        self.protocol = protocol
        self.side = side
        self.role = (ROLE_CLIENT if side == "client" else ROLE_SERVER) if role is None else role
        self.conn_id = conn_id
        self.pid = pid
        self.numbered = numbered
        self.count = 0
        self.records: list[bytes] = []

    def add(self, sender: str, data: bytes, length: int | None = None, flags: int = 0,
            skip_seq: bool = False) -> tuple[int, int]:
        """One event of `sender` ("c" / "s") carrying data (the captured
        payload); returns its (start_ns, end_ns)."""
        self.count += 1
        if skip_seq:
            self.count += 1
        ts = 1000 * self.count
        outgoing = (sender == "c") == (self.side == "client")
        self.records.append(make_record(
            data, type=C["EVENT_DATA"], pid=self.pid, tid=self.pid + (sender == "c"), fd=9,
            conn_id=self.conn_id, start_ns=ts, end_ns=ts + 500,
            length=len(data) if length is None else length, captured=len(data),
            direction=EGRESS if outgoing else INGRESS, role=self.role, protocol=self.protocol,
            flags=flags, seq=self.count & 0xFFFF if self.numbered else 0,
            local_addr=LOOPBACK, remote_addr=LOOPBACK, local_port=40000, remote_port=5432,
            family=10))
        return ts, ts + 500

    def extend(self, conversation, chunk: int | None = None) -> None:
        for sender, data in conversation:
            step = chunk or len(data) or 1
            for i in range(0, len(data), step):
                self.add(sender, data[i:i + step])


def feed(records, handler=None, counts=None, errors=None):
    if handler is None:
        counts = {} if counts is None else counts
        errors = {} if errors is None else errors
        handler = SqlConnectionHandler(counts, errors)
    out = []
    for record in records:
        handler.event(record, out)
    return handler, out


def exchanged(out):
    return [item[2] for item in out if item[0] == ITEM_SQL_EXCHANGE]


def check_pairing(out):
    """Every request item has exactly one exchange item after it, in order,
    but for prepares that ended without a span (ITEM_SQL_PREPARED after
    their request item); returns the exchanged queries."""
    prepared = {id(item[2]) for item in out if item[0] == ITEM_SQL_PREPARED}
    for i, item in enumerate(out):
        if item[0] == ITEM_SQL_PREPARED:
            first = next(j for j, other in enumerate(out) if other[2] is item[2])
            assert out[first][0] == ITEM_SQL_REQUEST and first < i
    requests = [item[2] for item in out
                if item[0] == ITEM_SQL_REQUEST and id(item[2]) not in prepared]
    done = exchanged(out)
    assert [id(q) for q in requests] == [id(q) for q in done]
    for i, item in enumerate(out):
        if item[0] == ITEM_SQL_EXCHANGE:
            first = next(j for j, other in enumerate(out) if other[2] is item[2])
            assert out[first][0] == ITEM_SQL_REQUEST and first < i
    return done


def replay(protocol, name, side="client", role=None, chunk=None, handler=None):
    r = Replay(protocol, side, role)
    r.extend(writes(protocol, name), chunk)
    counts, errors = {}, {}
    handler, out = feed(r.records, handler, counts, errors)
    return handler, out, handler.counts, handler.parse_errors


# ----------------------------------------------------------------- expectations

SEL_BALANCE = "SELECT balance FROM accounts WHERE id = $1"
PG_EXPECTED = {
    "psycopg_simple": ["SELECT id, owner FROM accounts WHERE balance > 10 ORDER BY id",
                       "UPDATE accounts SET balance = balance + 1 WHERE id = 2"],
    "psycopg_prepared": ["SELECT owner FROM accounts WHERE id = $1"] + [SEL_BALANCE] * 3,
    "psycopg_errors": ["INSERT INTO accounts VALUES ($1, $2, $3)", "SELEC owner FROM accounts",
                       "SELECT 1"],
    "psycopg_transaction": ["BEGIN", "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                            "COMMIT"],
    "psycopg_sslrequest": ["SELECT 1"],
    # Parse/Describe/Flush then Bind/Execute/Sync, or Parse/Describe/Flush/Sync
    # when the Parse fails: the prepare is the failed operation.
    "asyncpg_errors": ["SELECT owner FROM accounts WHERE id = $1",
                       "SELECT owner FROM missing_table WHERE id = $1",
                       "SELECT missing_column FROM accounts WHERE id = $1",
                       "SELEC owner FROM accounts WHERE id = $1",
                       "SELECT balance FROM accounts WHERE id = $1"],
    "pgbench_simple_2": 20,
    "pgbench_prepared_2": ["SELECT abalance FROM pgbench_accounts WHERE aid = $1;"] * 20,
    "pgbench_simple": 2,
    "pgbench_prepared": 2,
}
PG_ERRORS = {"psycopg_errors": ["23505", "42601", None],
             "asyncpg_errors": [None, "42P01", "42703", "42601", None]}
MY_EXPECTED = {
    "pymysql_text": ["SET NAMES utf8mb4", "SET AUTOCOMMIT = 0",
                     "SELECT id, item, qty FROM orders WHERE qty > 1 ORDER BY id",
                     "UPDATE orders SET qty = qty + 1 WHERE id = 2",
                     "INSERT INTO orders VALUES (3, 'plum', 7)",
                     "DELETE FROM orders WHERE id = 3", "COMMIT"],
    "pymysql_errors": ["SET NAMES utf8mb4", "SET AUTOCOMMIT = 0",
                       "INSERT INTO orders VALUES (1, 'dup', 1)", "SELEC item FROM orders"],
    "pymysql_init_db": ["SET NAMES utf8mb4", "SET AUTOCOMMIT = 0", "SELECT COUNT(*) FROM orders"],
    "connector_prepared": ["SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
                           "SET @@session.autocommit = OFF",
                           "SELECT item, qty FROM orders WHERE id = ?",
                           "SELECT item, qty FROM orders WHERE id = ?",
                           "UPDATE orders SET qty = ? WHERE id = ?", "COMMIT"],
}
MY_ERRORS = {"pymysql_errors": [None, None, "1062", "1064"]}
CASES = ([(PG, name) for name in PG_EXPECTED] + [(MY, name) for name in MY_EXPECTED])
IDS = [f"{'pg' if p == PG else 'my'}-{n}" for p, n in CASES]
QUIET = ("sql_requests_without_response", "sql_responses_without_request", "sql_framing_lost",
         "sql_events_without_direction", "sql_events_skipped_resync", "sql_unknown_statements",
         "sql_executes_skipped", "sql_tls_connections", "sql_statements_evicted", "event_gaps")


def check_case(protocol, name, out, counts, errors):
    done = check_pairing(out)
    expected = (PG_EXPECTED if protocol == PG else MY_EXPECTED)[name]
    if isinstance(expected, int):
        assert len(done) == expected
        if name == "pgbench_simple_2":
            assert all(q.text.startswith("SELECT abalance FROM pgbench_accounts WHERE aid = ")
                       for q in done)
    else:
        assert [q.text for q in done] == expected
    codes = (PG_ERRORS if protocol == PG else MY_ERRORS).get(name, [None] * len(done))
    assert [q.error_code for q in done] == codes
    system = "postgresql" if protocol == PG else "mariadb"
    assert {q.system for q in done} == {system}
    if protocol == PG:
        assert {q.namespace for q in done} == {"postgres"}
    elif name != "pymysql_init_db":
        assert {q.namespace for q in done} == {"shop"}
    for q in done:
        assert q.end_ns > q.start_ns
        assert q.context is None
    assert not errors
    assert {k: counts[k] for k in QUIET if counts[k]} == {}
    return done


# ------------------------------------------------------ crafted answers
# Here rather than with the truncation tests: the lost-record, TLS and
# housekeeping tests (and test_pg_prepare.py) build on them too.

def pg_msg(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def pg_big_answer(rows: int = 400, tail: bytes | None = None) -> bytes:
    """RowDescription, `rows` DataRows of about 60 bytes, then (by default)
    CommandComplete and ReadyForQuery."""
    desc = pg_msg(b"T", b"\0\x01" + b"payload\0" + bytes(18))
    value = b"x" * 50
    row = pg_msg(b"D", b"\0\x01" + len(value).to_bytes(4, "big") + value)
    if tail is None:
        tail = pg_msg(b"C", b"SELECT %d\0" % rows) + pg_msg(b"Z", b"I")
    return desc + row * rows + tail


def pg_query(text: str) -> bytes:
    return pg_msg(b"Q", text.encode() + b"\0")


def pg_session(big: bytes, capture: int, tail: bool, side: str = "client"):
    """Startup, a query answered by `big` in one write of which `capture`
    bytes were kept, then a second query answered in full."""
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG, side)
    r.extend(conversation[:2])
    r.add("c", pg_query("SELECT payload FROM big"))
    if tail:
        payload, flags = big[:capture - TAIL_BYTES] + big[-TAIL_BYTES:], FLAG_TAIL
    else:
        payload, flags = big[:capture], 0
    big_times = r.add("s", payload, length=len(big), flags=flags)
    r.extend(conversation[4:6])
    r.add("c", conversation[6][1])
    return r, big_times


def my_packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def my_big_answer(rows: int = 300, final: bytes | None = None) -> bytes:
    """A one-column result set (no CLIENT_DEPRECATE_EOF): count, column
    definition, EOF, rows, then `final` (by default the EOF)."""
    out = my_packet(1, b"\x01") + my_packet(2, b"\x03def" + bytes(30)) \
        + my_packet(3, b"\xfe\0\0\x22\0")
    seq = 4
    for _ in range(rows):
        out += my_packet(seq & 0xFF, b"\x32" + b"z" * 50)
        seq += 1
    if final is None:
        final = b"\xfe\0\0\x22\0"
    return out + my_packet(seq & 0xFF, final)
