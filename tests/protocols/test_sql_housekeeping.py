"""SQL connection housekeeping: closes, expiry, forgotten processes, bounded maps,
and bad bytes or failing scanners counted, never raised."""
from __future__ import annotations

from sql_replay import (ITEM_SQL_REQUEST, MY, PG, PG_EXPECTED, TRACEPARENT, Replay, SqlConnectionHandler,
                        check_pairing, exchanged, feed, login_length, my_packet, my_writes, pg_big_answer,
                        pg_session, pg_writes, replay)


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
