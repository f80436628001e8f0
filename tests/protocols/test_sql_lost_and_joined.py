"""SQL connections seen in part: records lost (seq gaps), joined mid-connection,
and switched to TLS (ignored until the TLS probes' plaintext)."""
from __future__ import annotations

import pytest

from agent.capture.records import C
from agent.parsers import mysql as my
from sql_replay import (MY, PG, PG_EXPECTED, ROLE_UNKNOWN, Replay, check_pairing, exchanged, feed,
                        login_length, my_big_answer, my_packet, my_writes, pg_writes)


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
