"""The PostgreSQL and MySQL handlers (behind the router) against the recorded PostgreSQL and MySQL/MariaDB
conversations of tests/fixtures/postgres and tests/fixtures/mysql (made by
tests/fixtures/capture_sql.py), replayed as kernel events, plus crafted
responses for truncation, lost records and joining mid-connection.

The fixtures hold whole streams, not syscalls: the helpers below cut them
where the peers would have written (a PostgreSQL client's write ends with a
Sync, a Query or a startup packet, the server's with ReadyForQuery; a MySQL
command and its whole answer are one write each) and interleave each
request with its answer."""
from __future__ import annotations

import os

import pytest

from agent.parsers import PARSED
from agent.parsers import mysql as my
from agent.parsers import postgres as pg
from agent.capture.records import C, prefix_struct
from agent.protocols.mysql import MysqlHandler
from agent.protocols.postgres import PostgresHandler
from agent.protocols.router import ProtocolRouter
from agent.protocols.sql_base import COUNTERS as SQL_COUNTERS, PREPARE_DONE
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
HOT = prefix_struct("struct event_header", "seq")
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


# -------------------------------------------------------------------- tests

def test_count_keys_registered():
    counts = ProtocolRouter().counts
    assert {c.key for c in SQL_COUNTERS} <= set(counts)
    assert all(c.key.startswith("sql_") and c.metric.name.startswith("sql_")
               for c in SQL_COUNTERS)


@pytest.mark.parametrize("protocol,name", CASES, ids=IDS)
@pytest.mark.parametrize("side,role", [("client", None), ("client", ROLE_UNKNOWN),
                                       ("server", None), ("server", ROLE_UNKNOWN)],
                         ids=["client", "client-inferred", "server", "server-inferred"])
def test_fixture_conversations(protocol, name, side, role):
    handler, out, counts, errors = replay(protocol, name, side, role)
    check_case(protocol, name, out, counts, errors)
    conn = out[0][1]
    assert conn.role == (ROLE_CLIENT if side == "client" else ROLE_SERVER)
    assert counts["connections_opened"] == 1 and len(handler) == 1
    out2 = []
    handler.close(7, out2)
    assert out2 == [] and len(handler) == 0 and counts["connections_closed"] == 1
    assert counts["sql_requests_without_response"] == 0


@pytest.mark.parametrize("protocol,name", CASES, ids=IDS)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_fixture_conversations_in_pieces(protocol, name, chunk):
    """Each write split into reads of `chunk` bytes: messages are put
    together across events."""
    _, out, counts, errors = replay(protocol, name, "server", chunk=chunk)
    check_case(protocol, name, out, counts, errors)


def test_times_client_and_server_side():
    conversation = pg_writes("psycopg_simple")
    # Events: 1 startup, 2 auth..Z, 3 Q, 4 its answer, 5 Q, 6 its answer, 7 Terminate.
    _, out, _, _ = replay(PG, "psycopg_simple", "client")
    first, second = exchanged(out)
    assert (first.start_ns, first.end_ns) == (3000, 4500)
    assert (second.start_ns, second.end_ns) == (5000, 6500)
    assert first.tid == 301        # the thread that wrote it
    _, out, _, _ = replay(PG, "psycopg_simple", "server")
    first, second = exchanged(out)
    assert (first.start_ns, first.end_ns) == (3500, 4500)   # after the read, to the write
    assert first.tid == 301        # the thread that read it
    assert len(conversation) == 7


def test_mysql_times_and_items_order():
    _, out, _, _ = replay(MY, "pymysql_text", "client")
    kinds = [item[0] for item in out]
    assert kinds == [ITEM_SQL_REQUEST, ITEM_SQL_EXCHANGE] * 7
    for q in exchanged(out):
        assert q.start_ns % 1000 == 0 and q.end_ns == q.start_ns + 1500


def test_sqlcommenter_trace_context():
    _, out, counts, errors = replay(PG, "psycopg_sqlcommenter")
    (q,) = check_pairing(out)
    assert q.traceparent == TRACEPARENT
    assert q.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert "/*action=" in q.text          # the raw text: the span factory sanitises
    _, out, _, _ = replay(PG, "psycopg_simple")
    assert all(q.traceparent is None and q.tracestate is None for q in exchanged(out))


def test_pg_errors_are_error_codes_only():
    _, out, _, _ = replay(PG, "psycopg_errors")
    done = exchanged(out)
    assert [q.error_code for q in done] == ["23505", "42601", None]
    for q in done:      # the messages quote values: not kept
        assert "duplicate" not in repr([getattr(q, slot) for slot in q.__slots__])


def test_mysql_init_db_changes_namespace():
    handler, out, _, _ = replay(MY, "pymysql_init_db")
    done = exchanged(out)
    assert [q.namespace for q in done] == [None, None, "shop"]
    assert handler.connections[7].namespace == "other"
    assert len(out) == 6       # COM_INIT_DB, COM_PING and COM_QUIT make no items


def test_mysql_system_from_greeting():
    conversation = my_writes("pymysql_text")
    greeting = conversation[0][1].replace(b"MariaDB", b"Mxxxxxx")
    r = Replay(MY)
    r.extend([("s", greeting)] + conversation[1:])
    _, out = feed(r.records)
    assert {q.system for q in exchanged(out)} == {"mysql"}


def test_pg_namespace_defaults_to_user():
    body = b"user\0alice\0\0"
    startup = (8 + len(body)).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + body
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend([("c", startup)] + conversation[1:])
    _, out = feed(r.records)
    assert {q.namespace for q in exchanged(out)} == {"alice"}


# A MySQL client learns a statement's id from the answer to its prepare:
# it cannot send the execute before reading that.
PIPELINED = [(p, n) for p, n in CASES if n != "connector_prepared"]


@pytest.mark.parametrize("protocol,name", PIPELINED,
                         ids=[i for i, c in zip(IDS, CASES) if c in PIPELINED])
def test_pipelined(protocol, name):
    """Every request written before any answer (after the login), and all
    the answers in one read: each completes, in order."""
    conversation = writes(protocol, name)
    setup = login_length(protocol, conversation)
    head, rest = conversation[:setup], conversation[setup:]
    requests = b"".join(d for s, d in rest if s == "c")
    answers = b"".join(d for s, d in rest if s == "s")
    r = Replay(protocol, "client")
    r.extend(head + [("c", requests), ("s", answers)])
    _, out = feed(r.records)
    done = check_pairing(out)
    expected = (PG_EXPECTED if protocol == PG else MY_EXPECTED)[name]
    assert len(done) == (expected if isinstance(expected, int) else len(expected))
    if not isinstance(expected, int):
        assert [q.text for q in done] == expected
    codes = (PG_ERRORS if protocol == PG else MY_ERRORS).get(name, [None] * len(done))
    assert [q.error_code for q in done] == codes
    # A prepare (Parse, Sync: psycopg's and pgbench's) is a request that
    # ends without a span; the statement it prepared runs later.
    prepared = [item[2] for item in out if item[0] == ITEM_SQL_PREPARED]
    assert {q.text for q in prepared} <= {q.text for q in done}
    prepares = len(prepared)
    kinds = [item[0] for item in out if item[0] != ITEM_SQL_PREPARED]
    assert kinds == [ITEM_SQL_REQUEST] * (len(done) + prepares) + [ITEM_SQL_EXCHANGE] * len(done)


def test_pg_pipelined_error_skips_rest_of_unit():
    """Executes after a failed one in the same Sync unit get no item."""
    def msg(kind, body):
        return kind + (len(body) + 4).to_bytes(4, "big") + body
    parse = msg(b"P", b"\0SELECT 1/0\0\0\0")
    bind = msg(b"B", b"\0\0\0\0\0\0\0\0")
    execute = msg(b"E", b"\0\0\0\0\0")
    sync = msg(b"S", b"")
    error = msg(b"E", b"SERROR\0C22012\0Mdivision by zero\0\0")
    answer = msg(b"1", b"") + msg(b"2", b"") + error + msg(b"Z", b"I")
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:2])
    r.add("c", parse + bind + execute + bind + execute + sync)
    r.add("s", answer)
    r.extend(conversation[2:4])
    counts = {}
    _, out = feed(r.records, counts=counts)
    done = exchanged(out)
    assert [(q.text, q.error_code) for q in done] == [("SELECT 1/0", "22012"),
                                                        (PG_EXPECTED["psycopg_simple"][0], None)]
    assert counts["sql_executes_skipped"] == 1
    assert len([i for i in out if i[0] == ITEM_SQL_REQUEST]) == 3


# ------------------------------------------------------------- truncation

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


def test_pg_truncated_answer_without_tail_completes_at_next_request():
    r, (_, big_end) = pg_session(pg_big_answer(), 256, tail=False)
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    assert first.text == "SELECT payload FROM big" and first.error_code is None
    assert first.end_ns == big_end
    assert second.text == PG_EXPECTED["psycopg_simple"][1] and second.end_ns > second.start_ns
    assert counts["sql_framing_lost"] == 1 and counts["sql_fallback_completions"] == 1
    # The completion is emitted when the next request is seen, before it.
    kinds = [i[0] for i in out]
    assert kinds == [ITEM_SQL_REQUEST, ITEM_SQL_EXCHANGE, ITEM_SQL_REQUEST, ITEM_SQL_EXCHANGE]


def test_pg_truncated_answer_with_tail_completes_at_once():
    r, (_, big_end) = pg_session(pg_big_answer(), 256, tail=True)
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    assert (first.end_ns, first.error_code) == (big_end, None)
    assert counts["sql_tail_recoveries"] == 1 and counts["sql_framing_lost"] == 0
    assert counts["sql_fallback_completions"] == 0
    assert second.error_code is None


def test_pg_truncated_answer_ending_in_error():
    error = pg_msg(b"E", b"SERROR\0C57014\0Mcanceled\0\0")
    big = pg_big_answer(tail=error + pg_msg(b"Z", b"I"))
    r, (_, big_end) = pg_session(big, 256, tail=True)
    _, out = feed(r.records)
    first, _ = check_pairing(out)
    assert (first.end_ns, first.error_code) == (big_end, "57014")
    # Without the tail the outcome is unknown: no error is made up.
    r, _ = pg_session(big, 256, tail=False)
    _, out = feed(r.records)
    assert exchanged(out)[0].error_code is None


def test_pg_tail_without_ready_for_query_falls_back():
    big = pg_big_answer(rows=400, tail=b"")           # more rows follow in another write
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:2])
    r.add("c", pg_query("SELECT payload FROM big"))
    r.add("s", big[:192] + big[-TAIL_BYTES:], length=len(big), flags=FLAG_TAIL)
    three = pg_big_answer(rows=3)
    last = r.add("s", three[three.index(b"D\0\0\0"):])      # rows, C, Z
    r.extend(conversation[4:6])
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    # The next read started with a DataRow: framing resumed there.
    assert first.end_ns == last[1]
    assert counts["sql_framing_lost"] == 1 and counts["sql_fallback_completions"] == 0


@pytest.mark.parametrize("tail", [False, True])
def test_pg_lost_answer_ends_in_a_later_event(tail):
    """Framing lost in the first read of a long answer; the later reads
    start inside rows (skipped), the last one ends with ReadyForQuery."""
    big = pg_big_answer(rows=1000)
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:2])
    r.add("c", pg_query("SELECT payload FROM big"))
    cuts = [0, 16001, 32003, 48005, len(big)]
    for a, b in zip(cuts, cuts[1:]):
        part = big[a:b]
        if tail:
            end = r.add("s", part[:192] + part[-TAIL_BYTES:], length=len(part), flags=FLAG_TAIL)
        else:
            end = r.add("s", part[:256] if b != len(big) else part, length=len(part))
    r.extend(conversation[4:6])
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    assert first.end_ns == end[1] and first.error_code is None
    assert counts["sql_fallback_completions"] == 0
    assert counts["sql_framing_lost"] + counts["sql_tail_recoveries"] >= 1
    assert second.text == PG_EXPECTED["psycopg_simple"][1]


def test_mysql_lost_answer_ends_in_a_later_event():
    big = my_big_answer(rows=1000)
    conversation = my_writes("pymysql_text")
    setup = login_length(MY, conversation)
    r = Replay(MY)
    r.extend(conversation[:setup])
    r.add("c", my_packet(0, b"\x03SELECT doc FROM big"))
    r.add("s", big[:256], length=20001)
    r.add("s", big[20001:20001 + 256], length=20002)
    end = r.add("s", big[40003:])
    r.extend(conversation[setup:setup + 2])
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    assert first.end_ns == end[1] and counts["sql_fallback_completions"] == 0
    assert counts["sql_framing_lost"] == 1 and counts["sql_tail_recoveries"] == 1


def test_pg_huge_row_skipped_across_events():
    """A DataRow longer than three reads, each captured 256 bytes: skipped
    by its declared length, no framing lost."""
    desc = pg_msg(b"T", b"\0\x01" + b"doc\0" + bytes(18))
    value = b"y" * 16500
    big = desc + pg_msg(b"D", b"\0\x01" + len(value).to_bytes(4, "big") + value) \
        + pg_msg(b"C", b"SELECT 1\0") + pg_msg(b"Z", b"I")
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG, "server")
    r.extend(conversation[:2])
    r.add("c", pg_query("SELECT doc FROM docs"))
    r.add("s", big[:256], length=8192)
    r.add("s", big[8192:8192 + 256], length=8192)
    _, end = r.add("s", big[16384:])
    r.extend(conversation[4:6])
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    assert first.end_ns == end and first.error_code is None
    assert counts["sql_framing_lost"] == 0 and counts["sql_tail_recoveries"] == 0


def test_pg_truncated_query_text_is_its_prefix():
    text = "SELECT " + ", ".join(f"col{i}" for i in range(2000)) + " FROM wide"
    message = pg_query(text)
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:2])
    r.add("c", message[:512], length=len(message))
    r.add("s", conversation[3][1])
    _, out = feed(r.records)
    (q,) = exchanged(out)
    assert text.startswith(q.text) and 400 < len(q.text) < 512


def test_pg_big_parse_then_tail_chain():
    """Parse of a long text, Bind/Describe/Execute/Sync after it: the
    Bind's header falls in the uncaptured middle, the tail holds the rest."""
    text = "SELECT " + " + ".join(["$1"] * 3000)
    parse = pg_msg(b"P", b"\0" + text.encode() + b"\0\0\0")
    rest = (pg_msg(b"B", b"\0\0\0\0\0\x01\0\0\0\x011\0\0") + pg_msg(b"D", b"P\0")
            + pg_msg(b"E", b"\0\0\0\0\0") + pg_msg(b"S", b""))
    filler = pg_msg(b"H", b"")
    write = parse + filler * 20 + rest
    answer = (pg_msg(b"1", b"") + pg_msg(b"2", b"") + pg_msg(b"T", b"\0\x01a\0" + bytes(18))
              + pg_msg(b"D", b"\0\x01\0\0\0\x011") + pg_msg(b"C", b"SELECT 1\0")
              + pg_msg(b"Z", b"I"))
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:2])
    r.add("c", write[:256 - TAIL_BYTES] + write[-TAIL_BYTES:], length=len(write), flags=FLAG_TAIL)
    r.add("s", answer)
    counts = {}
    _, out = feed(r.records, counts=counts)
    (q,) = check_pairing(out)
    assert q.text is not None and text.startswith(q.text) and q.text.startswith("SELECT $1 + $1")
    assert counts["sql_tail_recoveries"] == 1 and counts["sql_framing_lost"] == 0


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


def my_session(big: bytes, capture: int, tail: bool):
    conversation = my_writes("pymysql_text")
    setup = login_length(MY, conversation)
    r = Replay(MY)
    r.extend(conversation[:setup])
    r.add("c", my_packet(0, b"\x03SELECT doc FROM big"))
    if tail:
        payload, flags = big[:capture - TAIL_BYTES] + big[-TAIL_BYTES:], FLAG_TAIL
    else:
        payload, flags = big[:capture], 0
    times = r.add("s", payload, length=len(big), flags=flags)
    r.extend(conversation[setup:setup + 2])      # SET NAMES and its OK
    return r, times


def test_mysql_truncated_answer_without_tail():
    r, (_, big_end) = my_session(my_big_answer(), 256, tail=False)
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    assert (first.text, first.end_ns, first.error_code) == ("SELECT doc FROM big", big_end, None)
    assert second.text == "SET NAMES utf8mb4" and second.error_code is None
    assert counts["sql_framing_lost"] == 1 and counts["sql_fallback_completions"] == 1


def test_mysql_truncated_answer_with_tail():
    r, (_, big_end) = my_session(my_big_answer(), 256, tail=True)
    counts = {}
    _, out = feed(r.records, counts=counts)
    first, second = check_pairing(out)
    assert (first.end_ns, first.error_code) == (big_end, None)
    assert counts["sql_tail_recoveries"] == 1 and counts["sql_framing_lost"] == 0
    assert second.end_ns > second.start_ns


def test_mysql_truncated_answer_ending_in_error():
    big = my_big_answer(final=b"\xff\x25\x05#70100Query execution was interrupted")
    r, (_, big_end) = my_session(big, 256, tail=True)
    _, out = feed(r.records)
    first, _ = check_pairing(out)
    assert (first.end_ns, first.error_code) == (big_end, "1317")


def test_mysql_huge_row_skipped_across_events():
    big = my_packet(1, b"\x01") + my_packet(2, b"\x03def" + bytes(30)) \
        + my_packet(3, b"\xfe\0\0\x22\0") + my_packet(4, b"\xfc\x40\x9c" + b"r" * 40000) \
        + my_packet(5, b"\xfe\0\0\x22\0")
    conversation = my_writes("pymysql_text")
    setup = login_length(MY, conversation)
    r = Replay(MY, "server")
    r.extend(conversation[:setup])
    r.add("c", my_packet(0, b"\x03SELECT doc FROM docs"))
    r.add("s", big[:256], length=16384)
    r.add("s", big[16384:16384 + 256], length=16384)
    _, end = r.add("s", big[32768:])
    counts = {}
    _, out = feed(r.records, counts=counts)
    (q,) = check_pairing(out)
    assert q.end_ns == end and counts["sql_framing_lost"] == 0


# --------------------------------------------------------- lost records

def test_seq_gap_drops_queries_in_flight():
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:3])              # startup, auth, first query
    r.add("c", conversation[4][1], skip_seq=True)   # its answer's record was lost
    r.add("s", conversation[5][1])
    counts = {}
    _, out = feed(r.records, counts=counts)
    assert [q.text for q in exchanged(out)] == [PG_EXPECTED["psycopg_simple"][1]]
    assert counts["event_gaps"] == 1 and counts["sql_requests_without_response"] == 1


def test_seq_gap_inside_mysql_answer_resyncs():
    conversation = my_writes("pymysql_text")
    setup = login_length(MY, conversation)
    big = my_big_answer(rows=50)
    r = Replay(MY)
    r.extend(conversation[:setup])
    r.add("c", my_packet(0, b"\x03SELECT doc FROM big"))
    r.add("s", big[:1000])
    r.add("s", big[2000:], skip_seq=True)
    r.extend(conversation[setup:setup + 2])
    counts = {}
    _, out = feed(r.records, counts=counts)
    done = exchanged(out)
    assert [q.text for q in done] == ["SET NAMES utf8mb4"]
    assert counts["event_gaps"] == 1 and counts["sql_requests_without_response"] == 1


def test_close_event_gap_counted():
    r = Replay(PG)
    r.extend(pg_writes("psycopg_simple")[:3])
    counts = {}
    handler, _ = feed(r.records, counts=counts)
    out = []
    handler.close(7, out, seq=r.count + 2)
    assert counts["event_gaps"] == 1 and counts["sql_requests_without_response"] == 1
    assert counts["connections_closed"] == 1


# ------------------------------------------------------- joining late

@pytest.mark.parametrize("role", [None, ROLE_UNKNOWN])
def test_pg_joined_mid_connection(role):
    conversation = pg_writes("psycopg_prepared")
    # Skip startup, the unnamed statement's unit and the named Parse.
    r = Replay(PG, role=role)
    r.extend(conversation[6:])
    counts = {}
    _, out = feed(r.records, counts=counts)
    done = check_pairing(out)
    assert [q.text for q in done] == [None] * 3
    assert {q.namespace for q in done} == {None}
    assert counts["sql_unknown_statements"] == 3


@pytest.mark.parametrize("role", [None, ROLE_UNKNOWN])
def test_pg_joined_mid_connection_simple(role):
    conversation = pg_writes("pgbench_simple_2")
    r = Replay(PG, role=role)
    r.add("s", conversation[5][1][:20])          # the end of an answer: no direction yet
    r.extend(conversation[6:])
    counts = {}
    _, out = feed(r.records, counts=counts)
    done = check_pairing(out)
    assert len(done) == 18 and all(q.text.startswith("SELECT abalance") for q in done)
    if role == ROLE_UNKNOWN:
        assert counts["sql_events_without_direction"] == 1


@pytest.mark.parametrize("role", [None, ROLE_UNKNOWN])
def test_mysql_joined_mid_connection(role):
    conversation = my_writes("connector_prepared")
    # From the first COM_STMT_RESET (after the first PREPARE was answered).
    start = next(i for i, (s, d) in enumerate(conversation) if s == "c" and d[4] == 0x1A)
    r = Replay(MY, role=role)
    r.extend(conversation[start:])
    counts = {}
    _, out = feed(r.records, counts=counts)
    done = check_pairing(out)
    assert [q.text for q in done] == [None, None, "UPDATE orders SET qty = ? WHERE id = ?",
                                      "COMMIT"]
    assert {q.system for q in done} == {"mysql"} and {q.namespace for q in done} == {None}
    assert counts["sql_unknown_statements"] == 2


# ------------------------------------------------------------------ TLS

def test_pg_ssl_accepted_ignores_connection():
    ssl = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
    r = Replay(PG, role=ROLE_UNKNOWN)
    r.add("c", ssl)
    r.add("s", b"S")
    r.add("c", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100))
    r.add("s", b"\x16\x03\x03\x00\x7a\x02" + bytes(120))
    counts, errors = {}, {}
    handler, out = feed(r.records, counts=counts, errors=errors)
    assert out == [] and counts["sql_tls_connections"] == 1 and not errors
    # The TLS probes' plaintext then starts the protocol over.
    conversation = pg_writes("psycopg_simple")
    tls = Replay(PG, role=ROLE_UNKNOWN)
    tls.count = r.count
    for sender, data in conversation:
        tls.add(sender, data, flags=C.get("FLAG_TLS", 0))
    if C.get("FLAG_TLS"):
        _, out = feed(tls.records, handler)
        assert [q.text for q in exchanged(out)] == PG_EXPECTED["psycopg_simple"]


def test_mysql_ssl_request_ignores_connection():
    conversation = my_writes("pymysql_text")
    login = conversation[1][1]
    caps = int.from_bytes(login[4:8], "little") | my.CLIENT_SSL
    ssl_request = my_packet(1, caps.to_bytes(4, "little") + login[8:36])
    r = Replay(MY)
    r.add("s", conversation[0][1])
    r.add("c", ssl_request)
    r.add("c", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100))
    counts, errors = {}, {}
    _, out = feed(r.records, counts=counts, errors=errors)
    assert out == [] and counts["sql_tls_connections"] == 1 and not errors


# ------------------------------------------------------------ housekeeping

def test_close_counts_unanswered():
    r = Replay(PG)
    r.extend(pg_writes("psycopg_simple")[:3])
    counts = {}
    handler, out = feed(r.records, counts=counts)
    assert [i[0] for i in out] == [ITEM_SQL_REQUEST]
    handler.close(7, out)
    handler.close(7, out)            # twice: nothing more
    assert counts["sql_requests_without_response"] == 1 and counts["connections_closed"] == 1
    assert len(handler) == 0 and len(out) == 1


def test_close_after_lost_framing_completes():
    r, (_, big_end) = pg_session(pg_big_answer(), 256, tail=False)
    counts = {}
    handler, out = feed(r.records[:4], counts=counts)
    handler.close(7, out)
    (q,) = exchanged(out)
    assert q.end_ns == big_end and counts["sql_fallback_completions"] == 1
    assert counts["sql_requests_without_response"] == 0


def test_expire_idle_and_request_timeout():
    r = Replay(MY)
    r.extend(my_writes("pymysql_text")[:4])         # login, then SET NAMES unanswered
    counts = {}
    handler = SqlConnectionHandler(counts, {}, request_timeout_ns=10_000)
    handler, out = feed(r.records, handler)
    sent = out[-1][2]
    assert out[-1][0] == ITEM_SQL_REQUEST
    assert handler.expire(sent.start_ns + 5_000, 10**12) == 0
    assert counts["sql_requests_without_response"] == 0
    assert handler.expire(sent.start_ns + 20_000, 10**12) == 0
    assert counts["sql_requests_without_response"] == 1
    # The late answer still lines up: no item for it, the next query pairs.
    rest = Replay(MY)
    rest.count = r.count
    rest.extend(my_writes("pymysql_text")[4:7])
    _, out = feed(rest.records, handler)
    done = exchanged(out)
    assert [q.text for q in done] == ["SET AUTOCOMMIT = 0"]
    last = handler.router.table.by_id[7].last_seen_ns
    assert handler.expire(last + 10, 100) == 0
    assert handler.expire(last + 1000, 100) == 1
    assert len(handler) == 0 and counts["connections_expired"] == 1


def test_forget_process_and_eviction():
    counts = {}
    handler = SqlConnectionHandler(counts, {}, max_connections=2)
    for conn_id, pid in ((1, 10), (2, 20), (3, 20)):
        r = Replay(PG, conn_id=conn_id, pid=pid)
        r.extend(pg_writes("psycopg_simple")[:3])
        feed(r.records, handler)
    assert len(handler) == 2 and counts["connections_evicted"] == 1
    assert counts["sql_requests_without_response"] == 1
    handler.forget_process(20)
    assert len(handler) == 0 and counts["connections_expired"] == 2
    assert counts["sql_requests_without_response"] == 3


def test_statement_map_bounded():
    counts = {}
    handler = SqlConnectionHandler(counts, {}, max_statements=1)
    _, out, _, _ = replay(PG, "psycopg_prepared", handler=handler)
    assert [q.text for q in exchanged(out)] == PG_EXPECTED["psycopg_prepared"]
    assert counts["sql_statements_evicted"] == 1


def test_mysql_statement_closed_and_unknown():
    conversation = my_writes("connector_prepared")
    # Execute statement 1 again after COM_STMT_CLOSE: its text is gone.
    close = next(d for s, d in conversation if s == "c" and d[4] == 0x19)
    execute, answer = next((d, conversation[i + 1][1]) for i, (s, d) in enumerate(conversation)
                           if s == "c" and d[4] == 0x17)
    idx = conversation.index(("c", close))
    r = Replay(MY)
    r.extend(conversation[:idx + 1] + [("c", execute), ("s", answer)])
    counts = {}
    _, out = feed(r.records, counts=counts)
    assert [q.text for q in exchanged(out)][-1] is None
    assert counts["sql_unknown_statements"] == 1


def test_pending_bounded():
    counts = {}
    handler = SqlConnectionHandler(counts, {}, max_pending=2)
    conversation = pg_writes("pgbench_simple_2")
    r = Replay(PG)
    r.extend(conversation[:2])
    for sender, data in conversation[2:12]:
        if sender == "c":
            r.add("c", data)
    _, out = feed(r.records, handler)
    assert counts["sql_requests_without_response"] == 1   # 5 sent, 4 kept
    assert len(handler.connections[7].pending) == 4


def test_bad_bytes_counted_not_raised():
    conversation = pg_writes("psycopg_simple")
    r = Replay(PG)
    r.extend(conversation[:2])
    r.add("c", b"Q\xff\xff\xff\xffjunk")
    r.add("s", b"\x00\x01\x02")
    r.extend(conversation[2:4])
    errors = {}
    _, out = feed(r.records, errors=errors)
    assert [q.text for q in exchanged(out)] == PG_EXPECTED["psycopg_simple"][:1]
    assert errors and all(k[0] == "postgresql" for k in errors)


def test_mysql_use_and_local_infile():
    conversation = my_writes("pymysql_text")
    setup = login_length(MY, conversation)
    ok = my_packet(1, b"\0\0\0\x02\0\0\0")
    r = Replay(MY)
    r.extend(conversation[:setup])
    r.add("c", my_packet(0, b"\x03USE `other`"))
    r.add("s", ok)
    r.add("c", my_packet(0, b"\x03LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE t"))
    r.add("s", my_packet(1, b"\xfbx.csv"))
    r.add("c", my_packet(2, b"1,apple\n2,pear\n") + my_packet(3, b""))
    _, end = r.add("s", my_packet(4, b"\0\x02\0\x02\0\0\0"))
    r.extend(conversation[setup:setup + 2])
    counts = {}
    handler, out = feed(r.records, counts=counts)
    use, load, names = check_pairing(out)
    assert use.namespace == "shop" and load.namespace == names.namespace == "other"
    assert load.end_ns == end and load.error_code is None
    assert handler.connections[7].namespace == "other"
    assert counts["sql_responses_without_request"] == 0


def test_mysql_answer_without_command_counted():
    conversation = my_writes("pymysql_text")
    setup = login_length(MY, conversation)
    r = Replay(MY)
    r.extend(conversation[:setup])
    r.add("s", my_packet(1, b"\0\0\0\x02\0\0\0"))
    r.extend(conversation[setup:setup + 2])
    counts = {}
    _, out = feed(r.records, counts=counts)
    assert [q.text for q in exchanged(out)] == ["SET NAMES utf8mb4"]
    assert counts["sql_responses_without_request"] == 1


def test_scanner_failure_is_counted_and_masks_the_text(monkeypatch):
    """A defect in the SQL scanner must not pass silently: each statement
    it fails on is counted as a parse error, and its text leaves fully
    masked, never raw."""
    import agent.parsers.sql as sql_parser

    def broken(*_):
        raise RuntimeError("scanner defect")

    monkeypatch.setattr(sql_parser, "_sanitize_cached", broken)
    monkeypatch.setattr(sql_parser, "_sanitize", broken)
    handler, out, counts, errors = replay(PG, "psycopg_simple")
    done = exchanged(out)
    assert len(done) == 2
    assert all(q.sanitized == "?" and q.summary is None for q in done)
    assert errors == {("postgresql", "sanitize_failed"): 2}


def test_trace_context_failure_is_counted(monkeypatch):
    import agent.protocols.sql_base as sql_base

    def broken(_):
        raise RuntimeError("scanner defect")

    monkeypatch.setattr(sql_base, "extract_trace_context", broken)
    r = Replay(PG)
    conversation = pg_writes("psycopg_simple")
    r.extend(conversation[:2])
    text = f"SELECT 1 /*traceparent='{TRACEPARENT}'*/".encode()
    r.add("c", b"Q" + (len(text) + 5).to_bytes(4, "big") + text + b"\0")
    errors = {}
    _, out = feed(r.records, errors=errors)
    requests = [item[2] for item in out if item[0] == ITEM_SQL_REQUEST]
    assert requests and requests[-1].traceparent is None
    assert errors == {("postgresql", "trace_context_failed"): 1}
