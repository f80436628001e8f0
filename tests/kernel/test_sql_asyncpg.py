"""PostgreSQL with asyncpg: a statement the server rejects while preparing it.

asyncpg prepares every statement (Parse, Describe, Sync) before it binds
and executes it.  When the server answers the Parse with ErrorResponse
(missing table 42P01, missing column 42703, syntax error 42601) no Execute
follows: the failed Parse is the operation, and it gets an error span with
the SQLSTATE on both sides, named from the statement's text, the server's
span the child of the client's.  Successful statements stay one span each:
their prepare gives none."""
from __future__ import annotations

import asyncio
import os

import pytest

from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR
from databases import (
    DB_QUERY_TEXT, DB_RESPONSE_STATUS_CODE, ERROR_TYPE, PG_DATABASE, PG_USER, check_succeeded,
    describe, wait_sql_spans,
)
from databases import postgres_fixture  # noqa: F401  (fixture `postgres`)
from helpers import value, wait_quiet

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed in the venv")

# (statement, SQLSTATE the server answers its Parse with, span name).
FAILING = [
    ("SELECT id FROM apg_missing WHERE id = $1", "42P01", "SELECT apg_missing"),
    ("SELECT nosuch FROM apg_items WHERE id = $1", "42703", "SELECT apg_items"),
    ("SELEC id FROM apg_items WHERE id = $1", "42601", None),
]
GOOD = "SELECT label FROM apg_items WHERE id = $1"


async def _run(port: int) -> list:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=PG_USER,
                                 database=PG_DATABASE, ssl=False)
    try:
        results = [await conn.fetchval(GOOD, 1)]
        for statement, code, _ in FAILING:
            try:
                await conn.fetchval(statement, 1)
                results.append("no error")
            except asyncpg.PostgresError as error:
                results.append(error.sqlstate)
        results.append(await conn.fetchval(GOOD, 2))
        return results
    finally:
        await conn.close()


def test_statements_that_fail_at_parse_are_error_spans_on_both_sides(
        receiver, start_agent, postgres):
    postgres.execute("DROP TABLE IF EXISTS apg_items",
                     "CREATE TABLE apg_items (id int PRIMARY KEY, label text)",
                     "INSERT INTO apg_items VALUES (1, 'one'), (2, 'two')")
    agent = start_agent("--port", str(postgres.port))
    results = asyncio.run(_run(postgres.port))
    assert results == ["one", *(code for _, code, _ in FAILING), "two"]

    sides = {}
    for kind in (KIND_CLIENT, KIND_SERVER):
        sides[kind] = spans = wait_sql_spans(receiver, postgres.port, 2 + len(FAILING), kind=kind,
                               where=lambda s: "apg_" in (s.attributes.get(DB_QUERY_TEXT) or ""))
        assert len(spans) == 2 + len(FAILING), describe(spans)
        first, *failed, last = spans
        assert first.name == last.name == "SELECT apg_items", describe(spans)
        check_succeeded([first, last])
        for span, (statement, code, name) in zip(failed, FAILING):
            assert span.status_code == STATUS_ERROR, describe([span])
            assert span.attributes.get(DB_RESPONSE_STATUS_CODE) == code, describe([span])
            assert span.attributes.get(ERROR_TYPE) == code, describe([span])
            assert span.attributes.get(DB_QUERY_TEXT) == statement, describe([span])
            if name is not None:
                assert span.name == name, describe([span])
        if kind == KIND_CLIENT:
            assert all(s.resource.get("process.pid") == os.getpid() for s in spans)
        else:
            assert all(s.resource.get("process.executable.name") == "postgres" for s in spans)

    # Both ends on this node: each server span is the child of its client
    # span, the failed ones too.
    for client, server in zip(sides[KIND_CLIENT], sides[KIND_SERVER]):
        assert (server.trace_id, server.parent_span_id) == (client.trace_id, client.span_id), \
            describe([client, server])

    # Nothing of these statements was counted as lost or unmatched.
    samples = wait_quiet(agent)
    for name in ("otel_ebpf_sql_queries_without_response_total",
                 "otel_ebpf_sql_responses_without_query_total",
                 "otel_ebpf_sql_framing_lost_total",
                 "otel_ebpf_sql_unknown_statements_total"):
        assert value(samples, name) == 0, (name, value(samples, name))
