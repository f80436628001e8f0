"""HTTP/1.x exchanges the probes already paired (EVENT_HTTP_EXCHANGE,
bpf/http_exchange.h): one record becomes the same work item the payload
path's matcher (agent/protocols/http1.py) gives at a response's end, so that
linking, routes, redaction and span building are shared.  No reassembly
and no head parsing: the request's fields arrive split out."""
from __future__ import annotations

from agent.capture import exchange_records
from agent.capture.records import C
from agent.protocols.http1 import ITEM_TAG, Message

EVENT_HTTP_EXCHANGE = C["EVENT_HTTP_EXCHANGE"]
_ROLE_UNKNOWN = C["ROLE_UNKNOWN"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]
_INGRESS = C["DIRECTION_INGRESS"]


class _Request:
    """What the linker and the span read of a request head."""
    __slots__ = ("method", "target", "version", "host", "user_agent", "traceparent",
                 "tracestate")


class _Response:
    __slots__ = ("status_code",)


def exchange_items(conn, record: bytes, hot: tuple, out: list) -> None:
    """Append the (request, response) work items of one exchange record:
    the request's first (its trace context is decided then, as on the
    payload path), then the one its response completes."""
    x = exchange_records.decode(record)
    request = _Request()
    request.method, request.target, request.version = x.method, x.target, x.version
    request.host, request.user_agent = x.host, x.user_agent
    request.traceparent, request.tracestate = x.traceparent, x.tracestate
    start_ns, end_ns, tid = hot[5], hot[6], hot[2]
    if conn.role == _ROLE_UNKNOWN:
        conn.role = _ROLE_SERVER if hot[9] == _INGRESS else _ROLE_CLIENT
    # A request counts as sent when its write began and received when its
    # read returned; the kernel stamped start_ns by that rule, and end_ns
    # (the response's end) by the same.
    message = Message(request, start_ns, start_ns, tid)
    message.last_end_ns = start_ns
    response = Message(_Response(), end_ns, end_ns, tid)
    response.parsed.status_code = x.status_code
    out.append((ITEM_TAG, conn, message, None))
    out.append((ITEM_TAG, conn, message, response))
