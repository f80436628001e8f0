"""Self-monitoring: after real traffic the agent's own /metrics move the way
the traffic says, the exposition passes `promtool check metrics`, and the
health endpoints answer."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from agent import __version__
from agent.spans.model import KIND_CLIENT, KIND_SERVER
from conftest import curl, http_get
from helpers import delta, has, snapshot, value, wait_quiet

REQUESTS = 20


def test_counters_follow_real_traffic(receiver, start_agent, backend):
    agent = start_agent("--port", str(backend))
    before = wait_quiet(agent)
    for i in range(REQUESTS):
        assert curl(f"http://127.0.0.1:{backend}/items/{i}")["status"] == 200
    assert receiver.wait_for(
        lambda spans: len([s for s in spans if s.attributes.get("server.port") == backend])
        >= 2 * REQUESTS, 15), receiver.spans
    after = wait_quiet(agent)

    server = [s for s in receiver.spans if s.kind == KIND_SERVER and s.attributes.get("server.port") == backend]
    client = [s for s in receiver.spans if s.kind == KIND_CLIENT and s.attributes.get("server.port") == backend]
    assert len(server) == REQUESTS and len(client) == REQUESTS

    # Kernel side: every request is at least a write and a read at each end.
    kernel_events = delta(after, before, "otel_ebpf_kernel_events_total")
    assert kernel_events >= 4 * REQUESTS
    assert delta(after, before, "otel_ebpf_kernel_events_lost_total") == 0
    # Everything the probes wrote was drained (the agent is quiet again).
    assert delta(after, before, "otel_ebpf_events_drained_total") == kernel_events
    # Framing: one request and one response at each end.
    assert delta(after, before, "otel_ebpf_http_messages_total", type="request") == 2 * REQUESTS
    assert delta(after, before, "otel_ebpf_http_messages_total", type="response") == 2 * REQUESTS
    # Spans: built per kind, exported, through at least one timed export.
    assert delta(after, before, "otel_ebpf_spans_built_total", kind="server") == REQUESTS
    assert delta(after, before, "otel_ebpf_spans_built_total", kind="client") == REQUESTS
    assert delta(after, before, "otel_ebpf_spans_exported_total") == 2 * REQUESTS
    assert delta(after, before, "otel_ebpf_export_duration_seconds_count") >= 1
    assert delta(after, before, "otel_ebpf_export_duration_seconds_sum") > 0
    assert delta(after, before, "otel_ebpf_export_sent_bytes_total") > 0
    for name in ("otel_ebpf_parse_errors_total", "otel_ebpf_spans_dropped_queue_full_total",
                 "otel_ebpf_spans_export_failed_total", "otel_ebpf_responses_without_request_total"):
        assert delta(after, before, name) == 0, name

    # Gauges and process metrics.
    rss = value(after, "process_resident_memory_bytes")
    assert 10e6 < rss < 300e6, rss
    assert value(after, "process_cpu_seconds_total") > 0
    assert value(after, "otel_ebpf_build_info", version=__version__) == 1
    assert has(after, "otel_ebpf_queue_depth") and value(after, "otel_ebpf_queue_depth", queue="export") == 0
    assert value(after, "otel_ebpf_tracked", entity="processes") >= 1
    for entity in ("connections", "processes", "trace_links", "records_held"):
        assert has(after, "otel_ebpf_tracked") and \
            any(n == "otel_ebpf_tracked" and ("entity", entity) in labels for n, labels in after), entity
    assert 0 <= value(after, "otel_ebpf_ring_buffer_fill_ratio") < 0.01
    assert value(after, "otel_ebpf_ring_buffer_size_bytes") == 16 * 2 ** 20
    # A load the main process keeps up with starts no span worker: its
    # processes are the main one and the CPU guard.
    import psutil
    children = psutil.Process(agent.proc.pid).children()
    assert {p.pid for p in children} == {p.pid for p in guards_of(agent)}, children
    assert value(after, "otel_ebpf_process_resident_memory_bytes", process="span_worker") == 0
    print(f"\nkernel events {kernel_events:.0f} for {REQUESTS} requests, RSS {rss / 2**20:.1f} MiB")


def test_promtool_and_health_endpoints(receiver, start_agent, backend):
    if not shutil.which("promtool"):
        pytest.skip("promtool is not installed (apt prometheus)")
    agent = start_agent("--port", str(backend))
    for i in range(5):
        curl(f"http://127.0.0.1:{backend}/status/{500 + i}")
    assert receiver.wait_for(lambda spans: len(spans) >= 10, 10)
    text = agent.metrics()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), \
        check.stdout + check.stderr
    base = f"http://127.0.0.1:{agent.metrics_port}"
    assert http_get(f"{base}/healthz")[0] == 200
    assert http_get(f"{base}/readyz")[0] == 200
    assert http_get(f"{base}/nothing")[0] == 404
    # Every agent metric has HELP and TYPE (promtool would say so too).
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert {"otel_ebpf_kernel_events_total", "otel_ebpf_spans_built_total", "otel_ebpf_queue_depth",
            "otel_ebpf_export_duration_seconds", "otel_ebpf_build_info",
            "process_resident_memory_bytes"} <= families | {f + "_info" for f in families}, families


def guards_of(agent) -> list:
    import psutil
    return [p for p in psutil.Process(agent.proc.pid).children()
            if "agent.runtime.cpu_guard" in p.cmdline()]


def the_guard_of(agent, timeout: float = 10.0):
    """The agent's one guard process.  The capture loop starts it on its
    first turn, which may come just after /readyz answers, and its command
    line is the guard's only once its exec has set it up: wait for both."""
    deadline = time.monotonic() + timeout
    while not (guards := guards_of(agent)):
        assert time.monotonic() < deadline, "the agent started no guard"
        time.sleep(0.05)
    assert len(guards) == 1, guards
    return guards[0]


def thread_policies(agent) -> set[int]:
    """Scheduling policies of every thread of the agent and its span workers."""
    import psutil
    main = psutil.Process(agent.proc.pid)
    guards = guards_of(agent)
    workers = [p for p in main.children() if p not in guards]
    return {os.sched_getscheduler(thread.id)
            for process in [main, *workers] for thread in process.threads()}


def agent_policies(agent) -> tuple[set[int], set[int]]:
    """The policies of the agent's threads, and of its guard process's."""
    guard = the_guard_of(agent)
    return thread_policies(agent), {os.sched_getscheduler(guard.pid)}


def test_the_agent_yields_the_cpu_and_takes_it_back_when_starved(receiver, start_agent, backend):
    agent = start_agent("--port", str(backend))
    quiet = wait_quiet(agent)
    assert value(quiet, "otel_ebpf_cpu_yielding") == 1
    assert value(quiet, "otel_ebpf_cpu_yield_suspensions_total") == 0
    assert agent_policies(agent) == ({os.SCHED_IDLE}, {os.SCHED_OTHER})
    # Three busy processes per core at normal weight: a SCHED_IDLE agent
    # would wait seconds for a turn, so its late loop takes its weight back,
    # and the spans still come.
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(3 * os.cpu_count())]
    try:
        for i in range(REQUESTS):
            assert curl(f"http://127.0.0.1:{backend}/starved/{i}")["status"] == 200
        assert receiver.wait_for(
            lambda spans: len([s for s in spans if s.attributes.get("url.path", "").startswith(
                "/starved/") and s.kind == KIND_SERVER]) >= REQUESTS, 20), receiver.spans
        during = snapshot(agent)
        assert value(during, "otel_ebpf_cpu_yield_suspensions_total") >= 1
        assert value(during, "otel_ebpf_cpu_yielding") == 0
        assert agent_policies(agent) == ({os.SCHED_OTHER}, {os.SCHED_OTHER})
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def gone(process, timeout: float = 5) -> bool:
    """Whether a process (not necessarily our child) has exited within the
    timeout: a zombie its parent has not reaped yet counts as exited."""
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_the_guard_goes_with_the_agent(start_agent, backend):
    stopped = start_agent("--port", str(backend))
    guard = the_guard_of(stopped)
    stopped.stop()
    assert gone(guard)
    killed = start_agent("--port", str(backend))
    guard = the_guard_of(killed)
    killed.proc.kill()      # no clean-up runs: the kernel's parent-death signal ends the guard
    killed.proc.wait()
    assert gone(guard)


def test_an_agent_whose_guard_dies_stops_yielding(receiver, start_agent, backend):
    # Nobody would be left to give a starved agent its weight back.
    agent = start_agent("--port", str(backend))
    assert value(wait_quiet(agent), "otel_ebpf_cpu_yielding") == 1
    guard = the_guard_of(agent)
    guard.kill()
    assert gone(guard)
    deadline = time.monotonic() + 10     # the agent looks at housekeeping, every 2 s
    while value(snapshot(agent), "otel_ebpf_cpu_yielding") != 0:
        assert time.monotonic() < deadline, "the agent still says it yields"
        time.sleep(0.2)
    assert thread_policies(agent) == {os.SCHED_OTHER}
    assert guards_of(agent) == []
    assert "the CPU guard exited" in agent.stderr()
    assert curl(f"http://127.0.0.1:{backend}/after-guard")["status"] == 200
    assert receiver.wait_for(lambda spans: any(
        s.attributes.get("url.path") == "/after-guard" and s.kind == KIND_SERVER
        for s in spans), 10), receiver.spans
