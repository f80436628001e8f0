"""HTTP/2 servers that speak first: grpcio and Node.js `http2` write their
SETTINGS frame as soon as they accept a connection, before they read the
client's preface (RFC 9113 section 3.4 allows it).  Those connections are
clean: every request is one span per side, and the agent counts no parse
error, no decoder resync and no partly decoded header block."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.spans import semconv
from agent.spans.model import KIND_CLIENT, KIND_SERVER
from loopback import announced_peer
from helpers import value, wait_quiet
from test_grpc import PARENT_ID, RPCS, TRACE_ID, TRACEPARENT, grpc_server, wait_count  # noqa: F401

PEERS = Path(__file__).resolve().parent / "peers"

# What a clean connection leaves at zero.
CLEAN = (("otel_ebpf_parse_errors_total", {"protocol": "http2"}),
         ("otel_ebpf_http2_decoder_resyncs_total", {}),
         ("otel_ebpf_http2_header_blocks_partial_total", {}),
         ("otel_ebpf_http2_events_without_preface_total", {}),
         ("otel_ebpf_http2_streams_without_request_total", {}),
         ("otel_ebpf_http2_streams_unfinished_total", {}))


def check_clean(agent) -> None:
    samples = wait_quiet(agent)
    counted = {name: value(samples, name, **labels) for name, labels in CLEAN}
    assert all(v == 0 for v in counted.values()), counted


def test_grpcio_server_that_writes_settings_first(receiver, start_agent, grpc_server):  # noqa: F811
    port = grpc_server
    agent = start_agent("--port", str(port))
    connections = 3
    for _ in range(connections):    # a new channel, so a new connection, each time
        run = subprocess.run([sys.executable, str(PEERS / "grpc_peer.py"), "client", str(port),
                              TRACEPARENT], capture_output=True, text=True, timeout=60,
                             check=True)
        assert json.loads(run.stdout)["missing"] == "NOT_FOUND"
    total = connections * sum(RPCS.values())
    spans = wait_count(receiver, lambda s: s.attributes.get(semconv.SERVER_PORT) == port,
                       2 * total)
    server = [s for s in spans if s.kind == KIND_SERVER]
    client = [s for s in spans if s.kind == KIND_CLIENT]
    assert len(server) == len(client) == total, spans
    names = {}
    for span in server:
        names[span.name] = names.get(span.name, 0) + 1
        assert span.trace_id == TRACE_ID and span.parent_span_id == PARENT_ID
    assert names == {name: connections * count for name, count in RPCS.items()}
    check_clean(agent)


@pytest.fixture
def node_h2_server():
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js is not installed (make setup installs Debian's nodejs)")
    with announced_peer([node, str(PEERS / "node_h2_server.js")], "Node HTTP/2 server") as port:
        yield port


def test_node_http2_server_that_writes_settings_first(receiver, start_agent, node_h2_server):
    """Ten curl processes (h2c with prior knowledge), one request each."""
    port = node_h2_server
    agent = start_agent("--port", str(port))
    paths = [f"/item/{i}" for i in range(9)] + ["/missing"]
    for path in paths:
        run = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                              "--http2-prior-knowledge", "-H", f"traceparent: {TRACEPARENT}",
                              f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, timeout=30, check=True)
        assert run.stdout == ("404 2" if path == "/missing" else "200 2"), run.stdout
    spans = wait_count(receiver, lambda s: s.attributes.get(semconv.SERVER_PORT) == port,
                       2 * len(paths))
    server = [s for s in spans if s.kind == KIND_SERVER]
    client = [s for s in spans if s.kind == KIND_CLIENT]
    assert len(server) == len(client) == len(paths), spans
    assert sorted(s.attributes["url.path"] for s in server) == sorted(paths)
    for span in server:
        status = 404 if span.attributes["url.path"] == "/missing" else 200
        assert span.attributes["http.response.status_code"] == status, span
        assert span.attributes["network.protocol.version"] == "2"
        assert span.resource.get("process.executable.name") in ("node", "nodejs"), span.resource
        assert span.trace_id == TRACE_ID and span.parent_span_id == PARENT_ID
    assert all(s.span_id == PARENT_ID for s in client)
    check_clean(agent)
