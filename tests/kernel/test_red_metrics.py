"""Request metrics end to end: nginx -> Python backend under a known mix of
statuses at trace sampling 0.1; the agent's http.server.request.duration
counts per status equal the load generator's, on /metrics and through
OTLP; 10,000 distinct paths keep the series bounded and count the
overflow."""
from __future__ import annotations

import http.client
import shutil
import subprocess
import time

from helpers import snapshot, value, wait_quiet

MIX = {200: 30, 404: 20, 500: 10}
SERVER_COUNT = "http_server_request_duration_seconds_count"


def send(port: int, paths) -> dict:
    """GETs on one keep-alive connection; the statuses seen, counted."""
    seen: dict = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path in paths:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            seen[response.status] = seen.get(response.status, 0) + 1
    finally:
        connection.close()
    return seen


def by_status(samples: dict, name: str, **labels) -> dict:
    want = set(labels.items())
    out: dict = {}
    for (n, sample_labels), v in samples.items():
        if n == name and want <= sample_labels and v:
            status = int(dict(sample_labels)["http_response_status_code"])
            out[status] = out.get(status, 0) + int(v)
    return out


def wait_counts(agent, name: str, total: int, timeout: float = 20.0, **labels) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        counts = by_status(wait_quiet(agent), name, **labels)
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.3)


def test_status_counts_are_exact_at_sampling_0_1(receiver, start_agent, start_nginx, backend):
    nginx = start_nginx(backend)
    agent = start_agent("--port", str(nginx.port), "--port", str(backend),
                        "--route", "/api/status/{code}",
                        extra_env={"OTEL_TRACES_SAMPLER": "traceidratio",
                                   "OTEL_TRACES_SAMPLER_ARG": "0.1",
                                   "OTEL_METRIC_EXPORT_INTERVAL": "500"})
    paths = [f"/api/status/{status}?n={i}" for status, count in MIX.items()
             for i in range(count)]
    assert send(nginx.port, paths) == MIX          # the load generator's own count
    total = sum(MIX.values())

    backend_counts = wait_counts(agent, SERVER_COUNT, total, service_name="test-backend")
    assert backend_counts == MIX
    samples = snapshot(agent)
    # nginx's server side too: every exchange at both servers, not a tenth.
    assert by_status(samples, SERVER_COUNT, http_route="/api/status/{code}") == \
        {status: 2 * count for status, count in MIX.items()}
    # Clients: this test's (to nginx's port) and nginx (to the backend's).
    assert by_status(samples, "http_client_request_duration_seconds_count") == \
        {status: 2 * count for status, count in MIX.items()}
    assert value(samples, "otel_ebpf_spans_sampled_out_total") > 0   # sampling was on
    errors = {dict(labels).get("error_type") for (n, labels), v in samples.items()
              if n == SERVER_COUNT and dict(labels)["http_response_status_code"] == "500"}
    assert errors == {"500"}
    assert not any("n=" in str(labels) for _, labels in samples)     # no query, no raw path

    def otlp_counts() -> dict:
        out: dict = {}
        for resource, attrs, point in receiver.histogram_points("http.server.request.duration"):
            if resource.get("service.name") == "test-backend":
                status = attrs["http.response.status_code"]
                out[status] = out.get(status, 0) + point.count
        return out
    deadline = time.monotonic() + 10
    while otlp_counts() != MIX and time.monotonic() < deadline:
        time.sleep(0.2)
    assert otlp_counts() == MIX

    if shutil.which("promtool"):
        result = subprocess.run(["promtool", "check", "metrics"], input=agent.metrics(),
                                text=True, capture_output=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_ten_thousand_paths_stay_bounded(start_agent, backend):
    agent = start_agent("--port", str(backend), "--metric-series-limit", "20")
    # 10,000 distinct paths, no route configured, answered with 50 statuses
    # (4xx: all of them carry a body).
    seen = send(backend, (f"/status/{400 + i % 50}/item-{i}" for i in range(10_000)))
    assert sum(seen.values()) == 10_000
    deadline = time.monotonic() + 30
    while True:
        samples = wait_quiet(agent)
        series = {labels: v for (n, labels), v in samples.items() if n == SERVER_COUNT}
        if sum(series.values()) >= 10_000 or time.monotonic() > deadline:
            break
    assert sum(series.values()) == 10_000           # every exchange counted once
    assert len(series) == 21                        # the limit and one overflow series
    overflow = [v for labels, v in series.items()
                if dict(labels).get("otel_metric_overflow") == "true"]
    # At least the 30 statuses beyond the limit; which 20 got series of their
    # own depends on how batches split between the main process and the span
    # worker (the limit applies to each, then to their union).
    assert len(overflow) == 1 and overflow[0] >= 10_000 - 20 * 200
    assert value(samples, "otel_ebpf_metric_series_overflow_total",
                 metric="http.server.request.duration") == overflow[0]
    assert "item-" not in agent.metrics()


def test_probe_cost_and_map_fill_on_metrics(start_agent, backend):
    stats = open("/proc/sys/kernel/bpf_stats_enabled").read().strip()
    agent = start_agent("--port", str(backend))
    before = snapshot(agent)
    send(backend, (f"/items/{i}" for i in range(200)))
    after = wait_quiet(agent)
    runs = {dict(labels)["program"]: v for (n, labels), v in after.items()
            if n == "otel_ebpf_bpf_program_runs_total"}
    run_time = value(after, "otel_ebpf_bpf_program_run_time_seconds_total")
    assert runs and sum(runs.values()) > value(before, "otel_ebpf_bpf_program_runs_total") + 800
    assert run_time > 0
    capacity = {dict(labels)["map"]: v for (n, labels), v in after.items()
                if n == "otel_ebpf_bpf_map_max_entries"}
    entries = {dict(labels)["map"]: v for (n, labels), v in after.items()
               if n == "otel_ebpf_bpf_map_entries"}
    assert capacity and set(entries) == set(capacity)
    assert all(0 <= entries[m] <= capacity[m] for m in capacity)
    agent.stop()
    # Stats came from BPF_ENABLE_STATS's fd (closed with the agent), not
    # from the sysctl, which stays as it was.
    assert open("/proc/sys/kernel/bpf_stats_enabled").read().strip() == stats
