"""Throwaway database servers for the SQL kernel tests, and helpers to read
the SQL spans the agent exports.

`postgres` (PostgreSQL 15) and `mariadb` (MariaDB) are session fixtures:
each server is started once, in a temporary directory, listening on a free
TCP port on 127.0.0.1 (the tests' clients never use a unix socket), and is
stopped and deleted at the end of the session.  PostgreSQL runs as the
postgres user with trust authentication, and TLS for the clients that ask
for it; MariaDB runs as root (--user=root) and the clients log in as a
password user.  Durability is
switched off on both: they only need to answer quickly.

Tests import the fixtures they use (under a name of their own, so that the
test arguments do not shadow an import):

    from databases import postgres_fixture  # noqa: F401  (fixture `postgres`)

Tests create their own tables (distinct names per test) before they start
the agent, and open the connections they trace after it is ready: the
connection start-up carries the database name (db.namespace).

Needs Debian's postgresql-15 and mariadb-server, and in the venv
psycopg[binary], PyMySQL and mysql-connector-python; without them the tests
using a fixture are skipped with the reason.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent.spans.semconv import (  # noqa: F401  (the tests import these names from here)
    DB_COLLECTION_NAME, DB_NAMESPACE, DB_OPERATION_NAME, DB_QUERY_SUMMARY, DB_QUERY_TEXT,
    DB_RESPONSE_STATUS_CODE, DB_SYSTEM_NAME, ERROR_TYPE,
)
from agent.spans.model import KIND_CLIENT, KIND_NAMES, STATUS_ERROR, STATUS_NAMES, STATUS_UNSET
from loopback import free_port, wait_for_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
PG_DATABASE = "shop"            # the tests' db.namespace
PG_BENCH_DATABASE = "bench"     # pgbench's tables, initialised once

MARIADB_USER = "app"
MARIADB_PASSWORD = "app-password"
MARIADB_DATABASE = "shop"
MARIADB_OTHER_DATABASE = "inventory"

# Literals the tests write into their queries: none may reach an exported span.
SECRET = "secret-literal-Xq7Zt9"
NUMBERS = ("918273645", "5550123", "271828182", "314159265")


def _clean_env() -> dict:
    """The environment without PG*/MYSQL* variables, which would redirect
    the clients and server tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}


# ------------------------------------------------------------- PostgreSQL

class PostgresServer:
    """A PostgreSQL 15 cluster of its own: initdb, pg_ctl start, pg_ctl stop."""

    system = "postgresql"        # db.system.name of its spans
    database = PG_DATABASE       # what the tests' clients connect to

    def __init__(self):
        started = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="otel-ebpf-pg-"))
        shutil.chown(self.directory, PG_USER)
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        # TLS for the clients that ask for it (sslmode=require); the others
        # connect with sslmode=disable.
        cert, key = self.directory / "server.crt", self.directory / "server.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        for path in (cert, key):
            shutil.chown(path, PG_USER)
            path.chmod(0o600)
        options = " ".join([
            f"-p {self.port}", f"-k {self.directory}", "-c listen_addresses=127.0.0.1",
            f"-c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}",
            "-c fsync=off", "-c synchronous_commit=off",
            "-c full_page_writes=off", "-c max_connections=40"])
        try:
            self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", PG_USER,
                              "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
            self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options,
                              "-w", "-t", "30", "start")
            wait_for_port(self.port, name="postgres")
            self.execute(f"CREATE DATABASE {PG_DATABASE}", dbname="postgres")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def _as_postgres(self, *cmd) -> str:
        try:
            return subprocess.run(["runuser", "-u", PG_USER, "--", *map(str, cmd)],
                                  check=True, capture_output=True, text=True, timeout=60,
                                  env=_clean_env(), cwd=self.directory).stdout
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({exc.returncode}):\n"
                               f"{exc.stdout}\n{exc.stderr}\n{log}") from exc

    @property
    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def dsn(self, dbname: str = PG_DATABASE, sslmode: str = "disable") -> str:
        # No GSS negotiation; with sslmode=disable the first message is the start-up.
        return (f"host={self.host} port={self.port} user={PG_USER} dbname={dbname} "
                f"sslmode={sslmode} gssencmode=disable")

    def connect(self, dbname: str = PG_DATABASE, autocommit: bool = True,
                sslmode: str = "disable", **kwargs):
        import psycopg
        return psycopg.connect(self.dsn(dbname, sslmode), autocommit=autocommit, **kwargs)

    def execute(self, *statements: str, dbname: str = PG_DATABASE) -> None:
        """Runs statements on a connection of their own (set-up, before the
        agent starts)."""
        with self.connect(dbname) as conn:
            for statement in statements:
                conn.execute(statement)

    def pgbench_command(self, *args: str, dbname: str = PG_BENCH_DATABASE) -> list[str]:
        return [str(PG_BIN / "pgbench"), "-h", self.host, "-p", str(self.port), "-U", PG_USER,
                *args, dbname]

    @staticmethod
    def pgbench_env() -> dict:
        return {**_clean_env(), "PGSSLMODE": "disable", "PGGSSENCMODE": "disable"}

    def pgbench(self, *args: str, dbname: str = PG_BENCH_DATABASE, timeout: float = 120):
        return subprocess.run(self.pgbench_command(*args, dbname=dbname), capture_output=True,
                              text=True, check=True, timeout=timeout, env=self.pgbench_env())

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w",
                                  "-t", "30", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def pgbench_processed(output: str) -> int:
    """pgbench's own count: "number of transactions actually processed: N"
    (with -t it reads N/M)."""
    match = re.search(r"number of transactions actually processed: (\d+)", output)
    if not match:
        raise AssertionError(f"no transaction count in pgbench's output:\n{output}")
    return int(match.group(1))


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture():
    """A PostgreSQL 15 server on 127.0.0.1:PORT with a database `shop`."""
    if not (PG_BIN / "postgres").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}; apt-get install postgresql-15)")
    if not shutil.which("runuser"):
        pytest.skip("runuser is missing: PostgreSQL refuses to run as root")
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (make setup installs it)")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        pytest.skip(f"no {PG_USER} user (the postgresql-15 package creates it)")
    pytest.importorskip("psycopg", reason="psycopg[binary] is not installed in the venv")
    server = PostgresServer()
    print(f"\npostgres: started on 127.0.0.1:{server.port} in {server.start_seconds:.1f}s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="pgbench_database")
def pgbench_database_fixture(postgres) -> str:
    """The pgbench tables (`pgbench -i -s 1`: 100,000 accounts) in a
    database of their own; returns its name."""
    postgres.execute(f"CREATE DATABASE {PG_BENCH_DATABASE}", dbname="postgres")
    postgres.pgbench("-i", "-q", "-s", "1")
    return PG_BENCH_DATABASE


# ---------------------------------------------------------------- MariaDB

class MariaDBServer:
    """A MariaDB server of its own: mariadb-install-db, then mariadbd."""

    system = "mariadb"
    database = MARIADB_DATABASE

    def __init__(self):
        started = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="otel-ebpf-mariadb-"))
        self.data = self.directory / "data"
        self.socket = self.directory / "mariadb.sock"
        self.log = self.directory / "error.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        install = subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={self.data}",
             "--auth-root-authentication-method=socket", "--skip-test-db",
             "--skip-name-resolve"],
            capture_output=True, text=True, timeout=120, env=_clean_env())
        if install.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({install.returncode}):\n"
                               f"{install.stdout}\n{install.stderr}")
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=root", f"--datadir={self.data}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
             f"--pid-file={self.directory / 'mariadbd.pid'}", f"--log-error={self.log}",
             "--skip-name-resolve", "--skip-log-bin", "--performance-schema=OFF",
             "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
             "--innodb-doublewrite=0", "--max-connections=40"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_clean_env())
        try:
            wait_for_port(self.port, timeout=60, process=self.proc, name="mariadbd")
            self.admin(f"CREATE USER {MARIADB_USER}@'%' IDENTIFIED BY '{MARIADB_PASSWORD}'",
                       f"GRANT ALL ON *.* TO {MARIADB_USER}@'%'",
                       f"CREATE DATABASE {MARIADB_DATABASE}",
                       f"CREATE DATABASE {MARIADB_OTHER_DATABASE}")
        except BaseException as exc:
            log = self.error_log()
            self.stop()
            raise RuntimeError(f"mariadbd did not start: {exc}\n{log}") from exc
        self.start_seconds = time.monotonic() - started

    @property
    def pid(self) -> int:
        """mariadbd: one process, a thread per connection."""
        return self.proc.pid

    def error_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def admin(self, *statements: str) -> None:
        """Runs statements as root over the unix socket (set-up only)."""
        run = subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-u", "root",
                              "-e", ";\n".join(statements)],
                             capture_output=True, text=True, timeout=60, env=_clean_env())
        if run.returncode != 0:
            raise RuntimeError(f"mariadb -e failed: {run.stderr}")

    def pymysql(self, database: str | None = MARIADB_DATABASE, **kwargs):
        """A PyMySQL connection (text protocol, COM_QUERY), autocommit on by
        default so that connecting sends no SET AUTOCOMMIT."""
        import pymysql
        kwargs.setdefault("autocommit", True)
        return pymysql.connect(host=self.host, port=self.port, user=MARIADB_USER,
                               password=MARIADB_PASSWORD, database=database, **kwargs)

    def connector(self, database: str | None = MARIADB_DATABASE, **kwargs):
        """A MySQL Connector/Python connection in pure-Python mode; its
        cursor(prepared=True) uses server-side prepared statements
        (COM_STMT_PREPARE / COM_STMT_EXECUTE)."""
        import mysql.connector
        kwargs.setdefault("use_pure", True)
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("ssl_disabled", True)
        if database is not None:
            kwargs["database"] = database
        return mysql.connector.connect(host=self.host, port=self.port, user=MARIADB_USER,
                                       password=MARIADB_PASSWORD, **kwargs)

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session", name="mariadb")
def mariadb_fixture():
    """A MariaDB server on 127.0.0.1:PORT with databases `shop` and
    `inventory` and a user `app`."""
    for tool in ("mariadb-install-db", "mariadbd", "mariadb"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (apt-get install mariadb-server)")
    pytest.importorskip("pymysql", reason="PyMySQL is not installed in the venv")
    pytest.importorskip("mysql.connector",
                        reason="mysql-connector-python is not installed in the venv")
    server = MariaDBServer()
    print(f"\nmariadb: started on 127.0.0.1:{server.port} in {server.start_seconds:.1f}s")
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------ SQL spans

def is_sql(span) -> bool:
    return DB_SYSTEM_NAME in span.attributes


def wait_spans(receiver, predicate, count: int, timeout: float = 10.0,
               settle: float = 0.8) -> list:
    """Waits until `count` spans match, then `settle` seconds more (a
    duplicate or an extra span would arrive with them); returns the matching
    spans in start order.  The caller asserts on what it got."""
    receiver.wait_for(lambda spans: sum(1 for s in spans if predicate(s)) >= count, timeout)
    time.sleep(settle)
    return sorted((s for s in list(receiver.spans) if predicate(s)), key=lambda s: s.start_ns)


def sql_span_of(port: int, kind: int | None = KIND_CLIENT, where=None):
    """A predicate: SQL spans of connections to `port` (server.port), of
    `kind` (None: any), for which `where(span)` holds."""
    def predicate(span) -> bool:
        return (is_sql(span) and span.attributes.get("server.port") == port
                and (kind is None or span.kind == kind) and (where is None or where(span)))
    return predicate


def wait_sql_spans(receiver, port: int, count: int, kind: int | None = KIND_CLIENT, where=None,
                   timeout: float = 10.0) -> list:
    """The SQL spans of connections to `port` once at least `count` arrived
    (or the timeout passed), in start order."""
    return wait_spans(receiver, sql_span_of(port, kind, where), count, timeout)


def row(span) -> tuple:
    """What a user reads first: (span name, db.operation.name,
    db.collection.name, db.query.text)."""
    a = span.attributes
    return (span.name, a.get(DB_OPERATION_NAME), a.get(DB_COLLECTION_NAME), a.get(DB_QUERY_TEXT))


_SHOWN = (DB_SYSTEM_NAME, DB_NAMESPACE, DB_OPERATION_NAME, DB_COLLECTION_NAME, DB_QUERY_SUMMARY,
          DB_QUERY_TEXT, DB_RESPONSE_STATUS_CODE, ERROR_TYPE, "server.address", "server.port",
          "network.peer.address", "network.peer.port")


def describe(spans) -> str:
    """One line per span, for assertion messages."""
    lines = []
    for s in spans:
        attrs = {k: s.attributes[k] for k in _SHOWN if k in s.attributes}
        others = sorted(set(s.attributes) - set(_SHOWN))
        lines.append(
            f"  {KIND_NAMES.get(s.kind, s.kind)} {s.name!r} status={STATUS_NAMES.get(s.status_code)}"
            f" trace={s.trace_id} span={s.span_id} parent={s.parent_span_id or '-'}"
            f" exe={s.resource.get('process.executable.name')} {attrs}"
            + (f" +{others}" if others else ""))
    return f"{len(lines)} span(s):\n" + "\n".join(lines) if lines else "no spans"


def leaks(spans, values) -> list[str]:
    """Where any of `values` (literal strings or numbers a test wrote into its
    queries) shows up in the exported spans: name, status message, span,
    event and link attributes (the whole encoded span is searched) and the
    resource attributes."""
    found = []
    needles = [str(v) for v in values]
    for span in spans:
        texts = {"name": span.name, "status.message": span.status_message,
                 "trace_state": span.trace_state}
        texts.update({f"attribute {k}": repr(v) for k, v in span.attributes.items()})
        texts.update({f"resource {k}": repr(v) for k, v in span.resource.items()})
        encoded = span.proto.SerializeToString()
        for needle in needles:
            for where, text in texts.items():
                if needle in text:
                    found.append(f"{needle!r} in {where} of span {span.name!r}: {text}")
            if needle.encode() in encoded and not any(needle in t for t in texts.values()):
                found.append(f"{needle!r} in the encoded span {span.name!r}")
    return found


# ------------------------------------------------------ checks both share

def check_no_leaks(spans, values) -> None:
    """None of values shows up anywhere in these exported spans."""
    spans = list(spans)
    found = leaks(spans, values)
    assert not found, "\n".join(found) + "\n" + describe(spans)


def check_succeeded(spans) -> None:
    """Every span a success: no error status, no error.type."""
    for span in spans:
        assert span.status_code == STATUS_UNSET, describe([span])
        assert ERROR_TYPE not in span.attributes, describe([span])


def trace_this_process(start_agent, server, *extra: str):
    """The agent tracing this pytest process's connections to the server
    (the agent never traces itself; pytest is an ordinary client here)."""
    return start_agent("--pid", str(os.getpid()), "--port", str(server.port), *extra)


def check_common(spans, server) -> None:
    """Attributes every CLIENT span from this process to the server carries."""
    for span in spans:
        a = span.attributes
        where = f"{span.name!r}: {a}"
        assert span.kind == KIND_CLIENT, where
        assert a[DB_SYSTEM_NAME] == server.system, where
        assert a.get(DB_NAMESPACE) == server.database, where
        assert a.get(DB_QUERY_SUMMARY) == span.name, where
        assert a.get("server.address") == "127.0.0.1", where
        assert a.get("server.port") == server.port, where
        assert a.get("network.peer.address") == "127.0.0.1", where
        assert a.get("network.peer.port") == server.port, where
        assert span.resource.get("process.pid") == os.getpid(), (where, span.resource)


def check_failed_queries(spans, server, duplicate_code: str, syntax_code: str) -> None:
    """The spans of the `errs` test: a duplicate-key INSERT and a misspelt
    SELEC, both errors with the server's code, then a SELECT that worked."""
    assert len(spans) == 3, describe(spans)
    duplicate, syntax, after = spans
    assert row(duplicate) == ("INSERT errs", "INSERT", "errs",
                              "INSERT INTO errs (id, note) VALUES (?, ?)"), describe(spans)
    assert syntax.attributes.get(DB_QUERY_TEXT) == "SELEC note FROM errs WHERE id = ?", \
        describe(spans)
    assert row(after) == ("SELECT errs", "SELECT", "errs",
                          "SELECT note FROM errs WHERE id = ?"), describe(spans)
    for span, code in ((duplicate, duplicate_code), (syntax, syntax_code)):
        assert span.status_code == STATUS_ERROR, describe([span])
        assert span.attributes.get(DB_RESPONSE_STATUS_CODE) == code, describe([span])
        assert span.attributes.get(ERROR_TYPE) == code, describe([span])
    assert after.status_code == STATUS_UNSET and ERROR_TYPE not in after.attributes, \
        describe([after])
    for span in spans:
        assert span.kind == KIND_CLIENT and span.attributes[DB_SYSTEM_NAME] == server.system
        assert span.attributes.get(DB_NAMESPACE) == server.database, describe([span])
