"""HTTP/2 and gRPC through the userspace pipeline: the real captures of
tests/fixtures/http2 replayed as kernel records of both ends of one
loopback connection (client and server traced on one node), then
ProtocolRouter -> ExchangeLinker -> SpanFactory."""
from __future__ import annotations

import os
import random

from agent.spans import semconv
from agent.protocols.router import ProtocolRouter
from agent.export.otlp_encode import encode_export_request
from agent.capture.records import C
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from agent.spans.builder import SpanBuilder
from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET
from event_records import make_record
from agent.capture.records import EVENT_HEADER, EVENT_HEADER_FIELDS

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "http2")
LOOPBACK = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
CLIENT_PORT, SERVER_PORT = 40000, 50051
TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
PARENT_ID = bytes.fromhex("00f067aa0ba902b7")


def load(name: str, side: str) -> bytes:
    with open(os.path.join(FIXTURES, f"{name}.{side}.bin"), "rb") as f:
        return f.read()


def record(conn_id, pid, direction, role, payload, ts, local_port, remote_port,
           length=None, event_type=None):
    return make_record(
        payload, type=event_type or C["EVENT_DATA"], pid=pid, tid=pid, fd=5, conn_id=conn_id,
        start_ns=ts, end_ns=ts + 10, length=len(payload) if length is None else length,
        captured=len(payload), direction=direction, role=role, protocol=C["PROTOCOL_HTTP2"],
        local_addr=LOOPBACK, remote_addr=LOOPBACK, local_port=local_port,
        remote_port=remote_port, family=10)


def records(name: str, chunk: int = 4096, roles=(0, 0), capture: int | None = None):
    """Both ends: client conn 1 (pid 100), server conn 2 (pid 200); the
    client's bytes are written then read, the server's likewise."""
    c2s, s2c = load(name, "c2s"), load(name, "s2c")
    out, ts = [], 1_000_000
    egress, ingress = C["DIRECTION_EGRESS"], C["DIRECTION_INGRESS"]
    for start in range(0, max(len(c2s), len(s2c)), chunk):
        for data, sender in ((c2s, "client"), (s2c, "server")):
            part = data[start:start + chunk]
            if not part:
                continue
            kept = part[:capture] if capture else part
            client = record(1, 100, egress if sender == "client" else ingress, roles[0], kept, ts,
                            CLIENT_PORT, SERVER_PORT, len(part))
            server = record(2, 200, ingress if sender == "client" else egress, roles[1], kept,
                            ts + 20, SERVER_PORT, CLIENT_PORT, len(part))
            out += [client, server] if sender == "client" else [server, client]
            ts += 1000
    out.append(record(1, 100, 0, 0, b"", ts, CLIENT_PORT, SERVER_PORT,
                      event_type=C["EVENT_CLOSE"]))
    out.append(record(2, 200, 0, 0, b"", ts, SERVER_PORT, CLIENT_PORT,
                      event_type=C["EVENT_CLOSE"]))
    return out


def run(recs, batch: int = 5):
    tracker = ProtocolRouter()
    builder = SpanBuilder(ResourceCache(host_attributes=[]), Redactor())
    spans = []
    for i in range(0, len(recs), batch):
        spans += builder.build(tracker.process(recs[i:i + batch]))
    return tracker, builder, spans


def test_grpc_calls_one_span_per_rpc_per_side():
    tracker, builder, spans = run(records("grpc_calls"))
    server = [s for s in spans if s.kind == KIND_SERVER]
    client = [s for s in spans if s.kind == KIND_CLIENT]
    assert len(server) == len(client) > 0
    for span in spans:
        assert span.attribute(semconv.RPC_SYSTEM_NAME) == "grpc"
        assert span.name == span.attribute(semconv.RPC_METHOD)
        assert span.name.startswith("helloworld.Greeter/")
        assert span.attribute(semconv.NETWORK_PROTOCOL_VERSION) == "2"
    by_status = {}
    for span in server:
        by_status.setdefault(span.attribute(semconv.RPC_RESPONSE_STATUS_CODE), []).append(span)
    assert {"OK", "UNAVAILABLE", "NOT_FOUND"} <= set(by_status)
    assert all(s.status_code == STATUS_UNSET for s in by_status["OK"])
    assert all(s.status_code == STATUS_ERROR for s in by_status["UNAVAILABLE"])
    assert all(s.attribute("error.type") == "UNAVAILABLE" for s in by_status["UNAVAILABLE"])
    # NOT_FOUND: not a server error, a client error.
    assert all(s.status_code == STATUS_UNSET for s in by_status["NOT_FOUND"])
    client_nf = [s for s in client if s.attribute(semconv.RPC_RESPONSE_STATUS_CODE) == "NOT_FOUND"]
    assert client_nf and all(s.status_code == STATUS_ERROR for s in client_nf)
    # Every server span is the child of its client span (same node links by
    # connection and stream id), or of the traceparent's parent id.
    client_ids = {s.span_id for s in client}
    for span in server:
        assert span.parent_span_id in client_ids
    with_tp = [s for s in client if s.trace_id == TRACE_ID]
    assert with_tp and all(s.span_id == PARENT_ID for s in with_tp)
    # The cancelled server stream ended with an error on both sides.
    cancelled = [s for s in spans if s.name == "helloworld.Greeter/SlowStream"]
    assert cancelled and all(s.status_code == STATUS_ERROR for s in cancelled)
    assert tracker.counts["h2_streams_reset"] >= 1
    assert tracker.counts["h2_events_without_preface"] == 0
    assert encode_export_request(spans)


def test_concurrent_streams_link_by_stream_id():
    _, _, spans = run(records("grpc_concurrent", chunk=100))
    # The capture's calls all carry one traceparent: every client span takes
    # its parent id, and every server span is that span's child.
    server = [s for s in spans if s.kind == KIND_SERVER]
    client = [s for s in spans if s.kind == KIND_CLIENT]
    assert len(server) == len(client) >= 5
    ids = {s.span_id for s in client}
    for span in server:
        assert span.parent_span_id in ids
        assert span.trace_id == client[0].trace_id


def test_plain_http2_spans_are_http_spans_version_2():
    for name in ("nghttp_nginx", "h2load_nginx"):
        _, _, spans = run(records(name, chunk=128))
        assert spans
        for span in spans:
            assert span.attribute("network.protocol.version") == "2"
            assert span.attribute("http.request.method") == "GET"
            assert span.attribute(semconv.RPC_SYSTEM_NAME) is None
        if name == "nghttp_nginx":
            statuses = {s.attribute("http.response.status_code") for s in spans}
            assert 404 in statuses and 200 in statuses


def test_truncated_captures_and_shuffles_never_raise():
    rng = random.Random(7)
    for name in ("grpc_calls", "nghttp_nginx"):
        _, _, whole = run(records(name, chunk=300))
        methods = {s.attribute(semconv.RPC_METHOD) for s in whole}
        http_methods = {s.attribute("http.request.method") for s in whole}
        _, _, spans = run(records(name, chunk=300, capture=120))
        assert spans or name == "nghttp_nginx"    # its few streams all lose their heads
        # A truncated capture loses attributes, never makes one up: a span's
        # RPC method, or its HTTP method when the gRPC content-type was cut
        # off, is one the whole capture shows.
        for span in spans:
            method = span.attribute(semconv.RPC_METHOD)
            if method is not None:
                assert method in methods and span.name == method
            else:
                assert span.attribute(semconv.RPC_SYSTEM_NAME) is None
                assert span.attribute("http.request.method") in http_methods | {"POST"}
        recs = records(name, chunk=200)
        rng.shuffle(recs)
        run(recs)   # no exception; counted drops


def test_lost_preface_uses_kernel_role_or_counts():
    recs = records("grpc_calls")[2:]     # the preface events are gone
    tracker, _, _ = run(recs)
    assert tracker.counts["h2_events_without_preface"] > 0
    recs = records("grpc_calls", roles=(C["ROLE_CLIENT"], C["ROLE_SERVER"]))[2:]
    tracker, _, spans = run(recs)
    assert tracker.counts["h2_events_without_preface"] == 0
    for span in spans:   # never a wrong attribute: partly decoded or nothing
        assert span.attribute(semconv.RPC_SYSTEM_NAME) == "grpc"


def _frames_by_stream(name: str):
    """The capture as one event per frame, in a causal order: per stream,
    the client's frames and then the server's; connection frames first."""
    from agent.parsers.http2 import PREFACE

    def split(data):
        pos = len(PREFACE) if data.startswith(PREFACE) else 0
        while pos + 9 <= len(data):
            end = pos + 9 + int.from_bytes(data[pos:pos + 3], "big")
            yield int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF, data[pos:end]
            pos = end

    c2s, s2c = list(split(load(name, "c2s"))), list(split(load(name, "s2c")))
    order = sorted({sid for sid, _ in c2s + s2c})
    events = []
    for sid in order:
        events += [("client", f) for s, f in c2s if s == sid]
        events += [("server", f) for s, f in s2c if s == sid]
    return events


def test_joined_mid_stream_without_role_gives_spans_from_what_decodes():
    egress, ingress = C["DIRECTION_EGRESS"], C["DIRECTION_INGRESS"]
    events = _frames_by_stream("grpc_calls")
    # The agent starts after the first stream's frames: no preface, no
    # accept/connect seen (role 0), the header tables unknown.
    first_stream_end = max(i for i, (_, f) in enumerate(events)
                           if int.from_bytes(f[5:9], "big") == 1)
    recs, ts = [], 1_000_000
    for sender, frame in events[first_stream_end + 1:]:
        recs.append(record(1, 100, egress if sender == "client" else ingress, 0, frame, ts,
                           CLIENT_PORT, SERVER_PORT))
        recs.append(record(2, 200, ingress if sender == "client" else egress, 0, frame, ts + 20,
                           SERVER_PORT, CLIENT_PORT))
        ts += 1000
    tracker, _, spans = run(recs)
    whole = {s.span_id: s for s in run(records("grpc_calls"))[2]}
    assert spans, tracker.counts
    methods = {s.attribute(semconv.RPC_METHOD) for s in whole.values()}
    for span in spans:
        # Partly decoded or not at all, never a value the full decode lacks.
        assert span.attribute(semconv.RPC_METHOD) in methods | {None}
        assert span.attribute(semconv.RPC_SYSTEM_NAME) in ("grpc", None)
    assert tracker.counts["h2_header_blocks_partial"] > 0



def _with_numbers(recs):
    """The records numbered as the kernel numbers them per connection (seq),
    each close carrying the number of its connection's last data record."""
    conn_at, seq_at = EVENT_HEADER_FIELDS.index("conn_id"), EVENT_HEADER_FIELDS.index("seq")
    last, out = {}, []
    for rec in recs:
        fields = list(EVENT_HEADER.unpack_from(rec))
        conn_id = fields[conn_at]
        if fields[0] == C["EVENT_CLOSE"]:
            fields[seq_at] = last[conn_id]
        else:
            fields[seq_at] = last[conn_id] = last.get(conn_id, 0) + 1
        out.append((conn_id, EVENT_HEADER.pack(*fields) + rec[EVENT_HEADER.size:]))
    return out


def test_close_record_sequence_gap_is_counted():
    numbered = _with_numbers(records("grpc_calls"))
    tracker, _, spans = run([rec for _, rec in numbered])
    assert spans and tracker.counts["event_gaps"] == 0
    # The client connection's last data record is lost: only the number its
    # close record carries shows it.
    lost = max(i for i, (conn_id, _) in enumerate(numbered[:-2]) if conn_id == 1)
    tracker, _, _ = run([rec for i, (_, rec) in enumerate(numbered) if i != lost])
    assert tracker.counts["event_gaps"] == 1
    assert len(tracker.table) == 0
