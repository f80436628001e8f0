"""MariaDB end to end: a real MariaDB server on loopback, PyMySQL (text
protocol, COM_QUERY) and MySQL Connector/Python with server-side prepared
statements (COM_STMT_PREPARE / COM_STMT_EXECUTE) as clients in this pytest
process, real BPF programs, spans checked at an OTLP receiver the way a
user reads them in a backend.

Each statement is one CLIENT span named by its db.query.summary, with
db.system.name "mariadb", db.query.text sanitised (no literal survives) and
the MySQL error number when it failed.  The client libraries' own
connection set-up statements (PyMySQL's SET NAMES, Connector/Python's SET
NAMES and SET autocommit) are spans too; the tests leave them aside."""
from __future__ import annotations

import os

import pytest

from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_UNSET
from databases import (
    DB_COLLECTION_NAME, DB_NAMESPACE, DB_OPERATION_NAME, DB_QUERY_TEXT,
    DB_SYSTEM_NAME, MARIADB_DATABASE,
    MARIADB_OTHER_DATABASE, NUMBERS, SECRET, check_common, check_failed_queries, check_no_leaks,
    check_succeeded, describe,
    row, trace_this_process, wait_sql_spans,
)
from databases import mariadb_fixture  # noqa: F401  (fixture)

pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed in the venv")
pytest.importorskip("mysql.connector", reason="mysql-connector-python is not installed in the venv")


def is_statement(span) -> bool:
    """Not one of the client libraries' connection set-up statements."""
    return not span.attributes.get(DB_QUERY_TEXT, "").upper().startswith("SET ")


def statement_spans(receiver, mariadb, count: int, **kwargs) -> list:
    return wait_sql_spans(receiver, mariadb.port, count, where=is_statement, **kwargs)


def test_text_protocol_queries_one_span_each_with_sanitised_text(receiver, start_agent, mariadb):
    """PyMySQL (COM_QUERY): CREATE, INSERT, SELECT, UPDATE (with a MySQL
    double-quoted string), DELETE with literal values; the spans name the
    operation and table, and no literal appears anywhere in the spans."""
    mariadb.admin(f"DROP TABLE IF EXISTS {MARIADB_DATABASE}.users")
    trace_this_process(start_agent, mariadb)
    expected = [
        ("CREATE TABLE users (id INT PRIMARY KEY, name TEXT, score DOUBLE)",
         ("CREATE TABLE users", "CREATE TABLE", "users",
          "CREATE TABLE users (id INT PRIMARY KEY, name TEXT, score DOUBLE)")),
        (f"INSERT INTO users (id, name, score) VALUES (918273645, '{SECRET}', 5550123.75)",
         ("INSERT users", "INSERT", "users",
          "INSERT INTO users (id, name, score) VALUES (?, ?, ?)")),
        ("SELECT name, score FROM users WHERE id = 918273645",
         ("SELECT users", "SELECT", "users", "SELECT name, score FROM users WHERE id = ?")),
        (f'UPDATE users SET score = 271828182 WHERE name = "{SECRET}"',
         ("UPDATE users", "UPDATE", "users", "UPDATE users SET score = ? WHERE name = ?")),
        ("DELETE FROM users WHERE score < 314159265",
         ("DELETE users", "DELETE", "users", "DELETE FROM users WHERE score < ?")),
    ]
    conn = mariadb.pymysql()
    try:
        with conn.cursor() as cursor:
            for i, (statement, _) in enumerate(expected):
                cursor.execute(statement)
                if i == 2:
                    assert cursor.fetchall() == ((SECRET, 5550123.75),)   # the queries ran
            assert cursor.rowcount == 1
    finally:
        conn.close()

    spans = statement_spans(receiver, mariadb, len(expected))
    assert [row(s) for s in spans] == [e for _, e in expected], describe(spans)
    check_common(spans, mariadb)
    check_succeeded(spans)
    check_no_leaks(receiver.spans, [SECRET, *NUMBERS])


def test_prepared_statements_one_span_per_execute(receiver, start_agent, mariadb):
    """Connector/Python cursor(prepared=True): each execute of a prepared
    statement (COM_STMT_EXECUTE, binary protocol) is one span whose text is
    the prepared text with its ? placeholders; parameter values are not
    exported."""
    mariadb.admin(f"DROP TABLE IF EXISTS {MARIADB_DATABASE}.items",
                  f"CREATE TABLE {MARIADB_DATABASE}.items (id INT PRIMARY KEY, label TEXT,"
                  " price DOUBLE)",
                  f"INSERT INTO {MARIADB_DATABASE}.items VALUES (1, 'item 1', 10), (2, 'item 2', 20),"
                  " (3, 'item 3', 30)")
    trace_this_process(start_agent, mariadb)
    params = [(1, "secret-param-one"), (3, "secret-param-three"), (2, "secret-param-two")]
    conn = mariadb.connector()
    try:
        cursor = conn.cursor(prepared=True)
        for id_, label in params:
            cursor.execute("SELECT label, price FROM items WHERE id = %s AND label <> %s",
                           (id_, label))
            assert [tuple(r) for r in cursor.fetchall()] == [(f"item {id_}", id_ * 10.0)]
        cursor.close()
        cursor = conn.cursor(prepared=True)
        cursor.execute("UPDATE items SET price = %s WHERE id = %s", (918273645.5, 2))
        assert cursor.rowcount == 1
        cursor.close()
    finally:
        conn.close()

    select = ("SELECT items", "SELECT", "items",
              "SELECT label, price FROM items WHERE id = ? AND label <> ?")
    update = ("UPDATE items", "UPDATE", "items", "UPDATE items SET price = ? WHERE id = ?")
    spans = statement_spans(receiver, mariadb, len(params) + 1)
    assert [row(s) for s in spans] == [select] * len(params) + [update], describe(spans)
    check_common(spans, mariadb)
    assert all(s.status_code == STATUS_UNSET for s in spans), describe(spans)
    secrets = [label for _, label in params] + ["918273645"]
    check_no_leaks(receiver.spans, secrets)


def test_failing_queries_carry_the_error_number_and_the_connection_goes_on(
        receiver, start_agent, mariadb):
    """A duplicate key (1062) and a syntax error (1064) are error spans with
    the MySQL error number as db.response.status_code and error.type; the
    server's messages (which quote the key and the query) are not exported;
    the next query on the connection gets its ordinary span."""
    mariadb.admin(f"DROP TABLE IF EXISTS {MARIADB_DATABASE}.errs",
                  f"CREATE TABLE {MARIADB_DATABASE}.errs (id INT PRIMARY KEY, note TEXT)",
                  f"INSERT INTO {MARIADB_DATABASE}.errs VALUES (918273645, 'first')")
    trace_this_process(start_agent, mariadb)
    conn = mariadb.pymysql()
    try:
        with conn.cursor() as cursor:
            with pytest.raises(pymysql.err.IntegrityError) as duplicate_error:
                cursor.execute("INSERT INTO errs (id, note) VALUES (918273645, 'secret-literal-dup')")
            with pytest.raises(pymysql.err.ProgrammingError) as syntax_error:
                cursor.execute("SELEC note FROM errs WHERE id = 918273645")
            cursor.execute("SELECT note FROM errs WHERE id = 918273645")
            assert cursor.fetchall() == (("first",),)
    finally:
        conn.close()
    assert duplicate_error.value.args[0] == 1062 and syntax_error.value.args[0] == 1064

    spans = statement_spans(receiver, mariadb, 3)
    check_failed_queries(spans, mariadb, "1062", "1064")
    # MariaDB said: Duplicate entry '918273645' for key 'PRIMARY' / You have an
    # error in your SQL syntax; ... near 'SELEC note FROM errs WHERE id = 918273645'.
    message_parts = [duplicate_error.value.args[1], syntax_error.value.args[1], "Duplicate entry",
                     "for key", "error in your SQL syntax", "918273645", "secret-literal-dup"]
    check_no_leaks(receiver.spans, message_parts)


def test_transaction_spans_in_order(receiver, start_agent, mariadb):
    """PyMySQL begin(), two statements, commit(); begin(), a DELETE,
    rollback(): BEGIN ... COMMIT, BEGIN ... ROLLBACK, one span each, in order."""
    mariadb.admin(f"DROP TABLE IF EXISTS {MARIADB_DATABASE}.accounts, {MARIADB_DATABASE}.ledger",
                  f"CREATE TABLE {MARIADB_DATABASE}.accounts (id INT PRIMARY KEY, balance INT)",
                  f"CREATE TABLE {MARIADB_DATABASE}.ledger (account INT, amount INT)",
                  f"INSERT INTO {MARIADB_DATABASE}.accounts VALUES (1, 100), (2, 50)")
    trace_this_process(start_agent, mariadb)
    conn = mariadb.pymysql()
    try:
        with conn.cursor() as cursor:
            conn.begin()
            cursor.execute("UPDATE accounts SET balance = balance - 30 WHERE id = 1")
            cursor.execute("INSERT INTO ledger (account, amount) VALUES (1, -30)")
            conn.commit()
            conn.begin()
            cursor.execute("DELETE FROM ledger WHERE account = 1")
            conn.rollback()
            cursor.execute("SELECT count(*) FROM ledger")
            assert cursor.fetchall() == ((1,),)
    finally:
        conn.close()

    expected = [
        ("BEGIN", "BEGIN", None, "BEGIN"),
        ("UPDATE accounts", "UPDATE", "accounts",
         "UPDATE accounts SET balance = balance - ? WHERE id = ?"),
        ("INSERT ledger", "INSERT", "ledger", "INSERT INTO ledger (account, amount) VALUES (?, ?)"),
        ("COMMIT", "COMMIT", None, "COMMIT"),
        ("BEGIN", "BEGIN", None, "BEGIN"),
        ("DELETE ledger", "DELETE", "ledger", "DELETE FROM ledger WHERE account = ?"),
        ("ROLLBACK", "ROLLBACK", None, "ROLLBACK"),
        ("SELECT ledger", "SELECT", "ledger", "SELECT count(*) FROM ledger"),
    ]
    spans = statement_spans(receiver, mariadb, len(expected))
    assert [row(s) for s in spans] == expected, describe(spans)
    check_common(spans, mariadb)
    assert all(s.status_code == STATUS_UNSET for s in spans), describe(spans)
    for earlier, later in zip(spans, spans[1:]):
        assert earlier.end_ns <= later.start_ns, describe([earlier, later])


def test_namespace_follows_the_connect_database_init_db_and_use(receiver, start_agent, mariadb):
    """db.namespace is the database given at connect, then the one a
    COM_INIT_DB (PyMySQL select_db) or a USE statement switched to; a
    connection without a database has no db.namespace until it selects one."""
    mariadb.admin(f"DROP TABLE IF EXISTS {MARIADB_DATABASE}.ns_orders",
                  f"DROP TABLE IF EXISTS {MARIADB_OTHER_DATABASE}.ns_stock",
                  f"CREATE TABLE {MARIADB_DATABASE}.ns_orders (id INT)",
                  f"CREATE TABLE {MARIADB_OTHER_DATABASE}.ns_stock (id INT)")
    trace_this_process(start_agent, mariadb)
    conn = mariadb.pymysql(database=MARIADB_DATABASE)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM ns_orders")
            conn.select_db(MARIADB_OTHER_DATABASE)                # COM_INIT_DB
            cursor.execute("SELECT count(*) FROM ns_stock")
            cursor.execute(f"USE {MARIADB_DATABASE}")             # COM_QUERY
            cursor.execute("SELECT count(*) FROM ns_orders")
    finally:
        conn.close()
    conn = mariadb.pymysql(database=None)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {MARIADB_OTHER_DATABASE}.ns_stock")
            conn.select_db(MARIADB_OTHER_DATABASE)
            cursor.execute("SELECT count(*) FROM ns_stock")
    finally:
        conn.close()

    def is_select(span) -> bool:
        return span.attributes.get(DB_OPERATION_NAME) == "SELECT"

    spans = wait_sql_spans(receiver, mariadb.port, 5, where=is_select)
    got = [(s.name, s.attributes.get(DB_NAMESPACE)) for s in spans]
    assert got == [
        ("SELECT ns_orders", MARIADB_DATABASE),
        ("SELECT ns_stock", MARIADB_OTHER_DATABASE),
        ("SELECT ns_orders", MARIADB_DATABASE),
        (f"SELECT {MARIADB_OTHER_DATABASE}.ns_stock", None),
        ("SELECT ns_stock", MARIADB_OTHER_DATABASE),
    ], describe(spans)
    for span in spans:
        assert span.kind == KIND_CLIENT and span.attributes[DB_SYSTEM_NAME] == "mariadb", \
            describe([span])
        assert span.status_code == STATUS_UNSET, describe([span])


def test_server_spans_of_the_traced_server_join_the_client_trace(receiver, start_agent, mariadb):
    """The database server traced too (--pid of this process and of
    mariadbd, connections to the server's port): mariadbd gives a SERVER
    span per query, named like the client's.

    Expectation (same-node link): both ends of the connection are on this
    node, so the server span joins the client span's trace, as the child of
    the client span, although the query carries no trace context."""
    mariadb.admin(f"DROP TABLE IF EXISTS {MARIADB_DATABASE}.link_orders",
                  f"CREATE TABLE {MARIADB_DATABASE}.link_orders (id INT)",
                  f"INSERT INTO {MARIADB_DATABASE}.link_orders VALUES (1), (2), (6), (7), (8)")
    trace_this_process(start_agent, mariadb, "--pid", str(mariadb.pid))
    conn = mariadb.pymysql()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM link_orders WHERE id > 5")
            assert cursor.fetchall() == ((3,),)
    finally:
        conn.close()

    def is_query(span) -> bool:
        return span.name == "SELECT link_orders"

    spans = wait_sql_spans(receiver, mariadb.port, 2, kind=None, where=is_query)
    client = [s for s in spans if s.kind == KIND_CLIENT]
    server = [s for s in spans if s.kind == KIND_SERVER]
    assert len(client) == 1 and len(server) == 1, describe(spans)
    client, server = client[0], server[0]
    assert client.resource.get("process.pid") == os.getpid(), describe(spans)
    assert server.resource.get("process.pid") == mariadb.pid, (server.resource, describe(spans))
    assert server.attributes.get(DB_SYSTEM_NAME) == "mariadb", describe(spans)
    assert server.attributes.get(DB_NAMESPACE) == MARIADB_DATABASE, describe(spans)
    assert server.attributes.get(DB_QUERY_TEXT) == "SELECT count(*) FROM link_orders WHERE id > ?", \
        describe(spans)
    assert server.attributes.get(DB_OPERATION_NAME) == "SELECT", describe(spans)
    assert server.attributes.get(DB_COLLECTION_NAME) == "link_orders", describe(spans)
    # The same-node link.
    assert server.trace_id == client.trace_id, describe(spans)
    assert server.parent_span_id == client.span_id, describe(spans)
