"""TLS plaintext through the OpenSSL uprobes: HTTPS servers and clients
traced like cleartext ones, with url.scheme https."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_UNSET
from conftest import (PEERS, curl, loaded_programs, programs_of, programs_still_loaded,
                      start_backend)
from test_http1_e2e import PARENT_ID, TRACE_ID, TRACEPARENT, wait_spans
from test_http1_load import LOSS_METRICS, traced_load

SYSTEM_LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def tls_programs_of(pid: int) -> set[int]:
    """The TLS uprobe programs process pid holds (another agent on the
    machine may hold its own)."""
    return programs_of(pid, ("tls_enter", "tls_exit"))


def on_port(port: int, kind: int):
    return lambda s: s.kind == kind and s.attributes.get("server.port") == port


def maps_of(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_https_server_and_curl_join_the_callers_trace(receiver, start_agent, tls_certificate):
    agent = start_agent()
    # Started after the agent: the system libssl was probed at start-up,
    # mapped by anyone or not, so this server is traced from its first call.
    proc, port = start_backend(tls_certificate)
    try:
        timing = curl(f"https://127.0.0.1:{port}/items/7?color=blue", TRACEPARENT,
                      extra=["--cacert", str(tls_certificate.cert)])
        assert timing["status"] == 200
        server = wait_spans(receiver, on_port(port, KIND_SERVER), 1)
        client = wait_spans(receiver, on_port(port, KIND_CLIENT), 1)
    finally:
        proc.terminate()
        proc.wait()
    assert len(server) == 1 and len(client) == 1, (server, client)
    server, client = server[0], client[0]
    assert server.resource["service.name"] == "test-backend"
    assert server.trace_id == TRACE_ID and server.parent_span_id == PARENT_ID
    assert server.name == "GET" and server.status_code == STATUS_UNSET
    assert server.attributes["url.scheme"] == "https"
    assert server.attributes["url.path"] == "/items/7"
    assert server.attributes["url.query"] == "color=blue"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["network.peer.port"] == timing["local_port"]
    # curl's own span: the span id its traceparent announced.
    assert client.resource["process.executable.name"] == "curl"
    assert client.trace_id == TRACE_ID and client.span_id == PARENT_ID
    assert client.attributes["url.full"] == f"https://127.0.0.1:{port}/items/7?color=blue"
    # The ciphertext under these calls was never parsed as HTTP.
    assert agent.metric("otel_ebpf_parse_errors_total", protocol="http1") == 0, \
        [line for line in agent.metrics().splitlines() if "parse_errors" in line]
    assert agent.metric("otel_ebpf_kernel_events_total", probe="ssl_read") > 0
    assert agent.metric("otel_ebpf_kernel_events_total", probe="ssl_write") > 0


def test_process_with_its_own_libssl_started_later_is_traced(receiver, start_agent,
                                                              tls_certificate, tmp_path):
    """A second copy of libssl (as a container or a wheel brings) that no
    process mapped when the agent started: found through the exec report."""
    if not os.path.exists(SYSTEM_LIBSSL):
        pytest.skip(f"{SYSTEM_LIBSSL} not found to copy")
    private = tmp_path / "lib"
    private.mkdir()
    shutil.copy(SYSTEM_LIBSSL, private / "libssl.so.3")
    agent = start_agent()
    probed = agent.metric("otel_ebpf_tls_files_total", outcome="probed")
    proc, port = start_backend(tls_certificate, env={"LD_LIBRARY_PATH": str(private)})
    try:
        assert str(private / "libssl.so.3") in maps_of(proc.pid), "the peer must map its own copy"
        deadline = time.monotonic() + 10
        while agent.metric("otel_ebpf_tls_files_total", outcome="probed") <= probed:
            assert time.monotonic() < deadline, "the new libssl copy was not probed"
            time.sleep(0.1)
        timing = curl(f"https://127.0.0.1:{port}/later", TRACEPARENT,
                      extra=["--cacert", str(tls_certificate.cert)])
        assert timing["status"] == 200
        server = wait_spans(receiver, on_port(port, KIND_SERVER), 1)
    finally:
        proc.terminate()
        proc.wait()
    assert server[0].attributes["url.scheme"] == "https"
    assert server[0].attributes["url.path"] == "/later"
    assert server[0].parent_span_id == PARENT_ID


def test_nginx_tls_proxy_keeps_one_trace_across_both_hops(receiver, start_agent, backend,
                                                          start_nginx, tls_certificate):
    nginx = start_nginx(backend_port=backend, tls=tls_certificate)
    start_agent()
    timing = curl(f"https://127.0.0.1:{nginx.port}/api/orders", TRACEPARENT,
                  extra=["--cacert", str(tls_certificate.cert)])
    assert timing["status"] == 200
    front = wait_spans(receiver, on_port(nginx.port, KIND_SERVER), 1)[0]
    hop = wait_spans(receiver, on_port(backend, KIND_CLIENT), 1)[0]
    back = wait_spans(receiver, on_port(backend, KIND_SERVER), 1)[0]
    assert front.attributes["url.scheme"] == "https"
    assert front.resource["process.executable.name"] == "nginx"
    assert hop.attributes["url.full"].startswith(f"http://127.0.0.1:{backend}/api/orders")
    assert back.attributes["url.scheme"] == "http"
    assert {front.trace_id, hop.trace_id, back.trace_id} == {TRACE_ID}
    assert front.parent_span_id == PARENT_ID
    assert hop.parent_span_id == front.span_id
    assert back.parent_span_id == hop.span_id


def test_wrk_over_https_every_response_is_a_span_or_a_counted_loss(start_nginx,
                                                                   tls_certificate):
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed (make setup installs it)")
    nginx = start_nginx(tls=tls_certificate)

    def run_wrk() -> int:
        run = subprocess.run(["wrk", "-t1", "-c16", "-d10s", f"https://127.0.0.1:{nginx.port}/fast"],
                             capture_output=True, text=True, check=True)
        return int(run.stdout.split(" requests in")[0].split()[-1])

    responses, spans, losses = traced_load(nginx, run_wrk, LOSS_METRICS, label="wrk https")
    assert spans <= responses + 16, (responses, spans, losses)
    if sum(losses.values()) == 0:
        assert spans >= responses, (responses, spans, losses)
    else:
        assert spans + sum(losses.values()) >= responses, (responses, spans, losses)


def test_http2_over_tls_needs_no_other_parser(receiver, start_agent, start_nginx,
                                              tls_certificate):
    nginx = start_nginx(http2=True, tls=tls_certificate)
    start_agent()
    timing = curl(f"https://127.0.0.1:{nginx.port}/fast", TRACEPARENT,
                  extra=["--http2", "--cacert", str(tls_certificate.cert)])
    assert timing["status"] == 200
    server = wait_spans(receiver, on_port(nginx.port, KIND_SERVER), 1)[0]
    client = wait_spans(receiver, on_port(nginx.port, KIND_CLIENT), 1)[0]
    for span in (server, client):
        assert span.attributes["network.protocol.version"] == "2", span
        assert span.trace_id == TRACE_ID
    assert server.attributes["url.scheme"] == "https"
    assert server.parent_span_id == PARENT_ID
    assert client.attributes["url.full"] == f"https://127.0.0.1:{nginx.port}/fast"


@pytest.mark.parametrize("agent_loader", ["core", "bcc"])
@pytest.mark.parametrize("uprobe_multi", [True, False], ids=["uprobe_multi", "perf_event"])
def test_both_attach_paths_capture_plaintext_and_detach(monkeypatch, tls_certificate,
                                                        uprobe_multi, agent_loader):
    """uprobe_multi links (Linux 6.6+) where the kernel has them, else one
    perf-event uprobe per function: both deliver the plaintext and leave no
    uprobe behind, whichever loader built the programs."""
    import dataclasses

    from agent.capture import loader
    from agent.capture.records import C, EVENT_HEADER, EVENT_HEADER_FIELDS, EVENT_HEADER_SIZE
    from agent.capture.tls import TlsProbes

    features = loader.detect_features()
    if uprobe_multi and not features.uprobe_multi:
        pytest.skip("this kernel has no uprobe_multi links (Linux 6.6+)")
    monkeypatch.setattr(loader, "detect_features",
                        lambda: dataclasses.replace(features, uprobe_multi=uprobe_multi))
    capture = loader.load_capture(loader.CaptureSettings(loader=agent_loader))
    try:
        assert capture.uprobe_multi == uprobe_multi
        tls = TlsProbes(capture)
        tls.start()
        assert tls.counts["files_probed"] >= 1
        proc, port = start_backend(tls_certificate)
        try:
            assert curl(f"https://127.0.0.1:{port}/plain", extra=[
                "--cacert", str(tls_certificate.cert)])["status"] == 200
        finally:
            proc.terminate()
            proc.wait()
        payloads = []
        for record in capture.ring.read_batch(1 << 20):
            header = dict(zip(EVENT_HEADER_FIELDS, EVENT_HEADER.unpack_from(record)))
            if header["type"] == C["EVENT_DATA"] and header["flags"] & C["FLAG_TLS"] and \
                    port in (header["local_port"], header["remote_port"]):
                payloads.append(bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + header["captured"]]))
        assert any(p.startswith(b"GET /plain HTTP/1.1") for p in payloads), payloads
        assert any(p.startswith(b"HTTP/1.1 200") for p in payloads), payloads
        probes = tls_programs_of(os.getpid())
        assert len(probes) == 2, loaded_programs()
    finally:
        capture.close()
    # A program stays loaded while any link holds it; a released uprobe_multi
    # link lets go of it after an RCU grace period.
    deadline = time.monotonic() + 3
    while programs_still_loaded(probes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not programs_still_loaded(probes)



STATIC_LIBS = ("/usr/lib/x86_64-linux-gnu/libssl.a", "/usr/lib/x86_64-linux-gnu/libcrypto.a")


def test_statically_linked_openssl_is_found_by_symbol(receiver, start_agent, tls_certificate,
                                                      tmp_path):
    """A client with OpenSSL linked in, started after the agent: no libssl
    file to probe, so the agent finds SSL_read/SSL_write in the executable
    itself after the exec report."""
    if not all(os.path.exists(lib) for lib in STATIC_LIBS) or not shutil.which("clang-19"):
        pytest.skip("needs clang-19 and OpenSSL's static libraries (libssl-dev; make setup)")
    client = tmp_path / "static_tls_client"
    subprocess.run(["clang-19", "-O1", str(PEERS / "static_tls_client.c"), "-o", str(client),
                    *STATIC_LIBS, "-lpthread", "-ldl"], check=True, capture_output=True)
    assert "libssl" not in subprocess.run(["ldd", str(client)], capture_output=True,
                                          text=True).stdout
    agent = start_agent()
    probed = agent.metric("otel_ebpf_tls_files_total", outcome="probed")
    server, port = start_backend(tls_certificate)
    proc = subprocess.Popen([str(client), str(port), "/static", TRACEPARENT.split(": ")[1]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while agent.metric("otel_ebpf_tls_files_total", outcome="probed") <= probed:
            assert time.monotonic() < deadline, "the static client was not probed"
            time.sleep(0.1)
        out, _ = proc.communicate("go\n", timeout=10)
        assert proc.returncode == 0 and out.startswith("HTTP/1.1 200"), (proc.returncode, out)
        client_span = wait_spans(receiver, on_port(port, KIND_CLIENT), 1)[0]
        server_span = wait_spans(receiver, on_port(port, KIND_SERVER), 1)[0]
    finally:
        proc.kill()
        proc.wait()
        server.terminate()
        server.wait()
    assert client_span.resource["process.executable.name"] == "static_tls_client"
    assert client_span.attributes["url.full"] == f"https://127.0.0.1:{port}/static"
    assert client_span.span_id == PARENT_ID and client_span.trace_id == TRACE_ID
    assert server_span.parent_span_id == PARENT_ID


def test_starting_and_stopping_under_https_load_harms_no_traced_process(start_agent, start_nginx,
                                                                       tls_certificate):
    """Probes come and go while nginx and wrk are inside SSL_read/SSL_write:
    both keep running, every request is answered, and nothing stays attached."""
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed (make setup installs it)")
    nginx = start_nginx(tls=tls_certificate)
    load = subprocess.Popen(["wrk", "-t1", "-c8", "-d8s", f"https://127.0.0.1:{nginx.port}/fast"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    probes: set[int] = set()
    for _ in range(3):
        time.sleep(1)
        agent = start_agent()
        probes |= tls_programs_of(agent.proc.pid)
        time.sleep(1)
        assert agent.stop() < 2.0
    out, err = load.communicate(timeout=30)
    assert load.returncode == 0, err
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    assert nginx.proc.poll() is None
    assert curl(f"https://127.0.0.1:{nginx.port}/fast",
                extra=["--cacert", str(tls_certificate.cert)])["status"] == 200
    assert len(probes) == 6
    deadline = time.monotonic() + 3
    while programs_still_loaded(probes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not programs_still_loaded(probes)


def test_programs_that_import_libssl_are_not_counted_as_untraceable(start_agent, tmp_path):
    """postgres, mariadbd, nginx call SSL_read through the shared libssl,
    whose file is probed: their executables are not OpenSSL copies the
    agent failed to trace."""
    if not os.path.exists(SYSTEM_LIBSSL) or not shutil.which("clang-19"):
        pytest.skip("needs clang-19 and the system libssl (make setup)")
    program = tmp_path / "libssl_importer"
    subprocess.run(["clang-19", "-O1", str(PEERS / "libssl_importer.c"), "-o", str(program),
                    "-lssl"], check=True, capture_output=True)
    # Its own copy of libssl makes the agent's scan of this process visible.
    private = tmp_path / "lib"
    private.mkdir()
    shutil.copy(SYSTEM_LIBSSL, private / "libssl.so.3")
    agent = start_agent()
    probed = agent.metric("otel_ebpf_tls_files_total", outcome="probed")
    untraceable = agent.metric("otel_ebpf_tls_files_total", outcome="without_symbols")
    proc = subprocess.Popen([str(program)], stdin=subprocess.PIPE,
                            env={**os.environ, "LD_LIBRARY_PATH": str(private)})
    try:
        deadline = time.monotonic() + 10
        while agent.metric("otel_ebpf_tls_files_total", outcome="probed") <= probed:
            assert time.monotonic() < deadline, "the process was not scanned"
            time.sleep(0.1)
        # The executable is looked at in the same scan as its maps, and again
        # at each rescan after the exec.
        time.sleep(1.0)
        assert agent.metric("otel_ebpf_tls_files_total", outcome="without_symbols") == untraceable
    finally:
        proc.communicate(b"", timeout=5)
