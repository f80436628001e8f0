"""HTTP/2 and gRPC end to end: real peers on loopback (grpcio, nginx with a
cleartext `http2` listener, nghttp, h2load), real BPF programs, spans at an
OTLP receiver."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.spans import semconv
from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET
from loopback import announced_peer

PEERS = Path(__file__).resolve().parent / "peers"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
RPCS = {"helloworld.Greeter/SayHello": 3, "helloworld.Greeter/SayHelloStream": 1,
        "helloworld.Greeter/CollectHellos": 1, "helloworld.Greeter/Chat": 1}


def wait_count(receiver, predicate, count: int, timeout: float = 15.0) -> list:
    receiver.wait_for(lambda spans: len([s for s in spans if predicate(s)]) >= count, timeout)
    time.sleep(0.5)   # anything extra (a duplicate) would arrive with them
    return [s for s in receiver.spans if predicate(s)]


@pytest.fixture
def grpc_server():
    pytest.importorskip("grpc")
    with announced_peer([sys.executable, str(PEERS / "grpc_peer.py"), "server"], "gRPC server") as port:
        yield port


def test_grpc_calls_one_span_per_rpc_per_side(receiver, start_agent, grpc_server):
    port = grpc_server
    start_agent("--port", str(port))
    run = subprocess.run([sys.executable, str(PEERS / "grpc_peer.py"), "client", str(port),
                          TRACEPARENT], capture_output=True, text=True, timeout=60, check=True)
    results = json.loads(run.stdout)
    assert results["unavailable"] == "UNAVAILABLE" and results["missing"] == "NOT_FOUND"

    total = sum(RPCS.values())

    def on_port(s):
        return s.attributes.get(semconv.SERVER_PORT) == port

    spans = wait_count(receiver, on_port, 2 * total)
    server = [s for s in spans if s.kind == KIND_SERVER]
    client = [s for s in spans if s.kind == KIND_CLIENT]
    assert len(server) == total and len(client) == total, spans
    for side in (server, client):
        names = {}
        for span in side:
            assert span.attributes[semconv.RPC_SYSTEM_NAME] == "grpc"
            assert span.name == span.attributes[semconv.RPC_METHOD]
            assert span.trace_id == TRACE_ID
            names[span.name] = names.get(span.name, 0) + 1
        assert names == RPCS
    statuses = sorted(s.attributes[semconv.RPC_RESPONSE_STATUS_CODE] for s in server)
    assert statuses == sorted(["OK"] * 4 + ["UNAVAILABLE", "NOT_FOUND"])
    for span in server:
        code = span.attributes[semconv.RPC_RESPONSE_STATUS_CODE]
        # Server side: UNAVAILABLE is an error, NOT_FOUND is not.
        if code == "UNAVAILABLE":
            assert span.status_code == STATUS_ERROR and span.attributes["error.type"] == code
        else:
            assert span.status_code == STATUS_UNSET, span
        assert span.parent_span_id == PARENT_ID
        assert span.attributes[semconv.CLIENT_ADDRESS] == "127.0.0.1"
    for span in client:
        code = span.attributes[semconv.RPC_RESPONSE_STATUS_CODE]
        # Client side: any non-OK status is an error.
        if code == "OK":
            assert span.status_code == STATUS_UNSET
        else:
            assert span.status_code == STATUS_ERROR and span.attributes["error.type"] == code
        # The client's span is the one its traceparent names.
        assert span.span_id == PARENT_ID
        assert span.attributes[semconv.NETWORK_PROTOCOL_VERSION] == "2"
    assert len({s.span_id for s in server}) == total


@pytest.fixture
def h2_nginx(start_nginx):
    for tool in ("nghttp", "h2load"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup installs it)")
    return start_nginx(http2=True)


def test_plain_http2_spans_with_nginx_and_nghttp(receiver, start_agent, h2_nginx):
    port = h2_nginx.port
    start_agent("--port", str(port))
    base = f"http://127.0.0.1:{port}"
    subprocess.run(["nghttp", "-n", "-H", f"traceparent: {TRACEPARENT}", base + "/index.html",
                    base + "/fast", base + "/missing"], check=True, timeout=20,
                   stdout=subprocess.DEVNULL)
    spans = wait_count(receiver, lambda s: s.kind == KIND_SERVER
                       and s.attributes.get("server.port") == port, 3)
    assert len(spans) == 3, spans
    by_path = {s.attributes["url.path"]: s for s in spans}
    assert set(by_path) == {"/index.html", "/fast", "/missing"}
    for span in spans:
        assert span.attributes["network.protocol.version"] == "2"
        assert span.attributes["http.request.method"] == "GET"
        assert span.name == "GET"
        assert span.trace_id == TRACE_ID and span.parent_span_id == PARENT_ID
        assert semconv.RPC_SYSTEM_NAME not in span.attributes
    assert by_path["/fast"].attributes["http.response.status_code"] == 200
    assert by_path["/missing"].attributes["http.response.status_code"] == 404
    assert by_path["/missing"].status_code == STATUS_UNSET
    clients = wait_count(receiver, lambda s: s.kind == KIND_CLIENT
                         and s.attributes.get("server.port") == port, 3)
    assert len(clients) == 3 and all(s.span_id == PARENT_ID for s in clients)


LOSS_METRICS = (
    "otel_ebpf_kernel_events_lost_total",
    "otel_ebpf_kernel_calls_untracked_total",
    "otel_ebpf_parse_errors_total",
    "otel_ebpf_http2_events_without_preface_total",
    "otel_ebpf_http2_streams_evicted_total",
    "otel_ebpf_http2_streams_unfinished_total",
    "otel_ebpf_http2_streams_without_request_total",
    "otel_ebpf_spans_dropped_queue_full_total",
    "otel_ebpf_spans_export_failed_total",
    "otel_ebpf_exchanges_dropped_worker_busy_total",
)
H2LOAD_STREAMS = 10


def h2load_run(nginx, rate_per_connection: int | None) -> tuple[int, int, dict]:
    """h2load against nginx for 10 s (4 connections, 10 streams each)."""
    from test_http1_load import traced_load

    rate = ["--rps", str(rate_per_connection)] if rate_per_connection else []

    def h2load() -> int:
        run = subprocess.run(["h2load", "-D", "10", "-c", "4", "-m", str(H2LOAD_STREAMS), *rate,
                              f"http://127.0.0.1:{nginx.port}/fast"],
                             capture_output=True, text=True, timeout=60, check=True)
        match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded",
                          run.stdout)
        assert match, run.stdout
        return int(match.group(1))

    return traced_load(nginx, h2load, LOSS_METRICS, label=f"h2load {rate or 'max'}")


def test_h2load_as_fast_as_it_goes_every_request_is_a_span_or_a_counted_loss(h2_nginx):
    succeeded, spans, losses = h2load_run(h2_nginx, None)
    # A lost kernel record may have carried frames of every stream in
    # flight on its connection (h2load -m): count it for that many.
    accounted = spans + sum(v for k, v in losses.items()
                            if k != "otel_ebpf_kernel_events_lost_total") \
        + H2LOAD_STREAMS * losses["otel_ebpf_kernel_events_lost_total"]
    assert accounted >= succeeded, (succeeded, spans, losses)
    # At equal weight the share depends on the machine: 40-65% of the
    # requests became spans on slower days of this VM, 28-30% on a fast one
    # (h2load at 110k/s).  A lost record also leaves its connection's HPACK
    # table behind until the decoder resyncs, so losses cost more than their
    # own streams.  The floor catches a capture that breaks down.
    assert spans > 0.15 * succeeded, (succeeded, spans, losses)


def test_h2load_at_a_steady_rate_spans_equal_completed_requests(h2_nginx):
    """5,000 requests/s (4 connections x 1,250): one server span per request
    h2load completed, nothing lost anywhere."""
    succeeded, spans, losses = h2load_run(h2_nginx, 1250)
    assert succeeded > 40_000
    # At its deadline h2load closes its connections with up to 4 x 10
    # streams open.  It does not count them; each is either answered in
    # time (a span) or left unfinished when its connection closes, as the
    # agent counts it.
    in_flight = 4 * H2LOAD_STREAMS
    unfinished = losses.pop("otel_ebpf_http2_streams_unfinished_total")
    assert succeeded <= spans <= succeeded + in_flight, (succeeded, spans, losses)
    assert spans - succeeded + unfinished <= in_flight, (succeeded, spans, unfinished)
    assert sum(losses.values()) == 0, losses


JOINED_CLIENT = """
import sys
sys.path.insert(0, {fixtures!r})
import grpc
from capture_http2 import SERVICE
with grpc.insecure_channel("127.0.0.1:{port}") as channel:
    call = channel.unary_unary(f"/{{SERVICE}}/SayHello")
    call(b"before", timeout=10)          # the connection and its header tables exist
    print("ready", flush=True)
    sys.stdin.readline()                 # the agent starts now
    for i in range(10):
        call(b"after", timeout=10)
    print("done", flush=True)
"""


def test_a_connection_the_agent_joins_mid_stream_gives_spans_from_what_decodes(
        receiver, start_agent, grpc_server):
    """The channel is open before the agent starts: no preface, no
    accept/connect, header tables unknown.  Spans come from what HPACK can
    decode without them (static-table fields), never a wrong value."""
    port = grpc_server
    fixtures = str(Path(__file__).resolve().parents[1] / "fixtures")
    client = subprocess.Popen([sys.executable, "-c", JOINED_CLIENT.format(fixtures=fixtures, port=port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "ready"
        start_agent("--port", str(port))
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
    finally:
        client.stdin.close()
        client.wait(10)

    def joined(s):
        return s.attributes.get(semconv.SERVER_PORT) == port and s.kind == KIND_SERVER
    # The first exchange may go by while the connection is being recognised.
    assert receiver.wait_for(lambda spans: len([s for s in spans if joined(s)]) >= 5, 15), \
        [s for s in receiver.spans]
    for span in (s for s in receiver.spans if joined(s)):
        method = span.attributes.get(semconv.RPC_METHOD)
        assert method is None or method.endswith("/SayHello"), method
        assert span.attributes.get("http.request.method", "POST") == "POST"
