"""SQL answers and requests captured in part: truncated answers with and without
their tail, huge rows skipped across events, truncated query texts."""
from __future__ import annotations

import pytest

from sql_replay import (FLAG_TAIL, ITEM_SQL_EXCHANGE, ITEM_SQL_REQUEST, MY, PG, PG_EXPECTED, TAIL_BYTES,
                        Replay, check_pairing, exchanged, feed, login_length, my_big_answer, my_packet,
                        my_writes, pg_big_answer, pg_msg, pg_query, pg_session, pg_writes)


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
