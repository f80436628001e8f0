"""Property tests for the SQL protocol parsers and SQL text helpers: no
input makes them raise, every status is one of the three, and framing is
consistent (a PARSED message is not changed by bytes after it; a prefix of
a PARSED message is NEED_MORE).  Inputs are mutations of the real captured
fixtures plus random bytes and text, with a fixed example budget."""
from __future__ import annotations

from hypothesis import example, given
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
@example("0b_2")
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


# ------------------------------------------------- connection handler

from agent.capture.records import C  # noqa: E402
from agent.protocols.sql_base import SqlQuery  # noqa: E402

from event_records import make_record  # noqa: E402
from sql_replay import (ITEM_SQL_EXCHANGE, ITEM_SQL_PREPARED, ITEM_SQL_REQUEST,  # noqa: E402
                        SqlConnectionHandler, my_writes, pg_writes)

_PG, _MY = C["PROTOCOL_POSTGRES"], C["PROTOCOL_MYSQL"]
_CONVERSATIONS = ([(_PG, pg_writes(n)) for n in (
    "psycopg_simple", "psycopg_prepared", "psycopg_errors", "psycopg_transaction",
    "psycopg_sslrequest", "pgbench_prepared_2", "asyncpg_errors")]
    + [(_MY, my_writes(n)) for n in (
        "pymysql_text", "pymysql_errors", "pymysql_init_db", "connector_prepared")])


@st.composite
def sql_events(draw):
    """Records of one connection from a real conversation: started
    anywhere, its writes cut into reads, mutated, truncated (with or
    without FLAG_TAIL), lengths that lie, records lost."""
    protocol, conversation = draw(st.sampled_from(_CONVERSATIONS))
    side = draw(st.sampled_from(("client", "server")))
    role = draw(st.sampled_from((C["ROLE_UNKNOWN"], C["ROLE_SERVER"], C["ROLE_CLIENT"])))
    start = draw(st.integers(0, len(conversation) - 1))
    records, seq, ts = [], 0, 1000
    for sender, data in conversation[start:start + draw(st.integers(1, 24))]:
        if draw(st.integers(0, 3)) == 0:
            data = bytes(edit(draw, bytearray(data), INTERESTING))
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=2)))
        for a, b in zip([0] + cuts, cuts + [len(data)]):
            piece = data[a:b]
            length, flags, payload = len(piece), 0, piece
            mode = draw(st.integers(0, 5))
            if mode == 0 and piece:
                payload = piece[:draw(st.integers(0, len(piece) - 1))]
            elif mode == 1 and len(piece) > 64:
                keep = draw(st.integers(64, len(piece) - 1))
                payload, flags = piece[:keep - 64] + piece[-64:], C["FLAG_TAIL"]
            elif mode == 2:
                length = draw(st.integers(0, 1 << 20))
                flags = draw(st.integers(0, 255))
            seq += 1 + (draw(st.integers(0, 15)) == 0)
            outgoing = (sender == "c") == (side == "client")
            records.append(make_record(
                payload, type=C["EVENT_DATA"], pid=77, tid=78, conn_id=5, start_ns=ts,
                end_ns=ts + 10, length=length, captured=len(payload),
                direction=C["DIRECTION_EGRESS"] if outgoing else C["DIRECTION_INGRESS"],
                role=role, protocol=protocol, flags=flags, seq=seq & 0xFFFF))
            ts += 100
    return records


@given(sql_events())
@BUDGET
def test_sql_handler_never_raises(records):
    counts, errors = {}, {}
    handler = SqlConnectionHandler(counts, errors, max_pending=4, max_statements=2)
    out = []
    for record in records:
        handler.event(record, out)
    handler.expire(10**6, 10**9, 500)
    handler.close(5, out, seq=3)
    handler.forget_process(77)
    assert len(handler) == 0
    # Nothing was caught by the handler's last-resort guard.
    assert not [key for key in errors if key[1] == "internal"], errors
    # Every exchange (or prepare ended without a span) is of a query
    # announced before it, once.
    announced, done = set(), set()
    for item in out:
        assert item[0] in (ITEM_SQL_REQUEST, ITEM_SQL_EXCHANGE, ITEM_SQL_PREPARED)
        query = item[2]
        assert isinstance(query, SqlQuery)
        if item[0] == ITEM_SQL_REQUEST:
            announced.add(id(query))
        else:
            assert id(query) in announced and id(query) not in done
            done.add(id(query))
            assert query.error_code is None or isinstance(query.error_code, str)
    assert all(v >= 0 for v in counts.values())
