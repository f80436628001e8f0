"""The HTTP/1 handler's head cache (agent/protocols/http1.ParsedHeads): a head seen
before is not parsed again, anything else is, and the cache stays bounded.
Heads are the captured fixtures of real clients and servers."""
from __future__ import annotations

from agent.protocols import http1 as connections
from agent.protocols.router import ProtocolRouter
from agent.protocols.http1 import ParsedHeads
from agent.parsers import PARSED
from agent.parsers.http1 import parse_request, parse_response
from agent.capture.records import C

from fuzzing import fixture_files
from test_fuzz_parsers import record

FIXTURES = dict(fixture_files("http1"))
NGINX_RESPONSE = FIXTURES["nginx_static.bin"]
CURL_REQUEST = FIXTURES["curl_get.bin"]


class CountingParser:
    def __init__(self, parse):
        self.parse = parse
        self.calls = 0

    def __call__(self, data, max_header_bytes):
        self.calls += 1
        return self.parse(data, max_header_bytes)


def test_a_repeated_head_is_parsed_once_and_a_changed_one_again():
    parser = CountingParser(parse_response)
    heads = ParsedHeads(parser, 16384)
    first = heads(NGINX_RESPONSE, 16384)
    assert first[0] == PARSED and parser.calls == 1
    # The same head with another body, as the next response on a keep-alive
    # connection arrives.
    head_end = first[1].header_bytes
    again = heads(NGINX_RESPONSE[:head_end] + b"another body", 16384)
    assert again is first and parser.calls == 1
    # One byte of the head differs (the Date line of the next second).
    changed = NGINX_RESPONSE.replace(b"GMT", b"GMX", 1)
    assert changed != NGINX_RESPONSE
    assert heads(changed, 16384)[0] == PARSED and parser.calls == 2


def test_incomplete_invalid_and_long_heads_are_parsed_every_time():
    for data in (CURL_REQUEST[:20],                              # head not complete yet
                 b"GET / HTTP/1.1\r\nbad line\r\n\r\n",          # invalid field line
                 b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n"):  # beyond the cached size
        parser = CountingParser(parse_request)
        heads = ParsedHeads(parser, 16384)
        results = [heads(data, 16384) for _ in range(3)]
        assert parser.calls == 3
        assert results[0][0] == parse_request(data)[0]


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(connections, "MAX_CACHED_HEADS", 8)
    heads = ParsedHeads(parse_request, 16384)
    for i in range(50):
        assert heads(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i, 16384)[0] == PARSED
        assert len(heads._by_head) <= 8


def test_identical_heads_on_two_connections_keep_their_own_times():
    tracker = ProtocolRouter()
    items = []
    for conn_id, t in ((1, 1_000), (2, 5_000)):
        items += tracker.process([record(CURL_REQUEST, conn_id=conn_id, end_ns=t)])
        items += tracker.process([record(NGINX_RESPONSE, conn_id=conn_id, end_ns=t + 700,
                                         direction=C["DIRECTION_EGRESS"])])
    exchanges = [item for item in items if item[3] is not None]
    assert len(exchanges) == 2
    (_, conn1, request1, response1), (_, conn2, request2, response2) = exchanges
    assert request1.parsed is request2.parsed and response1.parsed is response2.parsed
    # A response is timed from the start of its write (record() starts it 10 ns early).
    assert (conn1.conn_id, request1.first_end_ns, response1.last_end_ns) == (1, 1_000, 1_690)
    assert (conn2.conn_id, request2.first_end_ns, response2.last_end_ns) == (2, 5_000, 5_690)
