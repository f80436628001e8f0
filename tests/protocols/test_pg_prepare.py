"""PostgreSQL Sync units without an Execute (a client that prepares first):
a prepare the server rejects is the failed operation, one that succeeds
gives no span, and the same-node links of both ends stay in step.  The
recorded asyncpg conversation (asyncpg_errors) is replayed with the other
fixtures in test_sql_conversations.py; these are the cases around it."""
from __future__ import annotations

from agent.capture.records import C
from agent.protocols.router import ProtocolRouter
from agent.spans.builder import ExchangeLinker
from event_records import make_record
from sql_replay import (ITEM_SQL_PREPARED, PG, QUIET, Replay, check_pairing, exchanged, feed, pg_msg,
                        pg_writes)

ERROR_42P01 = pg_msg(b"E", b"SERROR\0VERROR\0C42P01\0Mrelation does not exist\0\0")
READY = pg_msg(b"Z", b"I")
FLUSH, SYNC = pg_msg(b"H", b""), pg_msg(b"S", b"")


def parse(name: bytes, text: bytes) -> bytes:
    return pg_msg(b"P", name + b"\0" + text + b"\0\0\0")


def describe_statement(name: bytes) -> bytes:
    return pg_msg(b"D", b"S" + name + b"\0")


def bind(statement: bytes, portal: bytes = b"") -> bytes:
    return pg_msg(b"B", portal + b"\0" + statement + b"\0\0\0\0\0\0\0")


def execute(portal: bytes = b"") -> bytes:
    return pg_msg(b"E", portal + b"\0\0\0\0\0")


PREPARED_OK = pg_msg(b"1", b"") + pg_msg(b"t", b"\0\0") + pg_msg(b"n", b"") + READY
EXECUTED_OK = pg_msg(b"2", b"") + pg_msg(b"C", b"SELECT 0\0") + READY


def session(*exchanges, side: str = "client") -> Replay:
    """The psycopg_simple start-up, then (client bytes, server bytes) pairs."""
    r = Replay(PG, side)
    r.extend(pg_writes("psycopg_simple")[:2])
    for request, answer in exchanges:
        r.add("c", request)
        r.add("s", answer)
    return r


def quiet(counts) -> dict:
    return {k: counts[k] for k in QUIET if counts[k]}


def test_failed_parse_without_execute_is_an_error_span_on_both_sides():
    for side in ("client", "server"):
        r = session((parse(b"s1", b"SELECT a FROM missing") + describe_statement(b"s1") + FLUSH
                     + SYNC, ERROR_42P01 + READY), side=side)
        handler, out = feed(r.records)
        done = check_pairing(out)
        assert [(q.text, q.error_code, q.summary) for q in done] == \
            [("SELECT a FROM missing", "42P01", "SELECT missing")]
        assert (done[0].start_ns, done[0].end_ns) == ((3000, 4500) if side == "client"
                                                      else (3500, 4500))
        assert quiet(handler.counts) == {}


def test_successful_prepare_gives_no_span_and_the_execution_one():
    r = session((parse(b"s1", b"SELECT 1") + describe_statement(b"s1") + SYNC, PREPARED_OK),
                (bind(b"s1") + execute() + SYNC, EXECUTED_OK))
    handler, out = feed(r.records)
    done = check_pairing(out)
    assert [(q.text, q.error_code) for q in done] == [("SELECT 1", None)]
    assert [item[2].text for item in out if item[0] == ITEM_SQL_PREPARED] == ["SELECT 1"]
    assert quiet(handler.counts) == {}


def test_prepare_and_execute_of_one_unit_in_two_writes_is_one_span():
    """The Parse in one write, the Execute of its unit in the next: the
    Execute carries the unit's outcome, an error included."""
    r = Replay(PG)
    r.extend(pg_writes("psycopg_simple")[:2])
    r.add("c", parse(b"", b"SELECT a FROM missing") + bind(b"") + FLUSH)
    r.add("c", execute() + SYNC)
    r.add("s", ERROR_42P01 + READY)
    handler, out = feed(r.records)
    assert [(q.text, q.error_code) for q in check_pairing(out)] == \
        [("SELECT a FROM missing", "42P01")]
    assert len([item for item in out if item[0] == ITEM_SQL_PREPARED]) == 1
    assert quiet(handler.counts) == {}


def test_failed_bind_of_a_prepared_statement_names_the_statement():
    r = session((parse(b"s1", b"SELECT $1::int") + SYNC, PREPARED_OK),
                (bind(b"s1", b"p1") + SYNC,
                 pg_msg(b"E", b"SERROR\0C22P02\0Minvalid input\0\0") + READY))
    handler, out = feed(r.records)
    assert [(q.text, q.error_code) for q in check_pairing(out)] == \
        [("SELECT $1::int", "22P02")]
    assert quiet(handler.counts) == {}


def test_pipelined_units_the_error_goes_to_the_unit_that_failed():
    """Two prepares and an execution written at once; the second prepare
    fails: one error span, the execution after it still completes."""
    r = session((parse(b"s1", b"SELECT 1") + SYNC + parse(b"s2", b"SELECT a FROM missing") + SYNC
                 + bind(b"s1") + execute() + SYNC,
                 pg_msg(b"1", b"") + READY + ERROR_42P01 + READY + EXECUTED_OK))
    handler, out = feed(r.records)
    assert [(q.text, q.error_code) for q in check_pairing(out)] == \
        [("SELECT a FROM missing", "42P01"), ("SELECT 1", None)]
    assert quiet(handler.counts) == {}


def test_lost_framing_ending_in_a_failed_prepare_recovers_it_from_the_tail():
    """The server's answer read in one event whose middle was not captured:
    its tail (FLAG_TAIL) shows the ErrorResponse and ReadyForQuery."""
    r = Replay(PG)
    r.extend(pg_writes("psycopg_simple")[:2])
    r.add("c", parse(b"s1", b"SELECT a FROM missing") + describe_statement(b"s1") + SYNC)
    notices = pg_msg(b"N", b"SNOTICE\0Mx" + b"y" * 600 + b"\0\0") * 2   # a boundary in the gap
    answer = notices + ERROR_42P01 + READY
    tail_bytes = C["SQL_TAIL_BYTES"]
    assert len(ERROR_42P01 + READY) <= tail_bytes
    r.add("s", answer[:40] + answer[-tail_bytes:], length=len(answer), flags=C["FLAG_TAIL"])
    handler, out = feed(r.records)
    assert [(q.text, q.error_code) for q in exchanged(out)] == [("SELECT a FROM missing", "42P01")]
    assert handler.counts["sql_tail_recoveries"] == 1


# ------------------------------------------------- same-node links

CLIENT_PORT, SERVER_PORT = 40001, 5432
LOOPBACK = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])


def record(server_end: bool, outgoing: bool, data: bytes, ts: int) -> bytes:
    """One event of the connection seen from its client end (conn 1, pid
    100) or its server end (conn 2, pid 200)."""
    local, remote = (SERVER_PORT, CLIENT_PORT) if server_end else (CLIENT_PORT, SERVER_PORT)
    return make_record(
        data, type=C["EVENT_DATA"], pid=200 if server_end else 100, tid=1, fd=9,
        conn_id=2 if server_end else 1, start_ns=ts, end_ns=ts + 10, length=len(data),
        captured=len(data), direction=C["DIRECTION_EGRESS"] if outgoing else C["DIRECTION_INGRESS"],
        role=C["ROLE_SERVER"] if server_end else C["ROLE_CLIENT"], protocol=PG,
        local_addr=LOOPBACK, remote_addr=LOOPBACK, local_port=local, remote_port=remote, family=10)


def test_both_ends_traced_server_spans_stay_children_of_their_client_spans():
    """Prepares that succeed take the link their client end made, so the
    failed prepare and the executions after them pair with the right
    client span."""
    conversation = pg_writes("psycopg_simple")[:2] + [
        ("c", parse(b"s1", b"SELECT 1") + describe_statement(b"s1") + SYNC), ("s", PREPARED_OK),
        ("c", bind(b"s1") + execute() + SYNC), ("s", EXECUTED_OK),
        ("c", parse(b"s2", b"SELECT a FROM missing") + SYNC), ("s", ERROR_42P01 + READY),
        ("c", parse(b"s3", b"SELECT 2") + SYNC), ("s", pg_msg(b"1", b"") + READY),
        ("c", bind(b"s3") + execute() + SYNC), ("s", EXECUTED_OK)]
    records, ts = [], 1000
    for sender, data in conversation:
        # The sender writes, then the other end reads.
        records.append(record(sender == "s", True, data, ts))
        records.append(record(sender == "c", False, data, ts + 100))
        ts += 1000
    router, linker = ProtocolRouter(), ExchangeLinker()
    exchanges = linker.exchanges(router.process(records))
    client = [e for e in exchanges if e.pid == 100]
    server = [e for e in exchanges if e.pid == 200]
    assert [(e.text, e.error_code) for e in client] == [(e.text, e.error_code) for e in server] \
        == [("SELECT 1", None), ("SELECT a FROM missing", "42P01"), ("SELECT 2", None)]
    for c, s in zip(client, server):
        assert (s.trace_id, s.parent_id) == (c.trace_id, c.span_id)
    assert linker.links_tracked() == 0
