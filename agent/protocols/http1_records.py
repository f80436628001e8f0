"""HTTP/1.x exchanges the probes already paired (EVENT_HTTP_EXCHANGE,
bpf/http_exchange.h): no reassembly and no head parsing.  One unpack of
the record's fixed part and a slice per value give one compact work item,
linked and built by agent/spans/http_records.py.

Work items:
    (RECORD_TAG, conn, fields, None)    an exchange
    (PAIRED_TAG, conn, fields, True)    a client exchange whose server
                                        exchange (traced here) follows at once
    (SERVING_TAG, conn, fields, None)   a server exchange whose upstream
                                        calls follow it...
    (SERVED_TAG, conn, fields, None)    ...and end here (proxy linking)
fields: (tid, start_ns, end_ns, traceparent, tracestate, request), request:
(method, target, version_minor, host, user_agent, status_code), what the
span's attributes come from; the values are the record's bytes, None for a
header the request did not carry.  traceparent: (trace_id, parent_id,
flags) when the probes decoded it, else its bytes.
"""
from __future__ import annotations

from agent.capture import exchange_records
from agent.capture.records import C
from agent.parsers.http1 import HttpRequest
from agent.protocols.http1 import inside_a_message

EVENT_HTTP_EXCHANGE = C["EVENT_HTTP_EXCHANGE"]
EVENT_HTTP_KEPT_REQUEST = C["EVENT_HTTP_KEPT_REQUEST"]
EVENT_HTTP_SERVING = C["EVENT_HTTP_SERVING"]
EXCHANGE_SIZE = exchange_records.HTTP_EXCHANGE.size
RECORD_TAG = "http1_record"
PAIRED_TAG = "http1_record_paired"
SERVING_TAG = "http1_record_serving"
SERVED_TAG = "http1_record_served"

_ROLE_UNKNOWN = C["ROLE_UNKNOWN"]
_ROLE_SERVER = C["ROLE_SERVER"]
_ROLE_CLIENT = C["ROLE_CLIENT"]
_INGRESS = C["DIRECTION_INGRESS"]
_HAS_HOST = C["HTTP_HAS_HOST"]
_HAS_USER_AGENT = C["HTTP_HAS_USER_AGENT"]
_HAS_TRACEPARENT = C["HTTP_HAS_TRACEPARENT"]
_HAS_TRACESTATE = C["HTTP_HAS_TRACESTATE"]
_HAS_TRACE_IDS = C["HTTP_HAS_TRACE_IDS"]
_TRACE_IDS = exchange_records.TRACE_IDS.unpack_from
_TRACE_IDS_OFFSET = exchange_records.TRACE_IDS_OFFSET
_FIELDS = exchange_records.SPAN_FIELDS
_FIELDS_OFFSET = exchange_records.SPAN_FIELDS_OFFSET
_VALUES = exchange_records.VALUES_OFFSET
_REQUEST_SHAPE = exchange_records.REQUEST_SHAPE_OFFSET
_TRACE_CONTEXT = _HAS_TRACEPARENT | _HAS_TRACESTATE

# Client exchanges held for the server request their thread was serving
# (a proxy's upstream call completes before the request it serves): at most
# this many server connections wait; beyond, the oldest goes out unlinked.
MAX_WAITING = 4096
# Distinct requests without trace context kept for sharing (a dict cleared
# when full: a workload's repeating requests refill it at once).
MAX_REQUESTS = 4096
# Records of a connection held for the server exchange it serves (below):
# past this many, that server's waiters go out unlinked.
MAX_HELD_RECORDS = 1024
_SERVING_NOTE = exchange_records.SERVING_NOTE
_SERVING_NOTE_SIZE = exchange_records.SERVING_NOTE_SIZE
_SERVING_NOTE_OFFSET = exchange_records.SERVING_NOTE_OFFSET


class ExchangeRecords:
    """Exchange records -> work items, in the order the payload path gives
    them: a proxy's server request is decided before the upstream requests
    sent while serving it, and a client's request before the server
    exchange on its other end."""

    def __init__(self, replay=None):
        # Server connection id -> what waits for its exchange: client
        # exchanges (conn, fields), and connections held whole (conn, None).
        self.waiting: dict[int, list] = {}
        # A client connection whose request the probes handed over while
        # its thread served a request still on its way (a proxy's upstream
        # call answered chunked): its records, from that request on, wait
        # for the served exchange, then go through `replay` (the router's)
        # in order, so that the payload path decides the upstream request
        # after the request it serves, as it would have read them.
        # conn id -> (serving conn id, records).
        self.held: dict[int, tuple] = {}
        self.replay = replay
        # A server exchange's items, until its client's record (the same
        # connection from the other end) follows in the same batch: the
        # client's request is then linked first, as the payload path sees
        # it, and the server span takes the same-node link at once instead
        # of waiting in the linker.  Keyed by the pair of ports (client
        # port << 16 | server port): two connections between other
        # addresses with the same ports only change the order of items,
        # the linker matches client and server by their whole tuples.
        self.deferred: dict[int, list] = {}
        # A request's shape bytes (REQUEST_SHAPE_OFFSET on) -> its request tuple.
        self.requests: dict[bytes, tuple] = {}

    def items(self, conn, record: bytes, hot: tuple, out: list) -> bool:
        """False for a malformed record (nothing added)."""
        (serving, status, values_len, target_off, target_len, host_off, user_agent_off,
         traceparent_off, tracestate_off, method_len, host_len, user_agent_len, traceparent_len,
         tracestate_len, version_minor, present) = _FIELDS.unpack_from(record, _FIELDS_OFFSET)
        end = _VALUES + values_len
        if end > len(record):
            return False
        if inside_a_message(conn.state):
            conn.handler.misread()
            return True
        # A request repeats byte for byte (same method, target and headers
        # on a keep-alive connection), or but for its traceparent (an
        # instrumented client's; decoded by the probes, its ids lie before
        # the shape's bytes): its request tuple is made once and shared: it
        # is also pickled once per span worker message, and the worker's
        # template look-up finds it equal by identity.
        traceparent = tracestate = request = None
        if present & _HAS_TRACE_IDS:
            traceparent = _TRACE_IDS(record, _TRACE_IDS_OFFSET)
        context = present & _TRACE_CONTEXT
        if not context:
            key = record[_REQUEST_SHAPE:end]
        elif context == _HAS_TRACEPARENT:
            cut = _VALUES + traceparent_off
            traceparent = record[cut:cut + traceparent_len]
            key = record[_REQUEST_SHAPE:cut] + record[cut + traceparent_len:end]
        else:
            key = None
        if key is not None:
            request = self.requests.get(key)
            if request is not None and request[5] != status:
                request = None
        if request is None:
            values = record[_VALUES:end]
            request = (values[:method_len], values[target_off:target_off + target_len],
                       version_minor,
                       values[host_off:host_off + host_len] if present & _HAS_HOST else None,
                       values[user_agent_off:user_agent_off + user_agent_len]
                       if present & _HAS_USER_AGENT else None, status)
            if key is not None:
                if len(self.requests) >= MAX_REQUESTS:
                    self.requests.clear()
                self.requests[key] = request
            else:
                if present & _HAS_TRACEPARENT:
                    traceparent = values[traceparent_off:traceparent_off + traceparent_len]
                tracestate = values[tracestate_off:tracestate_off + tracestate_len]
        # A request counts as sent when its write began and received when
        # its read returned; the kernel stamped start_ns by that rule, and
        # end_ns (the response's end) by the same.
        fields = (hot[2], hot[5], hot[6], traceparent, tracestate, request)
        if conn.role == _ROLE_UNKNOWN:
            conn.role = _ROLE_SERVER if hot[9] == _INGRESS else _ROLE_CLIENT
        if serving:
            self._wait_for(serving, (conn, fields), out)
            return True
        if conn.role != _ROLE_SERVER:
            self._client(conn, fields, out)
            return True
        held = self.waiting.pop(hot[4], None) if self.waiting else None
        if held:
            items = [(SERVING_TAG, conn, fields, None)]
            self._with_servers(held, items)
            items.append((SERVED_TAG, conn, fields, None))
        else:
            items = ((RECORD_TAG, conn, fields, None),)
        # Its client's record, if traced here, ends later: the server
        # waits for it in this batch (release_deferred).
        key = conn.remote_port << 16 | conn.local_port
        earlier = self.deferred.pop(key, None)
        if earlier is not None:
            out.extend(earlier)
        self.deferred[key] = items
        return True

    def note(self, conn, record: bytes, hot: tuple, out: list) -> bool:
        """A record about a connection the payload path reads: a request
        the probes kept and handed over, or a request sent while its
        thread serves an exchange held in the probes.  False for a
        malformed record, or one of a type this agent does not know."""
        event_type = hot[0]
        if event_type == EVENT_HTTP_KEPT_REQUEST:
            return len(record) >= EXCHANGE_SIZE and self.kept_request(conn, record, hot, out)
        if event_type != EVENT_HTTP_SERVING or len(record) < _SERVING_NOTE_SIZE:
            return False
        if self.replay is not None and conn.conn_id not in self.held:
            serving = _SERVING_NOTE.unpack_from(record, _SERVING_NOTE_OFFSET)[0]
            self._wait_for(serving, (conn, None), out)
            self.held[conn.conn_id] = (serving, [])
        return True

    def kept_request(self, conn, record: bytes, hot: tuple, out: list) -> bool:
        """A request the probes kept, then handed over with its connection
        before its response began (EVENT_HTTP_KEPT_REQUEST): to the
        connection's HTTP/1 handler, as its head read there would have been,
        for the response the payload path reads next (or held, with the
        connection's next records, for the request it serves).  False for
        a malformed record."""
        try:
            kept = exchange_records.decode(record)
        except ValueError:
            return False
        serving = kept.serving_conn_id
        if serving and self.replay is not None:
            self._wait_for(serving, (conn, None), out)
            # Replayed, it is taken at once (its serving exchange has come)
            # and its number is not counted twice.
            again = bytearray(record)
            exchange_records.SERVING.pack_into(again, exchange_records.SERVING_OFFSET, 0)
            exchange_records.SEQ.pack_into(again, exchange_records.SEQ_OFFSET, 0)
            self.held[conn.conn_id] = (serving, [bytes(again)])
            return True
        request = HttpRequest(kept.method, kept.target, kept.version, kept.host,
                              kept.user_agent, kept.traceparent, kept.tracestate,
                              -1, False, False, False, 0)
        conn.handler.kept_request(conn, request, hot, out)
        # A proxy's server request handed over: its upstream calls follow it.
        self.flush(conn.conn_id, out)
        return True

    def held_count(self) -> int:
        """Exchange records and records of held connections waiting for
        the server exchange they serve.  Read by the /metrics thread: the
        tables are copied first (one C call each, under the GIL), so that
        the loop changing them meanwhile does not break the iteration."""
        exchanges = sum(fields is not None for waiters in list(self.waiting.values())
                        for _, fields in list(waiters))
        return exchanges + sum(len(records) for _, records in list(self.held.values()))

    def _wait_for(self, serving: int, waiter: tuple, out: list) -> None:
        """The waiter goes out after the server exchange on `serving`."""
        waiters = self.waiting.get(serving)
        if waiters is None:
            if len(self.waiting) >= MAX_WAITING:
                self.flush(next(iter(self.waiting)), out)
            waiters = self.waiting[serving] = []
        waiters.append(waiter)

    def hold(self, conn_id: int, record: bytes, out: list) -> None:
        """A record of a connection held for the exchange it serves."""
        serving, records = self.held[conn_id]
        records.append(record)
        if len(records) >= MAX_HELD_RECORDS:
            self.flush(serving, out)

    def release_deferred(self, out: list) -> None:
        """At a batch's end: the server exchanges whose client's record did
        not come in it (the linker may hold them for it: client_wait)."""
        for items in self.deferred.values():
            out.extend(items)
        self.deferred.clear()

    def flush(self, conn_id: int, out: list) -> None:
        """The server request will not come as a record (its connection
        closed or went to the payload path): release what waited for it."""
        held = self.waiting.pop(conn_id, None)
        if held:
            self._with_servers(held, out)

    def _with_servers(self, clients: list, out: list) -> None:
        """Held client exchanges ((conn, fields) pairs), each as _client
        gives it, and held connections' records (fields None), replayed."""
        for conn, fields in clients:
            if fields is not None:
                self._client(conn, fields, out)
            else:
                _, records = self.held.pop(conn.conn_id, (None, ()))
                self.replay(records, out)

    def _client(self, conn, fields: tuple, out: list) -> None:
        """A client exchange, followed by the deferred server exchange on
        its other end (traced here too) when that exchange lies within the
        client's times (read after the request was sent, answered before
        the response was read)."""
        server = self.deferred.pop(conn.local_port << 16 | conn.remote_port, None) \
            if self.deferred else None
        if server is None:
            out.append((RECORD_TAG, conn, fields, None))
        elif fields[1] <= server[0][2][1] and server[0][2][2] <= fields[2]:
            out.append((PAIRED_TAG, conn, fields, True))
            out.extend(server)
        else:
            # An earlier exchange's server (its client's record came
            # before it): this client's own server record is still to come.
            out.extend(server)
            out.append((RECORD_TAG, conn, fields, None))
