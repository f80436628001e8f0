"""A client's response copied before its request: a write is copied when
its call ends, so a client whose reader runs on another thread (Go's
net/http) can have the answer in the ring ahead of the request that asked
for it.  The pair is still one exchange when the request was sent before
the response was read; otherwise the response is counted as without a
request, as before."""
from __future__ import annotations

from agent.capture.records import C
from agent.protocols.router import ProtocolRouter
from event_records import http1_record, make_record

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 8080)
EGRESS, INGRESS = 1 - C["DIRECTION_INGRESS"], C["DIRECTION_INGRESS"]
REQUEST = b"GET /items/7 HTTP/1.1\r\nHost: api\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def client(direction: int, payload: bytes, ts: int) -> bytes:
    """A record of the client's connection; its call ends 10 ns after ts."""
    return http1_record(1, 100, C["ROLE_CLIENT"], direction, payload, ts, CLIENT, SERVER)


def exchanges(items: list) -> list[tuple]:
    """(request target, response status) of each paired exchange (a request
    also goes out alone, when its head is read, for the linker)."""
    return [(request.parsed.target, response.parsed.status_code)
            for _, _, request, response in items if response is not None]


def test_a_response_ahead_of_its_request_still_makes_one_exchange():
    router = ProtocolRouter()
    # The request's write began at 100; its record came after the answer,
    # read from 150 to 160.
    items = router.process([client(INGRESS, RESPONSE, 150)])
    assert items == []
    items += router.process([client(EGRESS, REQUEST, 100)])
    assert exchanges(items) == [("/items/7", 200)]
    request, response = items[-1][2], items[-1][3]
    assert (request.first_start_ns, response.last_end_ns) == (100, 160)
    # The next exchange in order pairs as usual.
    items = router.process([client(EGRESS, REQUEST, 300), client(INGRESS, RESPONSE, 350)])
    assert exchanges(items) == [("/items/7", 200)]
    assert router.counts["responses_without_request"] == 0
    assert router.counts["requests_without_response"] == 0


def test_a_response_read_before_the_next_request_was_sent_is_not_its_answer():
    router = ProtocolRouter()
    items = router.process([client(INGRESS, RESPONSE, 150), client(EGRESS, REQUEST, 200)])
    assert exchanges(items) == []
    assert router.counts["responses_without_request"] == 1
    # The request waits for its own response.
    assert exchanges(router.process([client(INGRESS, RESPONSE, 250)])) == [("/items/7", 200)]


def test_an_early_response_whose_request_never_comes_is_counted():
    # ...when the connection closes,
    router = ProtocolRouter()
    router.process([client(INGRESS, RESPONSE, 150)])
    assert router.counts["responses_without_request"] == 0
    router.process([make_record(type=C["EVENT_CLOSE"], conn_id=1)])
    assert router.counts["responses_without_request"] == 1
    # ...when another response comes first,
    router = ProtocolRouter()
    router.process([client(INGRESS, RESPONSE, 150), client(INGRESS, RESPONSE, 250)])
    assert router.counts["responses_without_request"] == 1
    # ...and when it has waited as long as a request waits for its response.
    router = ProtocolRouter(request_timeout_s=1.0)
    router.process([client(INGRESS, RESPONSE, 150)])
    router.expire(150 + 10 + 2_000_000_000)
    assert router.counts["responses_without_request"] == 1
    assert router.counts["http_responses"] == 1
