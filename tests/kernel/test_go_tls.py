"""Go crypto/tls plaintext through the Go TLS uprobes (bpf/go_tls.h): a Go
HTTPS server and a Go HTTPS client, both built here from
peers/go_tls/main.go with Debian's golang-go, traced like cleartext ones."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from agent.spans import semconv
from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_UNSET
from agent.capture.go_tls import SOCKET_FROM_DWARF, SOCKET_FROM_THREAD
from conftest import AGENT, ROOT, skip_reason
from go_peer import GRPC_TAG, go_build, require_go, require_packaged_grpc
from test_http1_e2e import PARENT_ID, TRACE_ID

REQUESTS = 20
PEER_NAME = "gotlspeer"
# The agent selects the peers by executable name: it adds a new process
# after seeing its exec, so the client waits that long before its requests.
SELECTION_DELAY_MS = 500


@pytest.fixture
def agent_loader(request) -> str | None:
    """The front end a test asks for (indirect parameter); else the agent's choice."""
    return getattr(request, "param", None)


@pytest.fixture(scope="module")
def go_peers(tmp_path_factory):
    """{"dwarf": path, "no_dwarf": path} of the peer, each its own file."""
    require_go()
    out = tmp_path_factory.mktemp("go")
    os.chmod(out, 0o755)
    return {"dwarf": go_build(out, PEER_NAME),
            "no_dwarf": go_build(out, PEER_NAME + "nodw", "-w")}


def start_go_server(binary: str, tls):
    proc = subprocess.Popen([binary, "server", str(tls.cert), str(tls.key)],
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def run_go_client(binary: str, tls, url: str, proto: str, traceparent: str = "") -> tuple:
    """(pid, the status lines it printed)."""
    client = subprocess.Popen([binary, "client", str(tls.cert), url, str(REQUESTS), proto,
                               str(SELECTION_DELAY_MS), traceparent],
                              stdout=subprocess.PIPE, text=True)
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 0
    return client.pid, out.split("\n")[:-1]


def go_calls_in_flight(pids) -> list:
    """Entries of the kernel's go_tls_calls whose process is one of pids."""
    out = subprocess.run(["bpftool", "-j", "map", "dump", "name", "go_tls_calls"],
                         capture_output=True, text=True, check=True).stdout
    entries = json.loads(out or "[]")
    return [e for e in entries
            if e.get("formatted", e).get("key", {}).get("tgid") in pids]


def wait_probed(agent, outcome: str, executable: str, timeout: float = 20.0) -> None:
    """The agent looks at a new executable after its exec: wait for that."""
    deadline = time.monotonic() + timeout
    while agent.metric("otel_ebpf_go_tls_binaries_total", outcome=outcome) < 1:
        assert time.monotonic() < deadline, \
            f"{executable} not probed:\n" + "\n".join(
                line for line in agent.metrics().splitlines() if "go_tls" in line)
        time.sleep(0.1)


def on_port(port: int, kind: int):
    return lambda s: s.kind == kind and s.attributes.get("server.port") == port


def traced_exchange(start_agent, receiver, tls, binary: str, proto: str, outcome: str,
                    *agent_args: str):
    """An agent selecting the peer by name, the peer's server, and its client
    sending REQUESTS GETs with a traceparent: (agent, url, server spans,
    client spans)."""
    agent = start_agent("--exe", os.path.basename(binary), *agent_args)
    server, port = start_go_server(binary, tls)
    try:
        wait_probed(agent, outcome, binary)
        url = f"https://127.0.0.1:{port}/items/7?color=blue"
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        client_pid, statuses = run_go_client(binary, tls, url, proto, traceparent)
        expected_proto = "HTTP/2.0" if proto == "h2" else "HTTP/1.1"
        assert statuses == [f"200 {expected_proto}"] * REQUESTS
        receiver.wait_for(lambda spans: len([s for s in spans if on_port(port, KIND_SERVER)(s)
                                             or on_port(port, KIND_CLIENT)(s)]) >= 2 * REQUESTS, 10)
        time.sleep(1.0)   # nothing more may come
        servers = [s for s in receiver.spans if on_port(port, KIND_SERVER)(s)]
        clients = [s for s in receiver.spans if on_port(port, KIND_CLIENT)(s)]
    finally:
        server.terminate()
        server.wait()
    # Goroutines parked in a Read when their process ended leave no entry.
    deadline = time.monotonic() + 5
    while go_calls_in_flight({client_pid, server.pid}):
        assert time.monotonic() < deadline, go_calls_in_flight({client_pid, server.pid})
        time.sleep(0.1)
    return agent, url, servers, clients


@pytest.mark.parametrize("agent_loader,proto", [("core", "h1"), ("core", "h2"), ("bcc", "h1")],
                         indirect=["agent_loader"])
def test_go_https_server_and_client_spans(agent_loader, proto, receiver, start_agent,
                                          tls_certificate, go_peers):
    """Under both front ends: the Go probes read only registers and user
    memory, which the BCC build reads too."""
    agent, url, servers, clients = traced_exchange(start_agent, receiver, tls_certificate,
                                                   go_peers["dwarf"], proto, SOCKET_FROM_DWARF)
    assert len(servers) == REQUESTS and len(clients) == REQUESTS, (len(servers), len(clients))
    server_expected = {"url.scheme": "https", "url.path": "/items/7", "url.query": "color=blue",
                       "http.request.method": "GET", "http.response.status_code": 200}
    client_expected = {"url.full": url, "http.request.method": "GET",
                       "http.response.status_code": 200}
    for span in servers:
        assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
        assert (span.name, span.status_code) == ("GET", STATUS_UNSET)
        assert {key: span.attributes.get(key) for key in server_expected} == server_expected
    for span in clients:
        # The client's own span: the span id its traceparent announced.
        assert (span.trace_id, span.span_id) == (TRACE_ID, PARENT_ID)
        assert {key: span.attributes.get(key) for key in client_expected} == client_expected
    assert agent.metric("otel_ebpf_kernel_tls_unmapped_total") == 0
    assert agent.metric("otel_ebpf_go_tls_calls_total", socket="unmapped") == 0
    assert agent.metric("otel_ebpf_go_tls_calls_total", socket="tied") >= 4 * REQUESTS
    # HTTP/2 is not checked here: a Go server writes its SETTINGS before it
    # reads the client's preface, which the HTTP/2 decoder counts as a resync
    # (in cleartext too); the spans above are whole all the same.
    assert agent.metric("otel_ebpf_parse_errors_total", protocol="http1") == 0


def test_go_https_exchanges_are_paired_in_the_probes(receiver, start_agent, tls_certificate,
                                                     go_peers):
    """With --http-exchanges, crypto/tls's plaintext is paired in the probes
    as a socket's is: a paired side writes one record per exchange, and the
    spans are those of the payload path."""
    agent, url, servers, clients = traced_exchange(start_agent, receiver, tls_certificate,
                                                   go_peers["dwarf"], "h1", SOCKET_FROM_DWARF,
                                                   "--http-exchanges")
    assert len(servers) == REQUESTS and len(clients) == REQUESTS, (len(servers), len(clients))
    for span in servers:
        assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
        assert span.attributes["url.scheme"] == "https"
        assert span.attributes["http.response.status_code"] == 200
    for span in clients:
        assert (span.trace_id, span.span_id) == (TRACE_ID, PARENT_ID)
        assert span.attributes["url.full"] == url
    # Both sides are paired: the server's request reads and the client's
    # request writes write nothing, each side's response one record.  Go's
    # server reads a byte ahead between requests: held, the head is whole.
    # Go's client reads on another thread than it writes: a response read
    # before its request's write returned sends that one exchange's two
    # calls to the payload path (response_first), the connection going on.
    early = agent.metric("otel_ebpf_kernel_http_fallbacks_total", reason="response_first")
    assert agent.metric("otel_ebpf_kernel_events_total", probe="ssl_write") == REQUESTS + early
    assert agent.metric("otel_ebpf_kernel_events_total", probe="ssl_read") == REQUESTS
    assert agent.metric("otel_ebpf_kernel_http_fallbacks_total") == early
    assert agent.metric("otel_ebpf_kernel_http_requests_dropped_total") == 0


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_go_binary_without_dwarf(proto, receiver, start_agent, tls_certificate, go_peers):
    """Built with -w: the socket comes from the thread's socket I/O inside
    the call."""
    agent, url, servers, clients = traced_exchange(start_agent, receiver, tls_certificate,
                                                   go_peers["no_dwarf"], proto, SOCKET_FROM_THREAD)
    unmapped = agent.metric("otel_ebpf_go_tls_calls_total", socket="unmapped")
    # A call whose goroutine left its thread before the Conn was once tied
    # is not copied, and counted: it may cost that exchange's spans, never
    # a wrong one.
    assert agent.metric("otel_ebpf_kernel_tls_unmapped_total") == unmapped
    assert agent.metric("otel_ebpf_go_tls_calls_total", socket="tied") >= 3 * REQUESTS
    # The server's first reads lost (the client's preface, and the header of
    # its SETTINGS frame: Go reads a frame as header then payload) leave
    # its first bytes inside a frame: the decoder finds the next frames
    # (tests/protocols/test_h2_server_first_replay.py replays such a capture).
    assert REQUESTS - unmapped <= len(servers) <= REQUESTS
    assert REQUESTS - unmapped <= len(clients) <= REQUESTS
    assert all(s.attributes["http.response.status_code"] == 200 for s in servers + clients)
    if proto == "h1" or not unmapped:
        # HTTP/2's header compression is stateful: a header block lost
        # before the Conn was tied leaves later ones partly undecodable.
        assert all(s.attributes["url.path"] == "/items/7" for s in servers)
        assert all(s.attributes["url.full"] == url for s in clients)


@pytest.mark.parametrize("loader", ["core", "bcc"])
def test_doctor_says_go_tls_coverage(loader, tls_certificate, go_peers):
    if skip_reason(loader):
        pytest.skip(skip_reason(loader))
    server, _ = start_go_server(go_peers["dwarf"], tls_certificate)
    try:
        result = subprocess.run(AGENT + ["doctor", "--loader", loader], capture_output=True,
                                text=True, cwd=ROOT, timeout=120)
    finally:
        server.terminate()
        server.wait()
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Go TLS: "))
    assert line.startswith("Go TLS: covered for running Go executables: "), line
    probed = int(line.split(": ")[2].split()[0])
    with_dwarf = int(line.split("(")[1].split()[0])
    assert probed >= 1 and with_dwarf >= 1, line


GRPC_PEER = "gogrpcpeer"
HEALTH_CHECK = "grpc.health.v1.Health/Check"


def test_go_grpc_over_tls(receiver, start_agent, tls_certificate, tmp_path):
    """grpc-go (Debian's package) over crypto/tls: HTTP/2 with gRPC's framing."""
    require_packaged_grpc()
    os.chmod(tmp_path, 0o755)
    binary = go_build(tmp_path, GRPC_PEER, tags=GRPC_TAG)
    agent = start_agent("--exe", GRPC_PEER)
    server = subprocess.Popen([binary, "grpc-server", str(tls_certificate.cert),
                               str(tls_certificate.key)],
                              stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    try:
        wait_probed(agent, SOCKET_FROM_DWARF, binary)
        out = subprocess.run([binary, "grpc-client", str(tls_certificate.cert), f"127.0.0.1:{port}",
                              str(REQUESTS), str(SELECTION_DELAY_MS), f"00-{TRACE_ID}-{PARENT_ID}-01"],
                             check=True, capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["SERVING"] * REQUESTS
        receiver.wait_for(lambda spans: len([s for s in spans if on_port(port, KIND_SERVER)(s)
                                             or on_port(port, KIND_CLIENT)(s)]) >= 2 * REQUESTS, 10)
        time.sleep(1.0)
        servers = [s for s in receiver.spans if on_port(port, KIND_SERVER)(s)]
        clients = [s for s in receiver.spans if on_port(port, KIND_CLIENT)(s)]
    finally:
        server.terminate()
        server.wait()
    assert len(servers) == REQUESTS and len(clients) == REQUESTS, (len(servers), len(clients))
    expected = {semconv.RPC_SYSTEM_NAME: "grpc", semconv.RPC_METHOD: HEALTH_CHECK,
                semconv.RPC_RESPONSE_STATUS_CODE: "OK"}
    for span in servers + clients:
        assert span.name == HEALTH_CHECK
        assert {key: span.attributes.get(key) for key in expected} == expected
    untraced = [(s.kind, s.trace_id, s.start_ns) for s in servers + clients if s.trace_id != TRACE_ID]
    assert not untraced, untraced
    assert all(s.parent_span_id == PARENT_ID for s in servers)
    assert agent.metric("otel_ebpf_kernel_tls_unmapped_total") == 0
