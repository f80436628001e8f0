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
EXCHANGE_SIZE = exchange_records.HTTP_EXCHANGE.size
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


# Client exchanges held for the server request their thread was serving
# (a proxy's upstream call completes before the request it serves): at most
# this many server connections wait; beyond, the oldest goes out unlinked.
MAX_WAITING = 4096


class ExchangeRecords:
    """Exchange records -> work items, in the order the payload path gives
    them: a proxy's server request is decided before the upstream requests
    sent while serving it."""

    def __init__(self):
        self.waiting: dict[int, list] = {}

    def items(self, conn, record: bytes, hot: tuple, out: list) -> bool:
        """False for a malformed record (nothing added)."""
        try:
            x = exchange_records.decode(record)
        except ValueError:
            return False
        request_item, response_item = _work_items(conn, x, hot)
        serving = x.serving_conn_id
        if serving:
            held = self.waiting.get(serving)
            if held is None:
                if len(self.waiting) >= MAX_WAITING:
                    self.flush(next(iter(self.waiting)), out)
                held = self.waiting[serving] = []
            held.append(request_item)
            held.append(response_item)
            return True
        out.append(request_item)
        held = self.waiting.pop(hot[4], None)
        if held:
            out.extend(held)
        out.append(response_item)
        return True

    def flush(self, conn_id: int, out: list) -> None:
        """The server request will not come as a record (its connection
        closed or went to the payload path): release what waited for it."""
        held = self.waiting.pop(conn_id, None)
        if held:
            out.extend(held)


def _work_items(conn, x, hot: tuple) -> tuple:
    """The (request, response) work items of one exchange record."""
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
    response = Message(_Response(), end_ns, end_ns, tid)
    response.parsed.status_code = x.status_code
    return (ITEM_TAG, conn, message, None), (ITEM_TAG, conn, message, response)
