"""Property tests: no input makes a public parser raise, every status is
one of the three, and results are consistent across truncation and
splitting.  Inputs are mutations of the real captured fixtures plus random
bytes, with a fixed example budget."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.protocols.http1 import ParsedHeads
from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.http1 import (
    ChunkedBody, looks_like_request, looks_like_response, parse_request, parse_response,
    response_has_body, split_target,
)
from agent.parsers.tracecontext import (parse_traceparent, parse_traceparent_fully,
                                        parse_tracestate, traceparent_ids)
from agent.spans.redact import Redactor

from fuzzing import BUDGET, STATUSES, edit, fixture_files

SAMPLES = [data for _, data in fixture_files("http1")]
# Bytes that matter to HTTP framing, so mutations hit interesting paths.
INTERESTING = st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b"0",
                               b"\x00", b"\xff", b"HTTP/1.1", b"chunked", b"-", b"a"])


@st.composite
def mutated(draw):
    data = edit(draw, bytearray(draw(st.sampled_from(SAMPLES))), INTERESTING)
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


INPUTS = st.one_of(mutated(), st.binary(max_size=512))


def _check_head(parse, data: bytes, max_header_bytes: int) -> None:
    status, message, reason = parse(data, max_header_bytes)
    assert status in STATUSES
    if status == PARSED:
        assert reason == "" and 0 < message.header_bytes <= len(data)
        # The same head with any bytes after it parses the same.
        again = parse(data[:message.header_bytes], max_header_bytes)
        assert again[0] == PARSED and again[1].header_bytes == message.header_bytes
        # Every proper prefix is a valid prefix: waiting, never rejected.
        for i in range(0, message.header_bytes, max(1, message.header_bytes // 40)):
            assert parse(data[:i], max_header_bytes)[0] == NEED_MORE, i
    elif status == NEED_MORE:
        assert message is None and reason == ""
    else:
        assert message is None and reason and reason.replace("_", "").isalpha()


@BUDGET
@given(INPUTS, st.sampled_from([16384, 64, 1]))
def test_parse_request_total(data, max_header_bytes):
    _check_head(parse_request, data, max_header_bytes)


@BUDGET
@given(INPUTS, st.sampled_from([16384, 64, 1]))
def test_parse_response_total(data, max_header_bytes):
    _check_head(parse_response, data, max_header_bytes)


@BUDGET
@given(INPUTS)
def test_looks_like_total(data):
    assert looks_like_request(data) in (True, False)
    assert looks_like_response(data) in (True, False)
    # What the cheap checks accept, the parsers do not reject on its first bytes.
    if looks_like_response(data):
        assert parse_response(data[:13])[0] != INVALID
    if looks_like_request(data):
        assert parse_request(data[:data.index(b" ") + 2])[0] != INVALID


@BUDGET
@given(INPUTS, st.lists(st.integers(0, 600), max_size=6))
def test_chunked_split_feeding_matches_whole(data, cuts):
    whole = ChunkedBody()
    status, consumed = whole.feed(data)
    assert status in STATUSES and 0 <= consumed <= len(data)
    pieces = sorted({min(c, len(data)) for c in cuts})
    scanner, start, total, split_status = ChunkedBody(), 0, 0, NEED_MORE
    for cut in pieces + [len(data)]:
        split_status, used = scanner.feed(data[start:cut])
        assert split_status in STATUSES and 0 <= used <= cut - start
        total += used
        start = cut
        if split_status != NEED_MORE:
            break
    assert split_status == status
    if status == PARSED:
        assert total == consumed


@BUDGET
@given(st.text(max_size=200), st.text(max_size=20), st.integers(-1000, 1000))
def test_text_functions_total(text, method, code):
    path, query = split_target(text)
    assert isinstance(path, str) and (query is None or isinstance(query, str))
    assert response_has_body(method, code) in (True, False)
    status, value, reason = parse_traceparent(text)
    assert status in (PARSED, INVALID)
    assert (status, value, reason) == parse_traceparent_fully(text)
    assert parse_tracestate(text) is None or isinstance(parse_tracestate(text), str)
    redactor = Redactor(extra_query_keys=[method])
    assert isinstance(redactor.redact_query(text), str)
    assert isinstance(redactor.redact_url(text), str)


@BUDGET
@given(st.sampled_from(SAMPLES), st.data())
def test_traceparent_mutations(sample, data):
    value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    chars = list(value)
    for _ in range(data.draw(st.integers(0, 3))):
        chars[data.draw(st.integers(0, len(chars) - 1))] = data.draw(st.characters())
    status, parsed, reason = parse_traceparent("".join(chars))
    assert status in (PARSED, INVALID)
    # The common form's shortcut answers as the spec's rules do.
    assert (status, parsed, reason) == parse_traceparent_fully("".join(chars))
    if status == PARSED:
        assert len(parsed[0]) == 16 and len(parsed[1]) == 8 and 0 <= parsed[2] <= 255
    # The exchange records' reader (bytes as captured) gives the same answer.
    raw = "".join(chars).encode("latin-1", "replace")
    assert traceparent_ids(raw) == (parse_traceparent(raw.decode("latin-1"))[1])


def _fields(result) -> tuple:
    status, message, reason = result
    if message is None:
        return status, None, reason
    return status, tuple(getattr(message, name) for name in message.__slots__), reason


@BUDGET
@given(st.lists(INPUTS, min_size=1, max_size=6), st.sampled_from([16384, 64, 1]),
       st.binary(max_size=16))
def test_parsed_heads_answer_as_the_parser_does(inputs, max_header_bytes, suffix):
    """Seen before or not, with any bytes after the head, in any order."""
    for parse in (parse_request, parse_response):
        heads = ParsedHeads(parse, max_header_bytes)
        for data in inputs + [data + suffix for data in inputs] + inputs:
            assert _fields(heads(data, max_header_bytes)) == \
                _fields(parse(data, max_header_bytes)), data
