"""The userspace stages on real kernel events (recorded with `otel-ebpf
record` from curl -> nginx -> Python backend on loopback), no privileges.

The recording holds, through nginx on port 18090 (backend on 18081):
  GET /api/orders?id=7 with traceparent (proxied), GET /index.html,
  GET /big.txt gzip (chunked) and plain (sendfile), POST /api/items with a
  body and traceparent (proxied), GET /api/status/503 (proxied), HEAD
  /index.html, and two pipelined requests /api/p1, /api/p2 (proxied) from a
  raw socket client.
"""
from __future__ import annotations

from pathlib import Path

from agent.protocols.router import ProtocolRouter
from agent.export.otlp_encode import encode_export_request
from agent.capture.recording import read_records
from agent.capture.records import EVENT_HEADER_FIELDS
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from agent.spans.builder import SpanBuilder
from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_UNSET
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

RECORDING = Path(__file__).resolve().parents[1] / "fixtures/events/http1_proxy.events"
TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
PARENT_ID = bytes.fromhex("b7ad6b7169203331")
NGINX, BACKEND = 18090, 18081


def replay(batch: int = 7):
    records = read_records(RECORDING)
    tracker = ProtocolRouter()
    builder = SpanBuilder(ResourceCache(host_attributes=[]), Redactor())
    spans = []
    for i in range(0, len(records), batch):
        spans += builder.build(tracker.process(records[i:i + batch]))
    return tracker, builder, spans


def by(spans, kind, port):
    return {s.attribute("url.path") or s.attribute("url.full").split(str(port), 1)[1]: s
            for s in spans if s.kind == kind and s.attribute("server.port") == port}


def test_every_exchange_becomes_one_span_per_side():
    tracker, builder, spans = replay()
    nginx_server = by(spans, KIND_SERVER, NGINX)
    assert sorted(nginx_server) == sorted(["/api/orders", "/index.html", "/big.txt", "/api/items",
                                           "/api/status/503", "/api/p1", "/api/p2"])
    assert len([s for s in spans if s.kind == KIND_SERVER and s.attribute("server.port") == NGINX]) == 9
    backend_server = by(spans, KIND_SERVER, BACKEND)
    assert sorted(backend_server) == ["/api/items", "/api/orders", "/api/p1", "/api/p2",
                                      "/api/status/503"]
    assert tracker.counts["requests_without_response"] == 0
    assert tracker.counts["responses_without_request"] == 0
    assert not tracker.parse_errors


def test_attributes_status_and_trace_links():
    _, _, spans = replay()
    nginx = by(spans, KIND_SERVER, NGINX)
    orders = nginx["/api/orders"]
    assert orders.trace_id == TRACE_ID and orders.parent_span_id == PARENT_ID
    assert orders.attribute("url.query") == "id=7"
    assert orders.attribute("http.response.status_code") == 200
    # The backend sees /api/status/503 (nginx keeps the prefix) and answers 200.
    assert nginx["/api/status/503"].attribute("http.response.status_code") == 200
    assert nginx["/index.html"].status_code == STATUS_UNSET
    head = [s for s in spans if s.kind == KIND_SERVER and s.attribute("http.request.method") == "HEAD"]
    assert len(head) == 1 and head[0].attribute("http.response.status_code") == 200
    post = nginx["/api/items"]
    assert post.attribute("http.request.method") == "POST" and post.name == "POST"
    # nginx forwarded the traceparent unchanged: its client span is a child
    # of its server span, and the backend's server span a child of that.
    nginx_client = next(s for s in spans if s.kind == KIND_CLIENT
                        and s.attribute("server.port") == BACKEND
                        and s.attribute("url.full").endswith("/api/orders?id=7"))
    backend = by(spans, KIND_SERVER, BACKEND)["/api/orders"]
    assert nginx_client.parent_span_id == orders.span_id
    assert backend.parent_span_id == nginx_client.span_id
    assert backend.trace_id == TRACE_ID
    for span in spans:
        assert span.end_ns >= span.start_ns > 1_600_000_000 * 10**9


def test_any_batching_gives_the_same_spans():
    _, _, one_by_one = replay(batch=1)
    _, _, all_at_once = replay(batch=10_000)
    def key(s):
        return (s.kind, s.attribute("server.port"), s.attribute("url.path") or s.attribute("url.full"),
                s.attribute("http.response.status_code"), s.end_ns - s.start_ns)
    assert sorted(map(key, one_by_one)) == sorted(map(key, all_at_once))


def test_replayed_spans_encode_to_valid_otlp():
    _, _, spans = replay()
    request = ExportTraceServiceRequest.FromString(encode_export_request(spans))
    decoded = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert len(decoded) == len(spans)


def test_truncated_and_shuffled_records_never_raise():
    records = read_records(RECORDING)
    tracker = ProtocolRouter()
    builder = SpanBuilder(ResourceCache(host_attributes=[]), Redactor())
    mangled = [r[:len(r) // 2] for r in records] + [r[:40] for r in records] + records[::-1]
    builder.build(tracker.process(mangled))
    assert tracker.counts["records_malformed"] > 0


def test_configured_routes_name_spans_without_raw_paths():
    from agent.spans.routes import RouteNamer
    records = read_records(RECORDING)
    builder = SpanBuilder(ResourceCache(host_attributes=[]), Redactor(),
                              routes=RouteNamer(["/api/{name}", "/api/status/{code}"]))
    spans = builder.build(ProtocolRouter().process(records))
    orders = by(spans, KIND_SERVER, NGINX)["/api/orders"]
    assert orders.name == "GET /api/{name}" and orders.attribute("http.route") == "/api/{name}"
    index = by(spans, KIND_SERVER, NGINX)["/index.html"]
    assert index.name == index.attribute("http.request.method") and index.attribute("http.route") is None


def test_sampling_follows_the_incoming_sampled_flag():
    from agent.spans.sampling import Sampler
    records = read_records(RECORDING)
    sampler = Sampler(ratio=0.0)
    builder = SpanBuilder(ResourceCache(host_attributes=[]), Redactor(), sampler=sampler)
    spans = builder.build(ProtocolRouter().process(records))
    kept = sampler.filter(spans)
    # Requests that arrived with a sampled traceparent stay, and so do their
    # same-node children; traces the agent started are dropped at ratio 0.
    assert kept and all(s.trace_id == TRACE_ID for s in kept)
    assert sampler.sampled_out == len(spans) - len(kept) > 0


def test_a_head_cut_off_by_close_is_counted():
    records = read_records(RECORDING)
    tracker = ProtocolRouter()
    from agent.capture.records import EVENT_HEADER, EVENT_HEADER_SIZE, C
    first_request = next(r for r in records if r[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + 4] == b"GET ")
    header = list(EVENT_HEADER.unpack_from(first_request))
    payload = first_request[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + 20]   # no blank line yet
    fields = dict(zip(EVENT_HEADER_FIELDS, header))
    fields.update(length=len(payload), captured=len(payload))
    partial = EVENT_HEADER.pack(*(fields[name] for name in EVENT_HEADER_FIELDS)) + payload
    fields.update(type=C["EVENT_CLOSE"], length=0, captured=0)
    close = EVENT_HEADER.pack(*(fields[name] for name in EVENT_HEADER_FIELDS))
    assert tracker.process([partial, close]) == []
    assert tracker.counts["messages_incomplete"] == 1


def _numbered(records):
    """The recording with per-connection sequence numbers, as a kernel that
    numbers its events writes them."""
    from agent.capture.records import EVENT_HEADER, EVENT_HEADER_SIZE, C
    counters, out = {}, []
    for record in records:
        fields = dict(zip(EVENT_HEADER_FIELDS, EVENT_HEADER.unpack_from(record)))
        if fields["type"] == C["EVENT_DATA"]:
            counters[fields["conn_id"]] = counters.get(fields["conn_id"], 0) + 1
            fields["seq"] = counters[fields["conn_id"]]
        out.append(EVENT_HEADER.pack(*(fields[n] for n in EVENT_HEADER_FIELDS)) + record[EVENT_HEADER_SIZE:])
    return out


def _has_later_data(records, index):
    from agent.capture.records import EVENT_HEADER, C
    conn_id = EVENT_HEADER.unpack_from(records[index])[4]
    return any(EVENT_HEADER.unpack_from(r)[4] == conn_id and EVENT_HEADER.unpack_from(r)[0] == C["EVENT_DATA"]
               for r in records[index + 1:])


def test_a_lost_record_is_seen_as_a_gap_and_framing_recovers():
    from agent.capture.records import EVENT_HEADER, EVENT_HEADER_SIZE
    records = _numbered(read_records(RECORDING))
    whole = SpanBuilder(ResourceCache(host_attributes=[]), Redactor()).build(
        ProtocolRouter().process(records))
    # Lose the pipelined client's first response on its keep-alive
    # connection: the next record there shows the gap, and that exchange is
    # lost rather than misframed.
    victim = next(i for i, r in enumerate(records)
                  if r[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + 9] == b"HTTP/1.1 "
                  and EVENT_HEADER.unpack_from(r)[9] == 1   # ingress: a client reading it
                  and b"/api/p" not in r and records.index(r) > 0
                  and _has_later_data(records, i))
    tracker = ProtocolRouter()
    damaged = SpanBuilder(ResourceCache(host_attributes=[]), Redactor()).build(
        tracker.process(records[:victim] + records[victim + 1:]))
    assert tracker.counts["event_gaps"] == 1
    assert len(whole) - 2 <= len(damaged) < len(whole)
    assert not tracker.parse_errors
    # Every span that survived is one the undamaged replay also built.
    def key(s):
        return (s.kind, s.attribute("server.port"), s.attribute("url.path") or s.attribute("url.full"),
                s.attribute("http.response.status_code"))
    assert set(map(key, damaged)) <= set(map(key, whole))


def test_process_exit_releases_its_connections_and_counts_their_requests():
    from agent.capture.records import EVENT_HEADER, C
    records = read_records(RECORDING)
    tracker = ProtocolRouter()
    first_request = next(r for r in records if b"GET /api/orders" in r)
    pid = dict(zip(EVENT_HEADER_FIELDS, EVENT_HEADER.unpack_from(first_request)))["pid"]
    tracker.process([first_request])
    assert len(tracker.table) == 1
    from event_records import make_record
    tracker.process([make_record(type=C["EVENT_PROCESS_EXIT"], pid=pid)])
    assert len(tracker.table) == 0
    # The request was complete and waiting: counted as never answered.
    assert tracker.counts["requests_without_response"] == 1
    assert tracker.counts["connections_expired"] == 1


def test_a_record_lost_just_before_the_close_is_seen_too():
    from agent.capture.records import EVENT_HEADER, EVENT_HEADER_SIZE, C
    records = _numbered(read_records(RECORDING))
    # Closes carry the last number their connection gave out.
    last, closed = {}, []
    for record in records:
        fields = dict(zip(EVENT_HEADER_FIELDS, EVENT_HEADER.unpack_from(record)))
        if fields["type"] == C["EVENT_DATA"]:
            last[fields["conn_id"]] = fields["seq"]
        elif fields["type"] == C["EVENT_CLOSE"]:
            fields["seq"] = last.get(fields["conn_id"], 0)
        closed.append(EVENT_HEADER.pack(*(fields[n] for n in EVENT_HEADER_FIELDS)) + record[EVENT_HEADER_SIZE:])
    tracker = ProtocolRouter()
    tracker.process(closed)
    assert tracker.counts["event_gaps"] == 0
    victim = next(i for i, r in enumerate(closed)
                  if r[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + 9] == b"HTTP/1.1 " and b"chunked" in r)
    tracker = ProtocolRouter()
    tracker.process(closed[:victim] + closed[victim + 1:])
    assert tracker.counts["event_gaps"] == 1
    assert tracker.counts["requests_without_response"] == 1
