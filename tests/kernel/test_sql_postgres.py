"""PostgreSQL end to end: a real PostgreSQL 15 server on loopback, psycopg
(in this pytest process) and pgbench as clients, real BPF programs, spans
checked at an OTLP receiver the way a user reads them in a backend.

Each statement a client runs is one CLIENT span named by its
db.query.summary, with db.query.text sanitised (no literal survives) and
the error's SQLSTATE when it failed.  Most tests trace only this pytest
process (--pid) and only connections to the test server (--port)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET
from databases import (
    DB_COLLECTION_NAME, DB_NAMESPACE, DB_OPERATION_NAME, DB_QUERY_TEXT,
    DB_SYSTEM_NAME, PG_BENCH_DATABASE, PG_DATABASE,
    NUMBERS, SECRET, check_common, check_failed_queries, check_no_leaks, check_succeeded,
    describe, is_sql,
    pgbench_processed, row, trace_this_process, wait_spans, wait_sql_spans,
)
from databases import pgbench_database_fixture, postgres_fixture  # noqa: F401  (fixtures)
from helpers import value, wait_quiet

psycopg = pytest.importorskip("psycopg", reason="psycopg[binary] is not installed in the venv")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
def test_simple_queries_one_span_each_with_sanitised_text(receiver, start_agent, postgres):
    """Simple-query protocol ('Q'): CREATE, INSERT, SELECT, UPDATE, DELETE
    with literal values; the spans name the operation and table, and no
    literal (a string, distinctive numbers) appears anywhere in the spans."""
    postgres.execute("DROP TABLE IF EXISTS users")
    trace_this_process(start_agent, postgres)
    expected = [
        ("CREATE TABLE users (id int PRIMARY KEY, name text, score numeric)",
         ("CREATE TABLE users", "CREATE TABLE", "users",
          "CREATE TABLE users (id int PRIMARY KEY, name text, score numeric)")),
        (f"INSERT INTO users (id, name, score) VALUES (918273645, '{SECRET}', 5550123.75)",
         ("INSERT users", "INSERT", "users",
          "INSERT INTO users (id, name, score) VALUES (?, ?, ?)")),
        ("SELECT name, score FROM users WHERE id = 918273645",
         ("SELECT users", "SELECT", "users", "SELECT name, score FROM users WHERE id = ?")),
        (f"UPDATE users SET score = 271828182 WHERE name = '{SECRET}'",
         ("UPDATE users", "UPDATE", "users", "UPDATE users SET score = ? WHERE name = ?")),
        ("DELETE FROM users WHERE score < 314159265",
         ("DELETE users", "DELETE", "users", "DELETE FROM users WHERE score < ?")),
    ]
    with postgres.connect() as conn:
        for i, (statement, _) in enumerate(expected):
            cursor = conn.execute(statement)
            if i == 2:
                assert cursor.fetchall() == [(SECRET, 5550123.75)]   # the queries really ran
        assert conn.execute("SELECT 1").fetchone() == (1,)

    spans = wait_sql_spans(receiver, postgres.port, len(expected) + 1)
    assert [row(s) for s in spans] == [e for _, e in expected] + [
        ("SELECT", "SELECT", None, "SELECT ?")], describe(spans)
    check_common(spans, postgres)
    check_succeeded(spans)
    # Every span the agent exported, not only the SQL ones.
    check_no_leaks(receiver.spans, [SECRET, *NUMBERS])


def test_server_side_prepared_statement_one_span_per_execution(receiver, start_agent, postgres):
    """psycopg prepare=True: one Parse of a named statement, then a Bind and
    Execute per call; every execution is one span whose text keeps the $n
    placeholders, and the parameter values are not exported."""
    postgres.execute("DROP TABLE IF EXISTS items",
                     "CREATE TABLE items (id int PRIMARY KEY, label text, price numeric)",
                     "INSERT INTO items SELECT i, 'item ' || i, i * 10 FROM generate_series(1, 5) i")
    trace_this_process(start_agent, postgres)
    query = "SELECT label, price FROM items WHERE id = %s AND label <> %s"
    params = [(1, "secret-param-one"), (4, "secret-param-four"), (2, "secret-param-two")]
    with postgres.connect() as conn:
        for id_, label in params:
            assert conn.execute(query, (id_, label), prepare=True).fetchall() == \
                [(f"item {id_}", id_ * 10)]

    text = "SELECT label, price FROM items WHERE id = $1 AND label <> $2"
    spans = wait_sql_spans(receiver, postgres.port, len(params))
    assert [row(s) for s in spans] == [("SELECT items", "SELECT", "items", text)] * len(params), \
        describe(spans)
    check_common(spans, postgres)
    assert all(s.status_code == STATUS_UNSET for s in spans), describe(spans)
    secrets = [label for _, label in params]
    check_no_leaks(receiver.spans, secrets)


def test_failing_queries_carry_the_sqlstate_and_the_connection_goes_on(
        receiver, start_agent, postgres):
    """A unique violation (23505) and a syntax error (42601) are error spans
    with the SQLSTATE as db.response.status_code and error.type; the
    server's message (which quotes the duplicate key) is not exported; the
    next query on the same connection gets its ordinary span."""
    postgres.execute("DROP TABLE IF EXISTS errs",
                     "CREATE TABLE errs (id int PRIMARY KEY, note text)",
                     "INSERT INTO errs VALUES (918273645, 'first')")
    trace_this_process(start_agent, postgres)
    with postgres.connect() as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO errs (id, note) VALUES (918273645, 'secret-literal-dup')")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC note FROM errs WHERE id = 918273645")
        assert conn.execute("SELECT note FROM errs WHERE id = 918273645").fetchone() == ("first",)

    spans = wait_sql_spans(receiver, postgres.port, 3)
    check_failed_queries(spans, postgres, "23505", "42601")
    # PostgreSQL said: duplicate key value violates unique constraint
    # "errs_pkey" / Key (id)=(918273645) already exists / syntax error at or near "SELEC".
    message_parts = ["duplicate key", "errs_pkey", "already exists", "syntax error",
                     "918273645", "secret-literal-dup"]
    check_no_leaks(receiver.spans, message_parts)


def test_transaction_spans_in_order(receiver, start_agent, postgres):
    """psycopg outside autocommit: BEGIN, two statements with server-side
    parameters (unnamed extended-protocol statements, $n in the text),
    COMMIT; then BEGIN, a DELETE, ROLLBACK; one span each, in order."""
    postgres.execute("DROP TABLE IF EXISTS accounts, ledger",
                     "CREATE TABLE accounts (id int PRIMARY KEY, balance int)",
                     "CREATE TABLE ledger (account int, amount int)",
                     "INSERT INTO accounts VALUES (1, 100), (2, 50)")
    trace_this_process(start_agent, postgres)
    with postgres.connect(autocommit=False) as conn:
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (30, 1))
        conn.execute("INSERT INTO ledger (account, amount) VALUES (%s, %s)", (1, -30))
        conn.commit()
        conn.execute("DELETE FROM ledger WHERE account = %s", (1,))
        conn.rollback()
        conn.autocommit = True
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (1,)

    expected = [
        ("BEGIN", "BEGIN", None, "BEGIN"),
        ("UPDATE accounts", "UPDATE", "accounts",
         "UPDATE accounts SET balance = balance - $1 WHERE id = $2"),
        ("INSERT ledger", "INSERT", "ledger", "INSERT INTO ledger (account, amount) VALUES ($1, $2)"),
        ("COMMIT", "COMMIT", None, "COMMIT"),
        ("BEGIN", "BEGIN", None, "BEGIN"),
        ("DELETE ledger", "DELETE", "ledger", "DELETE FROM ledger WHERE account = $1"),
        ("ROLLBACK", "ROLLBACK", None, "ROLLBACK"),
        ("SELECT ledger", "SELECT", "ledger", "SELECT count(*) FROM ledger"),
    ]
    spans = wait_sql_spans(receiver, postgres.port, len(expected))
    assert [row(s) for s in spans] == expected, describe(spans)
    check_common(spans, postgres)
    assert all(s.status_code == STATUS_UNSET for s in spans), describe(spans)
    # One after the other on one connection: each ends before the next starts.
    for earlier, later in zip(spans, spans[1:]):
        assert earlier.end_ns <= later.start_ns, describe([earlier, later])


def test_sqlcommenter_traceparent_joins_the_trace(receiver, start_agent, postgres):
    """A query carrying a sqlcommenter comment is a span of that trace, child
    of the comment's parent id (plain and URL-encoded, as sqlcommenter
    libraries write it); the next query without one starts its own trace."""
    postgres.execute("DROP TABLE IF EXISTS tc_orders", "CREATE TABLE tc_orders (id int)")
    trace_this_process(start_agent, postgres)
    encoded_trace, encoded_parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with postgres.connect() as conn:
        conn.execute("SELECT count(*) FROM tc_orders "
                     f"/*traceparent='00-{TRACE_ID}-{PARENT_ID}-01'*/").fetchall()
        conn.execute("SELECT count(*) FROM tc_orders "
                     f"/*action='list',traceparent='00%2D{encoded_trace}%2D{encoded_parent}%2D01'*/"
                     ).fetchall()
        conn.execute("SELECT count(*) FROM tc_orders").fetchall()

    spans = wait_sql_spans(receiver, postgres.port, 3)
    assert len(spans) == 3, describe(spans)
    plain, encoded, uncommented = spans
    for span in spans:
        assert span.name == "SELECT tc_orders", describe(spans)
        assert span.attributes.get(DB_QUERY_TEXT, "").startswith("SELECT count(*) FROM tc_orders"), \
            describe(spans)
    assert (plain.trace_id, plain.parent_span_id) == (TRACE_ID, PARENT_ID), describe(spans)
    assert plain.span_id not in (PARENT_ID, "0" * 16), describe(spans)
    assert (encoded.trace_id, encoded.parent_span_id) == (encoded_trace, encoded_parent), \
        describe(spans)
    assert uncommented.trace_id not in (TRACE_ID, encoded_trace), describe(spans)
    assert uncommented.parent_span_id == "", describe(spans)


PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = ?"
PGBENCH_SECONDS = 10
PGBENCH_RATE = 1000
# The agent selects a new process of an --exe when the kernel reports its
# exec, within a drain cycle (0.1 s); its /proc scan, every 2 s, would be
# too late for the counts to match.
EXE_RESCAN_WAIT = 0.5
LOSS_METRICS = (
    "otel_ebpf_kernel_events_lost_total",
    "otel_ebpf_records_malformed_total",
    "otel_ebpf_parse_errors_total",
    "otel_ebpf_spans_dropped_queue_full_total",
    "otel_ebpf_spans_export_failed_total",
    "otel_ebpf_exchanges_dropped_worker_busy_total",
)


def _open_gate(gate: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Lets pgbench go on: it is blocked opening the FIFO `gate` for
    reading; writing a script to it ends the wait."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:   # ENXIO: no reader yet
            if exc.errno != errno.ENXIO or proc.poll() is not None \
                    or time.monotonic() > deadline:
                raise RuntimeError(f"pgbench never read its script: {proc.poll()}") from exc
            time.sleep(0.05)
    try:
        os.write(fd, b"\\set unused 0\n")
    finally:
        os.close(fd)


@pytest.mark.parametrize("rate", [PGBENCH_RATE, None], ids=["fixed_rate", "flat_out"])
def test_pgbench_every_select_is_one_client_span(receiver, start_agent, postgres,
                                                 pgbench_database, tmp_path, rate):
    """pgbench -S (select only) for 10 s, selected by --exe pgbench with the
    agent started first.  At a fixed rate, the CLIENT spans with pgbench's
    sanitised SELECT equal the transactions pgbench counted, and the agent
    reports no loss; flat out, every transaction is a span or a counted loss.

    pgbench must be traced from its first query, and the agent selects it
    when the kernel reports its exec, a few milliseconds later.  So pgbench
    starts blocked: its (never run, weight 0) second script is a FIFO it
    reads before connecting; the test waits EXE_RESCAN_WAIT, then opens it."""
    agent = start_agent("--exe", "pgbench")
    gate = str(tmp_path / "gate.sql")
    os.mkfifo(gate)
    proc = subprocess.Popen(
        postgres.pgbench_command("-S", "-f", f"{gate}@0", "-n", "-c", "2", "-j", "2",
                                 "-T", str(PGBENCH_SECONDS),
                                 *(["--rate", str(rate)] if rate else [])),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=postgres.pgbench_env())
    try:
        time.sleep(EXE_RESCAN_WAIT)
        _open_gate(gate, proc)
        out, err = proc.communicate(timeout=PGBENCH_SECONDS + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"pgbench failed:\n{out}\n{err}"
    processed = pgbench_processed(out)
    quiet = wait_quiet(agent, timeout=60)

    def is_pgbench_select(span) -> bool:
        text = span.attributes.get(DB_QUERY_TEXT, "")
        return span.kind == KIND_CLIENT and text.rstrip().rstrip(";").rstrip() == PGBENCH_SELECT

    sql = [s for s in list(receiver.spans) if is_sql(s)]
    selects = [s for s in sql if is_pgbench_select(s)]
    losses = {name: value(quiet, name) for name in LOSS_METRICS}
    shapes = {}
    for span in selects:
        key = (span.name, span.attributes.get(DB_NAMESPACE), span.status_code,
               span.resource.get("process.executable.name"))
        shapes[key] = shapes.get(key, 0) + 1
    others = {}
    for span in sql:
        if not is_pgbench_select(span):
            others[(span.name, span.attributes.get(DB_QUERY_TEXT))] = \
                others.get((span.name, span.attributes.get(DB_QUERY_TEXT)), 0) + 1
    report = (f"pgbench processed {processed} transactions, the agent exported "
              f"{len(selects)} CLIENT spans of its SELECT "
              f"(spans exported in all: {value(quiet, 'otel_ebpf_spans_exported_total'):.0f}, "
              f"kernel events: {value(quiet, 'otel_ebpf_kernel_events_total'):.0f}, "
              f"unclassified: {value(quiet, 'otel_ebpf_kernel_events_unclassified_total'):.0f}; "
              f"pgbench was let go {EXE_RESCAN_WAIT}s after it started); "
              f"losses {losses}; SELECT spans by (name, namespace, status, exe): {shapes}; "
              f"other SQL spans: {others}\npgbench output:\n{out}")
    print("\n" + report)
    assert processed >= 0.8 * PGBENCH_SECONDS * PGBENCH_RATE, report   # the rate held
    if rate is None:
        # A lost kernel record costs at most the one query it belonged to.
        unanswered = value(quiet, "otel_ebpf_sql_queries_without_response_total")
        assert len(selects) <= processed, report
        assert len(selects) + sum(losses.values()) + unanswered >= processed, report
        assert all(shape[1:] == (PG_BENCH_DATABASE, STATUS_UNSET, "pgbench") for shape in shapes), report
        return
    assert len(selects) == processed, report
    assert shapes == {("SELECT pgbench_accounts", PG_BENCH_DATABASE, STATUS_UNSET, "pgbench"):
                      processed}, report
    assert all(v == 0 for v in losses.values()), report


def test_server_spans_of_the_traced_server_join_the_client_trace(receiver, start_agent, postgres):
    """The database server traced too (whole node, connections to the
    server's port): the PostgreSQL backend gives a SERVER span per query,
    named like the client's.

    Expectation (same-node link): both ends of the connection are on this
    node, so the server span joins the client span's trace, as the child of
    the client span, although the query carries no trace context."""
    postgres.execute("DROP TABLE IF EXISTS link_orders",
                     "CREATE TABLE link_orders (id int)",
                     "INSERT INTO link_orders SELECT generate_series(1, 10)")
    start_agent("--port", str(postgres.port))
    with postgres.connect() as conn:
        assert conn.execute("SELECT count(*) FROM link_orders WHERE id > 5").fetchone() == (5,)

    def is_query(span) -> bool:
        return span.name == "SELECT link_orders"

    spans = wait_sql_spans(receiver, postgres.port, 2, kind=None, where=is_query)
    client = [s for s in spans if s.kind == KIND_CLIENT]
    server = [s for s in spans if s.kind == KIND_SERVER]
    assert len(client) == 1 and len(server) == 1, describe(spans)
    client, server = client[0], server[0]
    assert client.resource.get("process.pid") == os.getpid(), describe(spans)
    assert server.resource.get("process.executable.name") == "postgres", \
        (server.resource, describe(spans))
    assert server.attributes.get(DB_SYSTEM_NAME) == "postgresql", describe(spans)
    assert server.attributes.get(DB_NAMESPACE) == PG_DATABASE, describe(spans)
    assert server.attributes.get(DB_QUERY_TEXT) == "SELECT count(*) FROM link_orders WHERE id > ?", \
        describe(spans)
    assert server.attributes.get(DB_OPERATION_NAME) == "SELECT", describe(spans)
    assert server.attributes.get(DB_COLLECTION_NAME) == "link_orders", describe(spans)
    # The same-node link.
    assert server.trace_id == client.trace_id, describe(spans)
    assert server.parent_span_id == client.span_id, describe(spans)


def test_tls_connection_gives_the_same_spans_as_cleartext(receiver, start_agent, postgres):
    """sslmode=require: libpq encrypts (its own OpenSSL copy, inside the
    psycopg wheel); the agent reads the plaintext through its TLS uprobes
    and the spans are those of a cleartext connection."""
    postgres.execute("DROP TABLE IF EXISTS tls_items",
                     "CREATE TABLE tls_items (id int PRIMARY KEY, label text)")
    trace_this_process(start_agent, postgres)
    statements = [
        f"INSERT INTO tls_items (id, label) VALUES (918273645, '{SECRET}')",
        ("SELECT label FROM tls_items WHERE id = %s", (918273645,)),
        "INSERT INTO tls_items (id, label) VALUES (918273645, 'again')",
    ]
    runs = {}
    for sslmode in ("disable", "require"):
        receiver.spans.clear()
        with postgres.connect(sslmode=sslmode) as conn:
            assert (conn.pgconn.ssl_in_use == 1) == (sslmode == "require")
            conn.execute("DELETE FROM tls_items")
            for statement in statements:
                try:
                    if isinstance(statement, tuple):
                        assert conn.execute(*statement).fetchall() == [(SECRET,)]
                    else:
                        conn.execute(statement)
                except psycopg.errors.UniqueViolation:
                    pass
        spans = wait_sql_spans(receiver, postgres.port, len(statements) + 1)
        check_common(spans, postgres)
        runs[sslmode] = [(row(s), s.status_code, s.attributes.get("db.response.status_code"))
                         for s in spans]
        check_no_leaks(receiver.spans, [SECRET, *NUMBERS])
    assert runs["require"] == runs["disable"], runs
    assert runs["require"][-1][1:] == (STATUS_ERROR, "23505"), runs


def test_query_made_while_serving_a_request_is_its_child(receiver, start_agent, postgres):
    """No sqlcommenter comment: the agent links a query to the server span
    of the request the same thread is serving."""
    from conftest import PEERS, curl, free_port, wait_for_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(PEERS / "db_backend.py"), str(port),
                             postgres.dsn()], stdout=subprocess.PIPE,
                            env={**os.environ, "OTEL_SERVICE_NAME": "orders"})
    try:
        proc.stdout.readline()
        wait_for_port(port)
        start_agent("--pid", str(proc.pid))
        for order in ("41", "42"):
            assert curl(f"http://127.0.0.1:{port}/orders/{order}",
                        f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01")["status"] == 200
        servers = wait_spans(receiver, lambda s: s.kind == KIND_SERVER
                             and s.attributes.get("server.port") == port, 2)
        queries = wait_sql_spans(receiver, postgres.port, 2)
    finally:
        proc.terminate()
        proc.wait()
    assert [q.name for q in queries] == ["SELECT pg_class"] * 2, describe(queries)
    for server, query in zip(sorted(servers, key=lambda s: s.start_ns),
                             sorted(queries, key=lambda s: s.start_ns)):
        assert server.trace_id == query.trace_id == TRACE_ID
        assert server.parent_span_id == PARENT_ID
        assert query.parent_span_id == server.span_id, describe([query])
        assert server.start_ns <= query.start_ns and query.end_ns <= server.end_ns
        assert query.resource["service.name"] == "orders"
