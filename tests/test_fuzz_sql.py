"""Property tests for the SQL protocol parsers and SQL text helpers: no
input makes them raise, every status is one of the three, and framing is
consistent (a PARSED message is not changed by bytes after it; a prefix of
a PARSED message is NEED_MORE).  Inputs are mutations of the real captured
fixtures plus random bytes and text, with a fixed example budget."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.parsers import NEED_MORE, PARSED
from agent.parsers import mysql as my
from agent.parsers import postgres as pg
from agent.parsers.sql import extract_trace_context, query_info, sanitize

from fuzzing import BUDGET, STATUSES, edit, fixture_files

PG_SAMPLES = [data for _, data in fixture_files("postgres")]
MY_SAMPLES = [data for _, data in fixture_files("mysql")]
INTERESTING = st.sampled_from([b"\x00", b"\xff", b"\xfe", b"\xff\xff\xff", b"\x00\x00\x00\x04",
                               b"Q", b"P", b"B", b"E", b"Z", b"'", b"$$", b"/*", b"\x03"])


def mutated(samples):
    @st.composite
    def strategy(draw):
        data = bytearray(draw(st.sampled_from(samples)))
        start = draw(st.integers(0, len(data)))
        data = data[start:start + draw(st.integers(0, 600))]
        return bytes(edit(draw, data, INTERESTING))
    return st.one_of(strategy(), st.binary(max_size=256))


def _check(result, data, partial=False):
    status, message, consumed, reason = result
    assert status in STATUSES
    if status == PARSED:
        assert message is not None and consumed > 0
        if not partial:
            assert consumed <= len(data)
    elif status == NEED_MORE:
        assert message is None and consumed > len(data) or consumed == 0
    else:
        assert message is None and reason
    return status, consumed


@given(mutated(PG_SAMPLES))
@BUDGET
def test_postgres_never_raises(data):
    for parse in (pg.parse_frontend, pg.parse_backend):
        status, consumed = _check(parse(data), data)
        if status == PARSED:
            # Bytes after a message do not change it; its prefixes need more.
            assert parse(data[:consumed] + b"\x00junk")[2] == consumed
            assert parse(data[:consumed - 1])[0] == NEED_MORE
        _check(parse(data, partial=True), data, partial=True)
        assert pg.parse_header(data, parse is pg.parse_frontend)[0] in STATUSES
    _check(pg.parse_startup(data), data)
    assert isinstance(pg.looks_like_postgres_startup(data), bool)
    assert isinstance(pg.looks_like_postgres_frontend(data), bool)
    assert isinstance(pg.looks_like_postgres_backend(data), bool)
    rows, end = pg.skip_data_rows(data)
    assert 0 <= end <= len(data)


@given(mutated(PG_SAMPLES))
@BUDGET
def test_postgres_stream_walk_terminates(data):
    pos = 0
    steps = 0
    while pos < len(data):
        status, _, consumed, _ = pg.parse_backend(data[pos:], partial=True)
        if status != PARSED:
            break
        pos += consumed
        steps += 1
    assert steps <= len(data)


@given(mutated(MY_SAMPLES))
@BUDGET
def test_mysql_never_raises(data):
    status, consumed = _check(my.parse_packet(data), data)
    if status == PARSED:
        assert my.parse_packet(data[:consumed] + b"\x01\x00\x00\x07")[2] == consumed
        assert my.parse_packet(data[:consumed - 1])[0] == NEED_MORE
    status, packet, _, _ = my.parse_packet(data, partial=True)
    payload = packet.payload if status == PARSED else data
    for decode in (my.decode_handshake, my.decode_handshake_response, my.decode_command,
                   my.decode_response):
        result = decode(payload)
        assert result[0] in STATUSES
    _check(my.parse_command(data), data)
    _check(my.parse_command(data, partial=True), data, partial=True)
    for command in (my.COM_QUERY, my.COM_STMT_PREPARE, my.COM_STMT_EXECUTE, my.COM_PING,
                    my.COM_STATISTICS, my.COM_FIELD_LIST, my.COM_STMT_FETCH):
        for caps in (my.CLIENT_PROTOCOL_41,
                     my.CLIENT_PROTOCOL_41 | my.CLIENT_DEPRECATE_EOF
                     | my.MARIADB_CLIENT_CACHE_METADATA | my.MARIADB_CLIENT_PROGRESS):
            status, response, consumed, _ = my.read_response(data, command, caps)
            assert status in STATUSES
            if status == PARSED:
                assert 0 <= consumed <= len(data)
            # Fed in two pieces, the reader ends at the same place.
            if status == PARSED and len(data) > 1:
                reader = my.ResponseReader(command, caps)
                half = len(data) // 2
                s1, c1 = reader.feed(data[:half])
                if s1 == NEED_MORE:
                    s2, c2 = reader.feed(data[half:])
                    assert s2 == PARSED and half + c2 == consumed
                else:
                    assert s1 == PARSED and c1 == consumed
    assert isinstance(my.looks_like_mysql_command(data), bool)
    assert isinstance(my.looks_like_mysql_handshake(data), bool)


SQL_ALPHABET = st.sampled_from(list("'\"`$\\-/*#.,;()=<>+ \n\t0123456789aeEbBxXnN_:?%&")
                               + ["SELECT ", "FROM ", "IN (", "TRUE", "$$", "$a$", "/*", "*/",
                                  "--", "E'", "0x", "INSERT INTO ", "UPDATE ", "CREATE TABLE ",
                                  "traceparent='", "\x00", "é"])


@given(st.one_of(st.lists(SQL_ALPHABET, max_size=60).map("".join), st.text(max_size=200)))
@BUDGET
def test_sql_text_helpers_never_raise(text):
    for dialect in (None, "postgresql", "mysql"):
        out = sanitize(text, dialect)
        assert isinstance(out, str)
        # Nothing is left for a second pass to find.
        assert sanitize(out, dialect) == out, (text, out)
    summary, operation, collection = query_info(text)
    assert summary is None or (isinstance(summary, str) and len(summary) <= 255)
    traceparent, tracestate = extract_trace_context(text)
    assert traceparent is None or len(traceparent) == 55
