"""Spans from exchange records against spans from the payload path, for the
same traffic: the records the probes would write (one per exchange and
side, in the order they end) and the data records of the same calls,
each through router, linker, span factory, request metrics and encoder."""
from __future__ import annotations

import pickle

from agent.capture.records import C
from agent.export.otlp_encode import encode_export_request
from agent.metrics.red import RedAggregator
from agent.protocols.router import ProtocolRouter
from agent.spans.builder import ExchangeLinker, SpanFactory
from agent.spans.model import KIND_CLIENT, KIND_SERVER, Span, TemplatedSpan
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from agent.spans.routes import RouteNamer
from event_records import http1_record, http_exchange_record, http_serving_note
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
IN, OUT = C["DIRECTION_INGRESS"], C["DIRECTION_EGRESS"]
SERVER, CLIENT = C["ROLE_SERVER"], C["ROLE_CLIENT"]
HOST = "127.0.0.1"


class Traffic:
    """Calls between processes on loopback, as both kinds of record."""

    def __init__(self, client_ahead_ns: int = 0):
        self.payload: list[tuple[int, bytes]] = []    # (time, data record)
        self.records: list[tuple[int, bytes]] = []    # (time the exchange ended, record)
        self.next_conn = 1
        # How much earlier than its server's a client's record reaches the
        # ring (0: 10 ns after the client read the response, after the
        # server's): the client's call can return first on another core.
        self.client_ahead_ns = client_ahead_ns

    def connection(self, client_pid: int, server_pid: int, server_port: int) -> tuple:
        client_id, server_id = self.next_conn, self.next_conn + 1
        self.next_conn += 2
        client_port = 40000 + client_id
        return (client_id, client_pid, (HOST, client_port), (HOST, server_port),
                server_id, server_pid)

    def call(self, conn: tuple, t: int, duration: int = 1000, method: bytes = b"GET",
             target: bytes = b"/", host: bytes | None = None, user_agent: bytes | None = None,
             traceparent: bytes | None = None, tracestate: bytes | None = None,
             status: int = 200, serving: int = 0, inner=None, client_traced: bool = True,
             chunked: bool = False, client_on_payload: bool = False) -> None:
        """A request at t answered by duration later; `inner(t)` makes the
        server's own upstream calls while it serves (serving: its conn id).
        chunked: a response the probes cannot frame; they hand each side's
        request over (EVENT_HTTP_KEPT_REQUEST) ahead of the response's data
        record, and the connection stays on the payload path.
        client_on_payload: the client's side went to the payload path
        earlier: data records, after a serving note when it serves."""
        client_id, client_pid, client_end, server_end, server_id, server_pid = conn
        head = method + b" " + target + b" HTTP/1.1\r\n"
        for name, value in ((b"Host", host), (b"User-Agent", user_agent),
                            (b"traceparent", traceparent), (b"tracestate", tracestate)):
            if value is not None:
                head += name + b": " + value + b"\r\n"
        request = head + b"\r\n"
        reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}[status]
        response = b"HTTP/1.1 %d %s\r\nContent-Length: 2\r\n\r\nok" % (status, reason)
        if chunked:
            response = (b"HTTP/1.1 %d %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"2\r\nok\r\n0\r\n\r\n" % (status, reason))
        # A data record lasts 10 ns (http1_record): sent at its start,
        # received at its end, as the kernel stamps them.
        sent, read, answered, got = t, t + 100, t + duration - 100, t + duration
        self.payload += [
            (read, http1_record(server_id, server_pid, SERVER, IN, request, read, server_end,
                                client_end)),
            (answered, http1_record(server_id, server_pid, SERVER, OUT, response, answered,
                                    server_end, client_end))]
        values = dict(method=method, target=target, host=host, user_agent=user_agent,
                      traceparent=traceparent, tracestate=tracestate, status=status)
        if chunked:
            self.records += [
                (answered, http_exchange_record(server_id, server_pid, SERVER, IN, read + 10, 0,
                                                server_end, client_end, kept=True, **values)),
                (answered, http1_record(server_id, server_pid, SERVER, OUT, response, answered,
                                        server_end, client_end))]
        else:
            self.records.append(
                (answered, http_exchange_record(server_id, server_pid, SERVER, IN, read + 10,
                                                answered, server_end, client_end, **values)))
        if inner is not None:
            inner(t + 200)
        if not client_traced:
            return
        self.payload += [
            (sent, http1_record(client_id, client_pid, CLIENT, OUT, request, sent, client_end,
                                server_end)),
            (got, http1_record(client_id, client_pid, CLIENT, IN, response, got, client_end,
                               server_end))]
        if client_on_payload:
            if serving:
                self.records.append((sent, http_serving_note(client_id, client_pid, serving,
                                                             sent, client_end, server_end)))
            self.records += self.payload[-2:]
            return
        if chunked:
            self.records += [
                (got, http_exchange_record(client_id, client_pid, CLIENT, OUT, sent, 0,
                                           client_end, server_end, serving=serving, kept=True,
                                           **values)),
                (got, http1_record(client_id, client_pid, CLIENT, IN, response, got, client_end,
                                   server_end))]
            return
        self.records.append(
            (got + 10 - self.client_ahead_ns,
             http_exchange_record(client_id, client_pid, CLIENT, OUT, sent, got + 10,
                                            client_end, server_end, serving=serving, **values)))

    def spans(self, path: str, factory_kwargs=None, batch: int = 1 << 20) -> list:
        timed = self.payload if path == "payload" else self.records
        records = [record for _, record in sorted(timed, key=lambda x: x[0])]
        router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=60.0)
        factory = SpanFactory(ResourceCache(host_attributes=[]), Redactor(),
                              **(factory_kwargs or {}))
        factory.clock_offset_ns = 0     # kernel times as they were recorded
        exchanges = []
        for i in range(0, len(records), batch):
            exchanges += linker.exchanges(router.process(records[i:i + batch]))
        exchanges += linker.release_held(flush=True)
        self.linker_counts = dict(linker.counts)
        spans = factory.spans(exchanges)
        self.redactions = dict(factory.redactor.counts)
        return spans


def shape(spans: list) -> list:
    """Every field of every span, random ids replaced by their order of
    first appearance: the same links give the same labels."""
    labels: dict = {}

    def label(value: bytes):
        if not value:
            return None
        if value.hex() in TRACEPARENT.decode():
            return value.hex()
        return labels.setdefault(value, len(labels))
    out = []
    for s in sorted(spans, key=lambda s: (s.start_ns, s.kind)):
        out.append((s.kind, s.name, list(s.attributes), s.status_code, s.status_message,
                    s.start_ns, s.end_ns, s.trace_state, s.trace_flags, label(s.trace_id),
                    label(s.span_id), label(s.parent_span_id), s.resource.pid))
    return out


def mixed_traffic(rounds: int = 3, client_ahead_ns: int = 0) -> Traffic:
    """The same calls `rounds` times on the same connections: a shape's
    first span is a plain Span, the next ones TemplatedSpans."""
    traffic = Traffic(client_ahead_ns)
    curl = traffic.connection(100, 200, 8080)
    other = traffic.connection(101, 200, 8080)
    # nginx (pid 300) proxying to a backend (pid 400): one upstream call
    # forwards the caller's traceparent, one carries none.
    front = traffic.connection(102, 300, 80)
    upstream = traffic.connection(300, 400, 9000)
    # A caller nginx's node does not trace.
    outside = traffic.connection(103, 300, 80)
    for t in range(0, rounds * 100_000, 100_000):
        traffic.call(curl, t + 1_000, target=b"/items?id=7&token=s3cret",
                     host=b"example.com:8080", user_agent=b"curl/8.5", traceparent=TRACEPARENT,
                     tracestate=b"vendor=x")
        traffic.call(curl, t + 5_000, target=b"/missing", status=404, user_agent=b"curl/8.5")
        traffic.call(other, t + 9_000, method=b"POST", target=b"/fail", status=500)
        traffic.call(other, t + 13_000, method=b"BREW", target=b"/pot", host=b"[::1]:8080")
        traffic.call(other, t + 17_000, target=b"/items?id=7&token=s3cret",
                     host=b"example.com:8080", user_agent=b"curl/8.5")
        traffic.call(other, t + 19_000, target=b"/bad", traceparent=TRACEPARENT.upper(),
                     tracestate=b"=broken")
        traffic.call(front, t + 21_000, duration=4000, target=b"/api", traceparent=TRACEPARENT,
                     inner=lambda t: traffic.call(upstream, t, target=b"/api",
                                                  traceparent=TRACEPARENT, serving=front[4]))
        traffic.call(front, t + 30_000, duration=4000, target=b"/plain",
                     inner=lambda t: traffic.call(upstream, t, target=b"/plain",
                                                  serving=front[4]))
        traffic.call(outside, t + 40_000, duration=4000, target=b"/api",
                     traceparent=TRACEPARENT, client_traced=False,
                     inner=lambda t: traffic.call(upstream, t, target=b"/api",
                                                  traceparent=TRACEPARENT, serving=outside[4]))
    return traffic


def test_records_and_payload_give_the_same_spans():
    traffic = mixed_traffic()
    payload = traffic.spans("payload")
    payload_redactions = traffic.redactions
    payload_counts = traffic.linker_counts
    records = traffic.spans("records")
    assert len(payload) == 3 * 23
    # Each shape's first span is plain, the others share its template.
    plain = sum(not isinstance(s, TemplatedSpan) for s in records)
    assert 0 < plain <= 23 and len(records) - plain >= 2 * 23
    assert shape(records) == shape(payload)
    # Invalid trace context is counted once per request and side.
    for key in ("traceparent_invalid", "tracestate_invalid"):
        assert traffic.linker_counts[key] == payload_counts[key]
    assert payload_counts["traceparent_invalid"] == 6
    # Redaction is counted per span, though a shape is redacted once.
    assert traffic.redactions == payload_redactions and payload_redactions["query_param"] == 12


def test_client_records_ahead_of_their_servers_give_the_same_spans():
    """Every client record before its server's (proxies and their upstream
    calls too), in one batch and one record a batch: the spans are the
    payload path's."""
    traffic = mixed_traffic(client_ahead_ns=200)
    payload = traffic.spans("payload")
    waits = dict(traffic.linker_counts)
    for batch in (1 << 20, 1):
        assert shape(traffic.spans("records", batch=batch)) == shape(payload), batch
        # Only the caller nginx's node does not trace is waited for in vain.
        assert traffic.linker_counts["link_wait_expired"] == waits["link_wait_expired"] == 3


def test_a_server_record_waits_for_its_client_in_the_next_batch_too():
    """In one batch the client's record is linked first (the router defers
    the server's); one record per batch, the linker holds the server span."""
    traffic = mixed_traffic()
    together = traffic.spans("records")
    assert traffic.linker_counts["link_wait_linked"] == 0
    apart = traffic.spans("records", batch=1)
    assert traffic.linker_counts["link_wait_linked"] > 0
    assert shape(apart) == shape(together)


def test_same_node_and_proxy_links():
    spans = {(s.kind, s.resource.pid, s.attribute("url.path") or s.attribute("url.full")): s
             for s in mixed_traffic().spans("records")}
    # A client without traceparent: the server span on the other end is its child.
    client = spans[(KIND_CLIENT, 101, "http://127.0.0.1:8080/fail")]
    server = spans[(KIND_SERVER, 200, "/fail")]
    assert (server.trace_id, server.parent_span_id) == (client.trace_id, client.span_id)
    # Proxy: each upstream call is a child of the request nginx serves, and
    # the backend's span a child of the upstream call.
    for path in ("/api", "/plain"):
        served = spans[(KIND_SERVER, 300, path)]
        call = spans[(KIND_CLIENT, 300, f"http://127.0.0.1:9000{path}")]
        backend = spans[(KIND_SERVER, 400, path)]
        assert call.parent_span_id == served.span_id and backend.parent_span_id == call.span_id
        assert call.trace_id == backend.trace_id
    assert spans[(KIND_SERVER, 300, "/api")].trace_id == bytes.fromhex(TRACE_ID)


def test_routes_and_request_metrics_match():
    traffic = mixed_traffic()
    routes = {"routes": RouteNamer(["/items", "/api"])}
    payload, records = traffic.spans("payload", routes), traffic.spans("records", routes)
    assert shape(records) == shape(payload)
    assert {s.name for s in records} >= {"GET /items", "GET /api"}
    metrics = []
    for spans in (payload, records):
        red = RedAggregator()
        red.observe(spans)
        metrics.append(red.snapshot())
    assert metrics[0] == metrics[1]


def test_a_templated_span_encodes_as_its_span_would():
    records = mixed_traffic().spans("records")
    plain = [as_span(s) for s in records]
    encoded = encode_export_request(records)
    assert encoded == encode_export_request(plain)
    request = ExportTraceServiceRequest.FromString(encoded)
    decoded = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(decoded) == len(records)
    assert any(s.trace_state == "vendor=x" for s in decoded)


def test_plain_tuples_across_the_process_boundary_build_the_same_spans():
    """Span workers receive exchanges pickled as plain tuples."""
    records = [record for _, record in sorted(mixed_traffic().records, key=lambda x: x[0])]
    linker = ExchangeLinker(link_wait_s=60.0)
    exchanges = linker.exchanges(ProtocolRouter().process(records))
    exchanges += linker.release_held(flush=True)
    received = pickle.loads(pickle.dumps([tuple(e) for e in exchanges], pickle.HIGHEST_PROTOCOL))
    factory = SpanFactory(ResourceCache(host_attributes=[]), Redactor())
    assert shape(factory.spans(received)) == shape(factory.spans(exchanges))
    # Held exchanges the linker releases go to the workers as they are.
    assert pickle.loads(pickle.dumps(exchanges, pickle.HIGHEST_PROTOCOL)) == exchanges


def test_a_late_client_link_is_never_taken_by_the_next_server_span():
    """Without a link wait, a server span whose client's record came in a
    later batch goes out unlinked; that client's link must not become the
    parent of the next server span on the connection."""
    traffic = Traffic()
    conn = traffic.connection(100, 200, 8080)
    traffic.call(conn, 1_000, target=b"/1")
    traffic.call(conn, 5_000, target=b"/2")
    server_1, client_1, server_2, client_2 = [r for _, r in sorted(traffic.records,
                                                                   key=lambda x: x[0])]
    router, linker = ProtocolRouter(), ExchangeLinker()
    factory = SpanFactory(ResourceCache(host_attributes=[]), Redactor())
    spans = []
    for batch in ([server_1], [client_1], [server_2, client_2]):
        spans += factory.spans(linker.exchanges(router.process(batch)))
    by = {(s.kind, s.attribute("url.path") or s.attribute("url.full")[-2:]): s for s in spans}
    assert by[(KIND_SERVER, "/1")].parent_span_id == b""
    assert by[(KIND_SERVER, "/2")].parent_span_id == by[(KIND_CLIENT, "/2")].span_id
    assert by[(KIND_SERVER, "/2")].trace_id == by[(KIND_CLIENT, "/2")].trace_id
    assert len(linker.linker) == 0


def as_span(s) -> Span:
    return Span(s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.start_ns, s.end_ns,
                list(s.attributes), s.resource, s.status_code, s.status_message, s.trace_state,
                s.trace_flags)


def test_the_sampler_and_the_other_sinks_read_a_templated_span_as_a_span():
    from agent.export.console import ConsoleSink
    from agent.export.sdk import SdkConverter
    from agent.spans.sampling import Sampler
    records = mixed_traffic().spans("records")
    plain = [as_span(s) for s in records]
    assert [ConsoleSink.format_span(s) for s in records] == [ConsoleSink.format_span(s)
                                                             for s in plain]
    converter = SdkConverter()
    for a, b in zip(records, plain):
        x, y = converter.convert(a), converter.convert(b)
        assert (x.name, x.kind, dict(x.attributes), x.status.status_code, x.context,
                x.parent) == (y.name, y.kind, dict(y.attributes), y.status.status_code,
                              y.context, y.parent)
    kept = [Sampler(ratio=0.0).filter(spans) for spans in (records, plain)]
    assert [s.span_id for s in kept[0]] == [s.span_id for s in kept[1]]
    assert 0 < len(kept[0]) < len(records)


def test_request_metrics_count_every_span_of_a_template_whatever_its_process_or_aggregator():
    """A template keeps the series its last span went to: spans of one
    shape from two processes in turn, and two aggregators seeing the same
    spans, still count as the plain spans do."""
    from agent.spans.resources import ProcessResource
    records = mixed_traffic(rounds=5).spans("records")
    assert sum(isinstance(s, TemplatedSpan) for s in records) >= 4 * 23
    other = ProcessResource(999, [("service.name", "other")])
    mixed = [s._replace(resource=other) if i % 2 and isinstance(s, TemplatedSpan) else s
             for i, s in enumerate(records)]
    expected = RedAggregator()
    expected.observe([as_span(s) for s in mixed])
    first, second = RedAggregator(), RedAggregator()
    for part in (mixed[:30], mixed[30:]):
        first.observe(part)
        second.observe(part)
    assert first.snapshot() == second.snapshot() == expected.snapshot()
    assert "other" in expected.snapshot()["services"]


def test_span_shapes_kept_are_bounded(monkeypatch):
    from agent.spans import http_records, templates
    monkeypatch.setattr(templates, "MAX_TEMPLATES", 8)
    traffic = Traffic()
    conn = traffic.connection(100, 200, 8080)
    for i in range(40):
        traffic.call(conn, i * 10_000, target=b"/items/%d" % (i % 20))
    router, linker = ProtocolRouter(), ExchangeLinker()
    factory = SpanFactory(ResourceCache(host_attributes=[]), Redactor())
    records = [record for _, record in sorted(traffic.records, key=lambda x: x[0])]
    spans = factory.spans(linker.exchanges(router.process(records)))
    assert len(spans) == 80
    shapes = factory.builders[http_records.TAG].__self__
    assert len(shapes.templates) <= 8 and len(shapes.shared) <= 8


def test_an_untraced_loopback_client_is_waited_for_once_on_both_paths():
    """A loopback peer that sends no record (a load generator outside the
    selection): its first exchange waits, then its connection's exchanges
    leave at once, on both paths alike."""
    import time

    traffic = Traffic()
    conn = traffic.connection(100, 200, 8080)
    for t in (1_000, 5_000, 9_000):
        traffic.call(conn, t, target=b"/%d" % t, client_traced=False)
    for path in ("payload", "records"):
        timed = traffic.payload if path == "payload" else traffic.records
        records = [r for _, r in sorted(timed, key=lambda x: x[0])]
        per_exchange = len(records) // 3
        router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=0.05)
        assert linker.exchanges(router.process(records[:per_exchange])) == []
        time.sleep(0.06)
        released = linker.release_held()
        later = linker.exchanges(router.process(records[per_exchange:]))
        assert [len(released), len(later)] == [1, 2], path
        assert linker.counts["link_wait_expired"] == 1, path
        assert linker.counts["link_wait_skipped"] == 2, path
        assert len(linker.client_wait) == 0, path


def calls_on_one_connection(targets=(b"/1", b"/2", b"/3")) -> list:
    """(server record, client record) of each call on one kept-alive
    connection, in the order the calls were made."""
    traffic = Traffic()
    conn = traffic.connection(100, 200, 8080)
    for i, target in enumerate(targets):
        traffic.call(conn, 1_000 + 4_000 * i, target=target)
    records = [r for _, r in sorted(traffic.records, key=lambda x: x[0])]
    return list(zip(records[0::2], records[1::2]))


def linked_spans(batches: list, link_wait_s: float) -> tuple:
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=link_wait_s)
    factory = SpanFactory(ResourceCache(host_attributes=[]), Redactor())
    exchanges = []
    for batch in batches:
        exchanges += linker.exchanges(router.process(batch))
    exchanges += linker.release_held(flush=True)
    spans = {(s.kind, s.attribute("url.path") or s.attribute("url.full")[-2:]): s
             for s in factory.spans(exchanges)}
    return spans, linker


def test_a_client_record_ahead_of_its_server_record_is_still_its_parent():
    """Each side's record is written as its last call returns: on another
    core the client can read the response and return before the server's
    write does, and its record comes first, in the same batch or the one
    before.  Its server span is still its child, with or without a link
    wait, and no table keeps anything afterwards."""
    calls = calls_on_one_connection()
    swapped = [record for server, client in calls for record in (client, server)]
    for link_wait_s in (0.0, 60.0):
        for batches in ([swapped], [[r] for r in swapped]):
            spans, linker = linked_spans(batches, link_wait_s)
            for target in ("/1", "/2", "/3"):
                client, server = spans[(KIND_CLIENT, target)], spans[(KIND_SERVER, target)]
                assert (server.trace_id, server.parent_span_id) == \
                    (client.trace_id, client.span_id), (link_wait_s, len(batches), target)
            assert linker.counts["linked_same_node"] == 3
            assert linker.links_tracked() == 0


def test_a_client_ahead_is_taken_only_by_its_own_server_exchange(monkeypatch):
    """A client record whose server's record never comes (its server is not
    traced, or that record was lost): the next server exchange on the
    connection does not take its link, and it is forgotten in time."""
    import time

    from agent.spans import http_records

    (_, client_1), (server_2, client_2) = calls_on_one_connection((b"/1", b"/2"))
    spans, linker = linked_spans([[client_1], [server_2, client_2]], 0.0)
    assert spans[(KIND_SERVER, "/2")].parent_span_id == spans[(KIND_CLIENT, "/2")].span_id
    assert linker.links_tracked() == 1      # /1's client, until its time is up
    later = time.monotonic() + http_records.CLIENT_AHEAD_S + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    linker.exchanges([])
    assert linker.links_tracked() == 0


def test_a_held_server_exchange_is_not_claimed_by_a_later_requests_client():
    """The first request's client record is lost: its server exchange waits
    for it, and the second request's client record (ahead of its own
    server's) must not claim it."""
    (server_1, _), (server_2, client_2) = calls_on_one_connection((b"/1", b"/2"))
    spans, linker = linked_spans([[server_1, client_2, server_2]], 60.0)
    assert spans[(KIND_SERVER, "/1")].parent_span_id == b""
    assert spans[(KIND_SERVER, "/2")].parent_span_id == spans[(KIND_CLIENT, "/2")].span_id
    assert linker.counts["link_wait_expired"] == 1


def test_a_request_handed_over_with_its_connection_gives_the_payload_paths_span():
    """A chunked response: the probes hand each side's kept request over
    ahead of the response's data record, and the connection's later
    exchanges are data records only.  Every span is the payload path's:
    attributes, times and links, the server the child of its client."""
    traffic = Traffic()
    conn = traffic.connection(100, 200, 8080)
    traffic.call(conn, 1_000, target=b"/orders/7?x=1", host=b"example.com", user_agent=b"node",
                 traceparent=TRACEPARENT, tracestate=b"vendor=x", chunked=True)
    traffic.call(conn, 5_000, target=b"/orders/8", chunked=True)
    # The second exchange: the connection is on the payload path by then.
    traffic.records = traffic.records[:4] + traffic.payload[4:]
    payload = traffic.spans("payload")
    records = traffic.spans("records")
    assert len(payload) == 4
    assert shape(records) == shape(payload)
    server = sorted((s for s in records if s.kind == KIND_SERVER), key=lambda s: s.start_ns)
    assert [s.attribute("url.path") for s in server] == ["/orders/7", "/orders/8"]
    assert server[0].trace_id.hex() == TRACE_ID
    unlinked = [s for s in server if s.attribute("url.path") == "/orders/8"][0]
    client = [s for s in records if s.kind == KIND_CLIENT and s.start_ns == 5_000][0]
    assert unlinked.parent_span_id == client.span_id


def test_a_proxys_upstream_request_handed_over_waits_for_the_request_it_serves():
    """A proxy whose backend answers chunked, and which answers chunked in
    turn: the upstream request is handed over first (its response is read
    before the proxy answers).  Its connection's records wait for the
    served request, so that the upstream span is the child of the proxy's
    server span and the backend's span the child of the upstream span, as
    on the payload path; the upstream span never takes its caller's id."""
    traffic = Traffic()
    front = traffic.connection(102, 300, 80)
    upstream = traffic.connection(300, 400, 9000)
    for t in (1_000, 20_000):
        traffic.call(front, t, duration=4000, target=b"/api", traceparent=TRACEPARENT,
                     chunked=True,
                     inner=lambda t: traffic.call(upstream, t, target=b"/api",
                                                  traceparent=TRACEPARENT, serving=front[4],
                                                  chunked=True))
    # The second exchanges: both connections on the payload path by then.
    handed_over = [r for r in traffic.records if r[0] < 20_000]
    traffic.records = handed_over + [r for r in traffic.payload if r[0] >= 20_000]
    payload = traffic.spans("payload")
    records = traffic.spans("records")
    assert len(payload) == 8
    assert shape(records) == shape(payload)
    for spans in (payload, records):
        served = {s.span_id for s in spans if s.kind == KIND_SERVER and s.resource.pid == 300}
        upstream_spans = [s for s in spans if s.kind == KIND_CLIENT and s.resource.pid == 300]
        assert len(upstream_spans) == 2
        assert all(s.parent_span_id in served for s in upstream_spans)
        assert not [s for s in upstream_spans if s.span_id.hex() in TRACEPARENT.decode()]


def test_a_proxys_upstream_connection_on_the_payload_path_waits_for_the_request_it_serves():
    """The proxy's upstream connection went to the payload path, its server
    connections are still paired in the probes: each upstream request comes
    after a note naming the request it serves, and waits for that request's
    record, so that it is its child, as on the payload path."""
    traffic = Traffic()
    upstream = traffic.connection(300, 400, 9000)
    for i, t in enumerate((1_000, 20_000, 40_000)):
        front = traffic.connection(102 + i, 300, 80)
        traffic.call(front, t, duration=4000, target=b"/api", traceparent=TRACEPARENT,
                     inner=lambda t, front=front: traffic.call(
                         upstream, t, target=b"/api", traceparent=TRACEPARENT,
                         serving=front[4], client_on_payload=True))
    payload = traffic.spans("payload")
    records = traffic.spans("records")
    assert len(payload) == 12
    assert shape(records) == shape(payload)
    served = {s.span_id for s in records if s.kind == KIND_SERVER and s.resource.pid == 300}
    upstream_spans = [s for s in records if s.kind == KIND_CLIENT and s.resource.pid == 300]
    assert len(upstream_spans) == 3 and all(s.parent_span_id in served for s in upstream_spans)
