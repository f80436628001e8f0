"""Selection by cgroup and by executable, with real processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from agent.capture.selection import cgroup2_root
from agent.spans.model import KIND_SERVER
from conftest import PEERS, curl, free_port, wait_for_port


@pytest.fixture
def cgroup():
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    path = os.path.join(root, f"otel-ebpf-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    yield path
    # Processes must leave before the directory can go.
    with open(os.path.join(path, "cgroup.procs")) as f:
        for pid in f.read().split():
            with open(os.path.join(root, "cgroup.procs"), "w") as out:
                out.write(pid)
    os.rmdir(path)


def start_backend(port: int, service: str, cgroup_path: str | None = None):
    def enter_cgroup():
        if cgroup_path:
            with open(os.path.join(cgroup_path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    proc = subprocess.Popen([sys.executable, str(PEERS / "backend.py"), str(port)],
                            stdout=subprocess.PIPE, preexec_fn=enter_cgroup,
                            env={**os.environ, "OTEL_SERVICE_NAME": service})
    proc.stdout.readline()
    wait_for_port(port)
    return proc


def test_cgroup_selects_its_processes_including_ones_started_later(receiver, start_agent, cgroup):
    inside_port, outside_port, late_port = free_port(), free_port(), free_port()
    inside = start_backend(inside_port, "inside", cgroup)
    outside = start_backend(outside_port, "outside")
    late = None
    try:
        start_agent("--cgroup", cgroup)
        # Started after the agent, inside the selected cgroup: traced from
        # its first request, with no rescan needed.
        late = start_backend(late_port, "late", cgroup)
        for port in (inside_port, outside_port, late_port):
            assert curl(f"http://127.0.0.1:{port}/x")["status"] == 200
        assert receiver.wait_for(lambda spans: {"inside", "late"} <= {
            s.resource["service.name"] for s in spans if s.kind == KIND_SERVER}, 10)
        time.sleep(1.0)
        services = {s.resource["service.name"] for s in receiver.spans}
        assert "outside" not in services
        # curl runs outside the cgroup: no client spans.
        assert all(s.kind == KIND_SERVER for s in receiver.spans)
    finally:
        for proc in (inside, outside, late):
            if proc is not None:
                proc.terminate()
                proc.wait()


def test_exe_selects_processes_by_executable_name(receiver, start_agent, start_nginx, backend):
    nginx = start_nginx()
    start_agent("--exe", "nginx")
    assert curl(f"http://127.0.0.1:{nginx.port}/fast")["status"] == 200
    assert curl(f"http://127.0.0.1:{backend}/x")["status"] == 200
    assert receiver.wait_for(lambda spans: any(
        s.kind == KIND_SERVER and s.attributes.get("server.port") == nginx.port for s in spans), 10)
    time.sleep(1.0)
    # Only nginx: not the Python backend, not curl.
    assert {s.resource["process.executable.name"] for s in receiver.spans} == {"nginx"}


@pytest.mark.parametrize("agent_loader", ["core", "bcc"])
def test_exe_selects_short_processes_from_their_first_syscall(receiver, start_agent, start_nginx,
                                                              agent_loader):
    """20 separate curl processes, each done in milliseconds: the kernel
    selects each at its exec (exe_filter), before userspace has read the
    exec's record, so every request gives its client span."""
    nginx = start_nginx()
    agent = start_agent("--exe", "curl")
    requests = 20
    for i in range(requests):
        assert curl(f"http://127.0.0.1:{nginx.port}/fast?i={i}")["status"] == 200

    def clients(spans):
        return [s for s in spans if s.resource.get("process.executable.name") == "curl"]

    receiver.wait_for(lambda spans: len(clients(spans)) >= requests, 10)
    time.sleep(0.5)
    assert sorted(s.attributes["url.full"].rpartition("?")[2] for s in clients(receiver.spans)) == \
        sorted(f"i={i}" for i in range(requests))
    assert {s.resource["process.executable.name"] for s in receiver.spans} == {"curl"}
    # The kernel's selections of the exited curls go again (at the latest
    # with the next rescan of /proc, every 2 s).
    deadline = time.monotonic() + 10
    while agent.metric("otel_ebpf_bpf_map_entries", map="pid_filter") and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert agent.metric("otel_ebpf_bpf_map_entries", map="pid_filter") == 0


def test_bad_selectors_stop_the_agent_with_a_clear_message():
    from conftest import AGENT, ROOT
    result = subprocess.run(AGENT + ["run", "--container", "xyz", "--metrics-address", ""],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode != 0
    assert "--container 'xyz': give at least 12 hex digits" in result.stderr
