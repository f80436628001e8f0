"""Fuzz every stage that takes captured bytes: nothing raises, whatever
arrives.  Fixed budget (300 examples per test, no deadline) so the suite's
time stays flat; inputs are random bytes, structured HTTP-ish bytes, and
truncations and mutations of the real events in
tests/fixtures/events/http1_proxy.events.

Stages: agent.parsers.http1 (parse_request, parse_response, ChunkedBody.feed,
split_target), agent.parsers.tracecontext, agent.spans.redact.Redactor and
agent.protocols.router.ProtocolRouter.process with well-formed event headers.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols.http1 import ITEM_TAG
from agent.protocols.router import ProtocolRouter
from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.http1 import ChunkedBody, parse_request, parse_response, split_target
from agent.parsers.tracecontext import parse_traceparent, parse_tracestate
from agent.capture.recording import read_records
from agent.capture.records import C, EVENT_HEADER_SIZE
from agent.spans.builder import LINKS
from agent.spans.redact import REDACTED, Redactor
from event_records import make_record

from fuzzing import BUDGET as SHARED_BUDGET, STATUSES

EVENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "events", "http1_proxy.events")
RECORDS = read_records(EVENTS)
BUDGET = settings(SHARED_BUDGET, suppress_health_check=[*SHARED_BUDGET.suppress_health_check,
                                                        HealthCheck.filter_too_much])

TOKENS = [b"GET ", b"POST ", b"HTTP/1.1", b"HTTP/1.0 ", b"200 OK", b"\r\n", b"\n", b"\r\n\r\n",
          b"Host: x", b"Content-Length: ", b"Transfer-Encoding: chunked", b"0\r\n\r\n",
          b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
          b"Connection: close", b": ", b" ", b"/", b"?a=1&token=s", b"5\r\nhello\r\n",
          b"\x00", b"\xff", b"99999999999999999999", b"-1", b"a" * 40, b"\t"]
http_ish = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=16)),
                    max_size=24).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=600), http_ish)
payloads = [r[EVENT_HEADER_SIZE:] for r in RECORDS]


@st.composite
def mutated_payload(draw):
    data = bytearray(draw(st.sampled_from(payloads)))
    for _ in range(draw(st.integers(0, 5))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 3))
        if op == 0 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == 2:
            del data[pos:pos + draw(st.integers(1, 40))]
        else:
            data = data[:pos]
    return bytes(data)


inputs = st.one_of(any_bytes, mutated_payload())


# -- http1 -------------------------------------------------------------------

@BUDGET
@given(inputs, st.integers(0, 20000))
def test_parse_request_and_response_never_raise(data, limit):
    for parse in (parse_request, parse_response):
        result = parse(data, limit)
        assert result[0] in STATUSES
        if result[0] == PARSED:
            assert 0 < result[1].header_bytes <= len(data)
        elif result[0] == INVALID:
            assert isinstance(result[2], str) and result[2]


@BUDGET
@given(inputs, st.lists(st.integers(0, 64), max_size=12))
def test_chunked_body_feed_never_raises(data, cuts):
    body = ChunkedBody()
    pos = 0
    for cut in cuts + [len(data)]:
        piece = data[pos:pos + cut]
        pos += len(piece)
        status, consumed = body.feed(piece)
        assert status in STATUSES and 0 <= consumed <= len(piece)
        if status != NEED_MORE:
            # Terminal: it stays there and consumes nothing more.
            assert body.feed(b"0\r\n\r\n")[0] == status
            break


@BUDGET
@given(st.text(max_size=200))
def test_split_target_never_raises(target):
    path, query = split_target(target)
    assert isinstance(path, str) and (query is None or isinstance(query, str))


# -- trace context -------------------------------------------------------------

traceparent_ish = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[0-9a-fA-F]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.{0,8})?", fullmatch=True),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
)


@BUDGET
@given(traceparent_ish)
def test_traceparent_never_raises(value):
    status, parsed, reason = parse_traceparent(value)
    assert status in (PARSED, INVALID)
    if status == PARSED:
        trace_id, parent_id, flags = parsed
        assert len(trace_id) == 16 and len(parent_id) == 8 and 0 <= flags <= 255
    else:
        assert parsed is None and reason


@BUDGET
@given(st.one_of(st.text(max_size=300),
                 st.lists(st.from_regex(r"[a-z0-9@_*/-]{0,12}=[\x20-\x7e]{0,12}", fullmatch=True),
                          max_size=40).map(",".join)))
def test_tracestate_never_raises(value):
    result = parse_tracestate(value)
    assert result is None or isinstance(result, str)


# -- redaction -----------------------------------------------------------------

@BUDGET
@given(st.text(max_size=300), st.text(alphabet="abcdefghijklmnop0123456789-_", min_size=8, max_size=20))
def test_redactor_never_raises_and_hides_secrets(text, secret):
    redactor = Redactor(extra_query_keys=["session"])
    assert isinstance(redactor.redact_query(text), str)
    assert isinstance(redactor.redact_url(text), str)
    for key in ("token", "api_key", "X-Amz-Signature", "session"):
        query = f"{text.replace('#', '')}&{key}={secret}"
        redacted = redactor.redact_query(query)
        assert f"{key}={REDACTED}" in redacted
        url = redactor.redact_url(f"http://user:{secret}@h/p?{query}")
        assert secret not in url.split("#")[0].replace(text, "")


# -- connection tracker ------------------------------------------------------------

def record(payload: bytes, *, conn_id: int = 1, direction: int = C["DIRECTION_INGRESS"],
           role: int = C["ROLE_SERVER"], protocol: int = C["PROTOCOL_HTTP1"],
           event: int = C["EVENT_DATA"], length: int | None = None, end_ns: int = 1000,
           flags: int = 0) -> bytes:
    return make_record(
        payload, type=event, pid=100, tid=101, fd=5, conn_id=conn_id,
        start_ns=max(0, end_ns - 10), end_ns=end_ns,
        length=len(payload) if length is None else length, captured=len(payload),
        direction=direction, role=role, protocol=protocol, flags=flags,
        probe=C["PROBE_READ"], local_addr=b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]),
        remote_addr=b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]),
        local_port=8080, remote_port=40000 + conn_id % 20000, family=10)


def check_output(items):
    """Every item is one the span stage links (a flipped header byte can
    name another protocol: its handler's items are as valid); an HTTP/1
    exchange's messages are parsed."""
    for item in items:
        assert item[0] in LINKS, item[0]
        if item[0] == ITEM_TAG and item[3] is not None:
            _, conn, request, response = item
            assert request.parsed is not None and response.parsed is not None


events = st.builds(
    lambda payload, conn_id, direction, role, protocol, event, extra, end_ns: record(
        payload, conn_id=conn_id, direction=direction, role=role, protocol=protocol,
        event=event, length=len(payload) + extra, end_ns=end_ns),
    inputs,
    st.integers(1, 4),
    st.sampled_from([C["DIRECTION_INGRESS"], C["DIRECTION_EGRESS"]]),
    st.sampled_from([C["ROLE_UNKNOWN"], C["ROLE_SERVER"], C["ROLE_CLIENT"]]),
    st.sampled_from([C["PROTOCOL_HTTP1"], C["PROTOCOL_HTTP1"], C["PROTOCOL_UNKNOWN"],
                     C["PROTOCOL_HTTP2"]]),
    st.sampled_from([C["EVENT_DATA"]] * 5 + [C["EVENT_CLOSE"]]),
    st.sampled_from([0, 0, 0, 1, 100, 70000]),
    st.integers(1, 2 ** 40),
)


@BUDGET
@given(st.lists(events, max_size=30), st.integers(1, 3))
def test_tracker_survives_fuzzed_events(batch, batches):
    tracker = ProtocolRouter(max_connections=3, max_pending_requests=4, max_header_bytes=2048)
    size = max(1, len(batch) // batches)
    for i in range(0, len(batch), size):
        check_output(tracker.process(batch[i:i + size]))
    tracker.expire(2 ** 62)
    assert all(v >= 0 for v in tracker.counts.values())
    assert len(tracker.table) <= 3


@st.composite
def damaged_recording(draw):
    records = list(RECORDS)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(records) - 1))
        data = bytearray(records[i])
        op = draw(st.integers(0, 5))
        if op == 0:                                    # truncated anywhere, header too
            data = data[:draw(st.integers(0, len(data)))]
        elif op == 1 and len(data) > EVENT_HEADER_SIZE:  # payload byte flipped
            pos = draw(st.integers(EVENT_HEADER_SIZE, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
        elif op == 2 and data:                         # header byte flipped
            pos = draw(st.integers(0, min(EVENT_HEADER_SIZE, len(data)) - 1))
            data[pos] ^= draw(st.integers(1, 255))
        elif op == 3:                                  # event lost
            del records[i]
            continue
        elif op == 4:                                  # event duplicated
            records.insert(i, bytes(data))
        else:                                          # payload mutated like above
            data = data[:EVENT_HEADER_SIZE] + draw(mutated_payload())
        records[i] = bytes(data)
    if draw(st.booleans()):
        j = draw(st.integers(0, len(records) - 1))
        k = draw(st.integers(0, len(records) - 1))
        records[j], records[k] = records[k], records[j]
    return records


@BUDGET
@given(damaged_recording())
def test_tracker_survives_damaged_recording(records):
    tracker = ProtocolRouter()
    check_output(tracker.process(records))
    assert all(v >= 0 for v in tracker.parse_errors.values())


def test_recording_replays_cleanly():
    tracker = ProtocolRouter()
    items = tracker.process(RECORDS)
    # The fixture: client -> nginx -> backend, 14 exchanges seen at both ends.
    assert sum(1 for item in items if item[3] is not None) == 28
    assert tracker.parse_errors == {}


@BUDGET
@given(st.sampled_from([
    b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"GET /\x00\x01 HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]), st.integers(1, 50))
def test_parse_errors_are_counted(bad, conn_id):
    tracker = ProtocolRouter()
    tracker.process([record(bad, conn_id=conn_id)])
    assert sum(tracker.parse_errors.values()) == 1, tracker.parse_errors
    # The connection recovers at the next message start.
    items = tracker.process([
        record(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n", conn_id=conn_id),
        record(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", conn_id=conn_id,
               direction=C["DIRECTION_EGRESS"])])
    assert [i[2].parsed.target for i in items if i[3] is None] == ["/next"]
    assert sum(1 for i in items if i[3] is not None) == 1
    assert sum(tracker.parse_errors.values()) == 1
