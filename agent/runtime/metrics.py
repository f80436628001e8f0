"""The agent's own Prometheus metrics, read from the stages' counters at
scrape time (the hot path only increments plain integers), and the HTTP
endpoint that serves them with /healthz and /readyz."""
from __future__ import annotations

import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                   InfoMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent import __version__
from agent.capture import bpf_stats
from agent.capture.go_tls import metric_families as go_tls_metric_families
from agent.capture.records import PROBE_STATS_FIELDS
from agent.capture.tls_membio import counter_values as membio_counter_values
from agent.metrics.prometheus import red_families
from agent.runtime.span_stage import EXPORT_SECONDS_BUCKETS
from agent.runtime.span_worker import SpanWorkerPool
from agent.runtime.exchange_metrics import http_exchange_families

PREFIX = "otel_ebpf"

def declared_families(counter_values):
    """Counter families from (agent/counters.py declaration, value) pairs:
    one family per declared Metric, one sample per key feeding it."""
    by_metric: dict = {}
    for declared, value in counter_values:
        by_metric.setdefault(declared.metric, []).append((declared.label_value, value))
    for metric, samples in by_metric.items():
        labels = [metric.label] if metric.label else []
        family = CounterMetricFamily(f"{PREFIX}_{metric.name}", metric.help, labels=labels)
        for label_value, value in samples:
            family.add_metric([label_value] if metric.label else [], value)
        yield family


def parse_error_samples(declarations, counts: dict):
    """((protocol, reason), value) of every declared reason, at 0 until its
    first error (agent/counters.py ParseErrors), then of any reason counted
    that was not declared."""
    samples = {(d.protocol, reason): 0 for d in declarations for reason in d.reasons}
    samples.update(list(counts.items()))
    return samples.items()


def bpf_families():
    """The probes' run time and runs (kernel BPF stats, on while the agent
    runs) and the fill of the agent's kernel hash maps."""
    run_time = CounterMetricFamily(f"{PREFIX}_bpf_program_run_time_seconds", "CPU time the kernel spent in the agent's BPF programs while the agent ran (kernel BPF stats).", labels=["program"])
    runs = CounterMetricFamily(f"{PREFIX}_bpf_program_runs", "Runs of the agent's BPF programs while the agent ran (kernel BPF stats).", labels=["program"])
    fds = bpf_stats.bpf_fds()
    for program, (ns, count) in sorted(bpf_stats.program_stats(fds).items()):
        run_time.add_metric([program], ns / 1e9)
        runs.add_metric([program], count)
    entries = GaugeMetricFamily(f"{PREFIX}_bpf_map_entries", "Entries in each of the agent's kernel hash maps.", labels=["map"])
    capacity = GaugeMetricFamily(f"{PREFIX}_bpf_map_max_entries", "Capacity of each of the agent's kernel hash maps.", labels=["map"])
    for name, (count, max_entries) in sorted(bpf_stats.map_fill(fds).items()):
        entries.add_metric([name], count)
        capacity.add_metric([name], max_entries)
    yield from (run_time, runs, entries, capacity)


class AgentCollector:
    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        agent = self.agent
        pipeline = agent.pipeline
        capture = agent.capture
        if capture is not None and capture.ring is not None:
            stats = capture.probe_stats()
            families = {
                "events": CounterMetricFamily(f"{PREFIX}_kernel_events", "Records the kernel probes wrote to the ring buffer.", labels=["probe"]),
                "lost": CounterMetricFamily(f"{PREFIX}_kernel_events_lost", "Records the kernel probes could not write: ring buffer full.", labels=["probe"]),
                "truncated": CounterMetricFamily(f"{PREFIX}_kernel_payloads_truncated", "Payloads longer than the capture size.", labels=["probe"]),
                "unclassified": CounterMetricFamily(f"{PREFIX}_kernel_events_unclassified", "Socket data of protocols the agent does not trace, not copied.", labels=["probe"]),
                "unmapped": CounterMetricFamily(f"{PREFIX}_kernel_tls_unmapped", "TLS plaintext whose socket is unknown (no socket I/O under the library call), not copied.", labels=["probe"]),
                "untracked": CounterMetricFamily(f"{PREFIX}_kernel_calls_untracked", "Calls not followed to their end, their data lost: the table of calls in flight (an entry per thread inside one) was full.", labels=["probe"]),
            }
            for probe, values in stats.items():
                for field, value in zip(PROBE_STATS_FIELDS, values):
                    families[field].add_metric([probe], value)
            yield from families.values()
            yield from declared_families(membio_counter_values(capture))
            fill = GaugeMetricFamily(f"{PREFIX}_ring_buffer_fill_ratio", "Share of the ring buffer holding undrained records.")
            fill.add_metric([], capture.ring.fill_ratio())
            yield fill
            size = GaugeMetricFamily(f"{PREFIX}_ring_buffer_size_bytes", "Ring buffer size.")
            size.add_metric([], capture.settings.ring_buffer_bytes)
            yield size
            yield from bpf_families()
            yield from http_exchange_families(capture, PREFIX)
        if pipeline is None:
            return
        protocols = pipeline.protocols
        drained = CounterMetricFamily(f"{PREFIX}_events_drained", "Records read from the ring buffer.")
        drained.add_metric([], pipeline.records_drained)
        yield drained
        errors = CounterMetricFamily(f"{PREFIX}_parse_errors", "Messages that could not be parsed.", labels=["protocol", "reason"])
        for (protocol, reason), value in parse_error_samples(protocols.parse_error_declarations,
                                                             protocols.parse_errors):
            errors.add_metric([protocol, reason], value)
        yield errors
        linker = pipeline.linker
        yield from declared_families(protocols.counter_values() + linker.counter_values())
        stage = agent.span_stage.snapshot()
        built = CounterMetricFamily(f"{PREFIX}_spans_built", "Spans built from matched exchanges.", labels=["kind"])
        built.add_metric(["server"], stage.get("spans_server", 0))
        built.add_metric(["client"], stage.get("spans_client", 0))
        yield built
        for key, name, doc in (
                ("sampled_out", "spans_sampled_out", "Spans not exported because sampling dropped their trace."),
                ("spans_exported", "spans_exported", "Spans the collector accepted."),
                ("spans_failed", "spans_export_failed", "Spans given up on after export retries."),
                ("spans_dropped_queue_full", "spans_dropped_queue_full", "Spans dropped because the export queue was full."),
                ("exchanges_dropped", "exchanges_dropped_worker_busy", "Exchanges not handed to a span worker in time."),
                ("bytes_sent", "export_sent_bytes", "Bytes of encoded spans sent to the collector.")):
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc)
            family.add_metric([], stage.get(key, 0))
            yield family
        redactions = CounterMetricFamily(f"{PREFIX}_redactions", "Values redacted before export, by rule.", labels=["rule"])
        for rule, value in stage.get("redactions", {}).items():
            redactions.add_metric([rule], value)
        yield redactions
        buckets = stage.get("export_seconds_buckets")
        if buckets:
            cumulative, running = [], 0
            for bound, count in zip(list(EXPORT_SECONDS_BUCKETS) + [float("inf")], buckets):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            histogram = HistogramMetricFamily(f"{PREFIX}_export_duration_seconds", "Time one export request took.")
            histogram.add_metric([], cumulative, stage.get("export_seconds_sum", 0.0))
            yield histogram
        yield from red_families(stage.get("red"), PREFIX)
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Items waiting in a pipeline queue.", labels=["queue"])
        depth.add_metric(["export"], stage.get("queue_depth", 0))
        yield depth
        cpu_yield = pipeline.cpu_yield
        if cpu_yield is not None:
            yielding = GaugeMetricFamily(f"{PREFIX}_cpu_yielding", "1 while the agent runs under SCHED_IDLE, yielding the CPU to traced processes; 0 at normal weight.")
            yielding.add_metric([], int(cpu_yield.yielding))
            yield yielding
            behind = CounterMetricFamily(f"{PREFIX}_cpu_yield_suspensions", "Times the agent took its normal CPU weight back because its ring buffer filled or its loop ran late.")
            behind.add_metric([], cpu_yield.switches_to_normal)
            yield behind
        tracked = GaugeMetricFamily(f"{PREFIX}_tracked", "Entities the agent holds state for.", labels=["entity"])
        tracked.add_metric(["connections"], protocols.connections_tracked())
        tracked.add_metric(["processes"], stage.get("processes", 0))
        tracked.add_metric(["trace_links"], linker.links_tracked())
        tracked.add_metric(["records_held"], protocols.records_held())
        yield tracked
        k8s = agent.k8s
        if k8s is not None:
            refreshes = CounterMetricFamily(f"{PREFIX}_k8s_pod_list_refreshes", "Lists of this node's pods read from the Kubernetes API, by outcome.", labels=["outcome"])
            refreshes.add_metric(["ok"], k8s.counts["refreshes"])
            refreshes.add_metric(["failed"], k8s.counts["refresh_failures"])
            yield refreshes
            pods = GaugeMetricFamily(f"{PREFIX}_k8s_containers_known", "Containers of this node's pods in the metadata index.")
            pods.add_metric([], len(k8s))
            yield pods
            dropped = CounterMetricFamily(f"{PREFIX}_k8s_pod_waits_dropped", "Containerised processes first seen before their pod was listed, beyond the 4,096 the agent waits for: their spans lack the pod's attributes.")
            dropped.add_metric([], agent.pipeline.pod_waits_dropped if agent.pipeline is not None else 0)
            yield dropped
        if agent.otlp_metrics is not None:
            yield from declared_families(agent.otlp_metrics.counter_values())
        tls = agent.tls
        if tls is not None:
            files = CounterMetricFamily(f"{PREFIX}_tls_files", "TLS library files and executables looked at for OpenSSL, by outcome.", labels=["outcome"])
            files.add_metric(["probed"], tls.counts["files_probed"])
            files.add_metric(["without_symbols"], tls.counts["files_without_symbols"])
            yield files
            probes = GaugeMetricFamily(f"{PREFIX}_tls_uprobes_attached", "TLS uprobes attached (each covers every process mapping its file).")
            probes.add_metric([], tls.counts["probes_attached"])
            yield probes
            yield from go_tls_metric_families(tls.go, PREFIX)
        # -- NAT resolution: agent/capture/conntrack.py declares its counters.
        nat = agent.nat
        if nat is not None:
            yield from declared_families(nat.counter_values())
            available = GaugeMetricFamily(f"{PREFIX}_conntrack_available", "1 when the node's connection tracker answers look-ups, 0 when it cannot be used (see the start-up log or `otel-ebpf doctor`).")
            available.add_metric([], int(nat.available))
            yield available
            cached = GaugeMetricFamily(f"{PREFIX}_conntrack_cache_entries", "Client connections whose conntrack answer is cached.")
            cached.add_metric([], len(nat))
            yield cached


class AgentProcessesCollector:
    """CPU and memory of every agent process (main, span workers, the CPU
    yield guard), so that the agent's whole cost shows, not only the main
    process's."""

    def __init__(self, agent):
        self.agent = agent
        self._processes: dict[int, psutil.Process] = {}

    def _process(self, pid: int):
        process = self._processes.get(pid)
        if process is None:
            process = self._processes[pid] = psutil.Process(pid)
        return process

    def collect(self):
        cpu = CounterMetricFamily(f"{PREFIX}_process_cpu_seconds", "CPU time of the agent's processes.", labels=["process"])
        rss = GaugeMetricFamily(f"{PREFIX}_process_resident_memory_bytes", "Resident memory of the agent's processes.", labels=["process"])
        roles = [("main", [os.getpid()])]
        stage = self.agent.span_stage
        if isinstance(stage, SpanWorkerPool):
            roles.append(("span_worker", stage.processes()))
        pipeline = self.agent.pipeline
        guard = pipeline.cpu_yield.guard_pid if pipeline is not None and pipeline.cpu_yield else None
        if guard is not None:
            roles.append(("cpu_yield_guard", [guard]))
        for role, pids in roles:
            seconds = resident = 0.0
            for pid in pids:
                try:
                    process = self._process(pid)
                    times = process.cpu_times()
                    seconds += times.user + times.system
                    resident += process.memory_info().rss
                except psutil.Error:
                    self._processes.pop(pid, None)
            cpu.add_metric([role], seconds)
            rss.add_metric([role], resident)
        yield cpu
        yield rss


class AgentMetrics:
    """Registry with the agent's collector, process CPU/memory and build info."""

    def __init__(self, agent):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(AgentCollector(agent))
        self.registry.register(AgentProcessesCollector(agent))
        info = InfoMetricFamily(f"{PREFIX}_build", "Agent build information.")
        info.add_metric([], {"version": __version__})
        self._info = info
        self.registry.register(_Static([info]))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Static:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


class MetricsServer:
    """/metrics, /healthz (the loop turned recently), /readyz (probes
    attached, exporter running)."""

    def __init__(self, address: str, metrics: AgentMetrics, agent):
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        metrics_ref, agent_ref = metrics, agent

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics_ref.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, why = agent_ref.healthy()
                    self._send(200 if ok else 503, why.encode() + b"\n", "text/plain")
                elif path == "/readyz":
                    ok, why = agent_ref.ready()
                    self._send(200 if ok else 503, why.encode() + b"\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code, body, content_type):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        self.server.daemon_threads = True
        self.address = f"{host}:{self.server.server_address[1]}"
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)

    def _serve(self) -> None:
        # One request at a time from a wait with no timeout: serve_forever
        # would wake twice a second to look for a shutdown, and make a stop
        # wait up to half a second for it.
        while not self._stopping:
            self.server.handle_request()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        # A connection ends the wait; the loop then sees the flag.
        host, port = self.server.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            pass
        self._thread.join(1.0)
        self.server.server_close()
