"""Property tests of the Redis and memcached parsers: no input makes one
raise, every result is parsed / needs more / invalid with a reason, and
results are consistent across truncation.  Inputs are mutations of the
recorded fixtures plus random bytes, with a fixed example budget."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers import memcached as mc
from agent.parsers import redis as rd

from fuzzing import BUDGET, STATUSES, edit, fixture_files

REDIS = [data for _, data in fixture_files("redis")]
MEMCACHED = [data for _, data in fixture_files("memcached")]
INTERESTING = st.sampled_from([b"\r\n", b"\r", b"\n", b"*", b"$", b"+", b"-", b":", b"%", b">",
                               b"|", b"~", b"_", b"#", b",", b"(", b"=", b"!", b"-1", b"0",
                               b"9999999999", b" ", b"\"", b"'", b"\x00", b"\xff", b"VALUE ",
                               b"END\r\n", b"noreply", b" q", b"VA 3 ", b"get "])


def mutated(samples):
    @st.composite
    def draw_one(draw):
        base = draw(st.sampled_from(samples))
        start = draw(st.integers(0, max(0, len(base) - 1)))
        data = edit(draw, bytearray(base[start:start + 600]), INTERESTING)
        return bytes(data[:draw(st.integers(0, len(data)))])
    return st.one_of(draw_one(), st.binary(max_size=300))


def _check(result, data: bytes, partial: bool) -> None:
    status, message, consumed, reason = result
    assert status in STATUSES
    if status == PARSED:
        assert reason == "" and consumed > 0
        if message is not None:
            assert consumed == message.length
            if not partial:
                assert consumed <= len(data) and not message.truncated and message.framed
            if consumed > len(data) or not message.framed:
                assert partial and message.truncated
    elif status == NEED_MORE:
        assert message is None and reason == "" and consumed > len(data)
    else:
        assert message is None and consumed == 0 and reason.replace("_", "").isalpha()


def _prefixes_wait(parse, data: bytes, length: int) -> None:
    """A whole message's proper prefixes are never rejected."""
    for i in range(1, length, max(1, length // 30)):
        assert parse(data[:i])[0] == NEED_MORE, i


@BUDGET
@given(mutated(REDIS), st.booleans())
def test_redis_command_total(data, partial):
    result = rd.parse_command(data, partial)
    _check(result, data, partial)
    if result[0] == PARSED and result[1] is not None and not result[1].truncated:
        again = rd.parse_command(data[:result[2]])
        assert again[0] == PARSED and again[2] == result[2]
        assert again[1].query_text == result[1].query_text
        if not result[1].inline:
            _prefixes_wait(rd.parse_command, data, result[2])


@BUDGET
@given(mutated(REDIS), st.booleans())
def test_redis_pipeline_total(data, partial):
    status, commands, consumed, reason = rd.parse_commands(data, partial)
    assert status in STATUSES and 0 <= consumed
    assert (reason == "") == (status != INVALID)
    # Blank inline lines are skipped: they count in consumed only.
    assert sum(c.length for c in commands) <= consumed
    for c in commands:
        assert c.name and "?" not in c.name and c.arg_count >= 0


@BUDGET
@given(mutated(REDIS), st.booleans(), st.booleans())
def test_redis_reply_total(data, partial, elements):
    result = rd.parse_reply(data, partial, elements)
    _check(result, data, partial)
    r = result[1]
    if result[0] == PARSED and not r.truncated:
        again = rd.parse_reply(data[:result[2]])
        assert again[0] == PARSED and again[1].kind == r.kind and again[1].error == r.error
        _prefixes_wait(rd.parse_reply, data, result[2])
    if r is not None and r.elements is not None:
        assert len(r.elements) <= r.count


@BUDGET
@given(mutated(MEMCACHED), st.booleans())
def test_memcached_request_total(data, partial):
    result = mc.parse_request(data, partial)
    _check(result, data, partial)
    c = result[1]
    if result[0] == PARSED and not c.truncated:
        again = mc.parse_request(data[:result[2]])
        assert again[0] == PARSED and again[1].key_count == c.key_count
    if c is not None:
        assert c.key_count >= 0


@BUDGET
@given(mutated(MEMCACHED), st.booleans())
def test_memcached_reply_total(data, partial):
    result = mc.parse_reply(data, partial)
    _check(result, data, partial)
    r = result[1]
    if result[0] == PARSED and not r.truncated:
        again = mc.parse_reply(data[:result[2]])
        assert again[0] == PARSED and again[1].kind == r.kind and again[1].hits == r.hits
        _prefixes_wait(mc.parse_reply, data, result[2])


@BUDGET
@given(st.one_of(mutated(REDIS), mutated(MEMCACHED)))
def test_classifiers_total(data):
    for check in (rd.looks_like_redis_request, rd.looks_like_redis_reply,
                  mc.looks_like_memcached_request, mc.looks_like_memcached_reply):
        assert check(data) in (True, False)
