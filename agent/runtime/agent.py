"""Wires one running agent together: kernel capture, pipeline, exporter,
self-metrics, and an orderly stop."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from agent.export import describe_sink, exporter_endpoint
from agent.runtime.heap import settle_heap
from agent.spans.k8s import PodMetadata
from agent.capture.loader import CaptureSettings, load_capture
from agent.capture.bpf_stats import enable_stats
from agent.metrics.otlp import OtlpMetricsExport, metric_exporter_endpoint
from agent.runtime.metrics import AgentMetrics, MetricsServer
from agent.runtime.pipeline import Pipeline
from agent.capture.records import C
from agent.capture.tls import TlsProbes
from agent.capture.conntrack import open_resolver
from agent.runtime.scheduling import CpuYield
from agent.capture.selection import Selection
from agent.runtime.span_stage import StageSettings
from agent.runtime.span_worker import SpanWorkerPool

log = logging.getLogger("otel_ebpf")

# The agent must stop within 2 s of SIGTERM: this much of it goes to flushing.
STOP_FLUSH_SECONDS = 1.5
# A loop that has not turned for this long is reported unhealthy.
LOOP_STALL_SECONDS = 10.0


@dataclass
class AgentConfig:
    pids: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    exes: set[str] = field(default_factory=set)
    cgroups: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    exporter: str = "auto"
    otlp_impl: str = "fast"
    capture_bytes: int = 2048
    ring_buffer_bytes: int = 16 << 20
    hooks: str = "auto"
    loader: str = "auto"
    kernel_headers: str | None = None
    metrics_address: str | None = "127.0.0.1:9464"
    redact_query_keys: tuple[str, ...] = ()
    sql_text: str = "sanitized"
    tls: bool = True
    routes: tuple[str, ...] = ()
    keep_error_spans: bool = True
    span_workers: int = 1
    yield_cpu: bool = True
    conntrack: bool = True
    request_metrics: bool = True          # agent/metrics: RED histograms on /metrics
    otlp_metrics: bool | None = None      # None: when the span exporter is OTLP
    metric_series_limit: int = 2000
    http_exchanges: int = 0     # HTTP_EXCHANGES_* (agent/capture/exchange_records.EXCHANGE_MODES)


class Agent:
    def __init__(self, config: AgentConfig, console_stream=None):
        self.config = config
        self.console_stream = console_stream
        self.capture = None
        self.tls = None
        self.k8s = None
        self.nat = None
        self.pipeline = None
        self.span_stage = None
        self.sink_name = ""
        self.metrics = None
        self.metrics_server = None
        self.otlp_metrics = None
        self.bpf_stats_fd = None
        self._stop = threading.Event()
        self._stop_requested = False

    def start(self) -> None:
        config = self.config
        stage_settings = StageSettings(
            exporter=config.exporter, otlp_impl=config.otlp_impl, environ=dict(os.environ),
            redact_query_keys=tuple(config.redact_query_keys), sql_text=config.sql_text,
            routes=tuple(config.routes), keep_error_spans=config.keep_error_spans,
            red_metrics=config.request_metrics, series_limit=config.metric_series_limit)
        # The linker's sampler: the span stages make theirs alike.
        sampler = stage_settings.sampler()
        self.sink_name = describe_sink(config.exporter, config.otlp_impl, os.environ)
        # Span workers start only when the load first needs them.
        self.span_stage = SpanWorkerPool(stage_settings, config.span_workers,
                                         self.console_stream) \
            if config.span_workers else stage_settings.make(self.console_stream)
        excluded = []
        endpoint = exporter_endpoint(os.environ, include_default=config.exporter == "otlp") \
            if config.exporter in ("auto", "otlp") else None
        if endpoint is not None:
            excluded.append(endpoint)
        otlp_metrics = config.request_metrics and (
            config.otlp_metrics if config.otlp_metrics is not None
            else self.sink_name.startswith("otlp"))
        if otlp_metrics:
            metrics_endpoint = metric_exporter_endpoint(os.environ)
            if metrics_endpoint is not None and metrics_endpoint != endpoint:
                excluded.append(metrics_endpoint)
        selection = Selection(config.pids, config.exes, config.cgroups, config.containers)
        pids, cgroups = selection.resolve()
        settings = CaptureSettings(
            capture_bytes=config.capture_bytes, ring_buffer_bytes=config.ring_buffer_bytes,
            pids=pids, cgroups=cgroups, ports=set(config.ports) or None,
            excluded_endpoints=excluded, hooks=config.hooks, tls=config.tls,
            loader=config.loader, kernel_headers=config.kernel_headers,
            http_exchanges=config.http_exchanges,
            # Traced processes' execs are reported with or without TLS: the
            # record carries the start time and path a short-lived one's
            # resource needs.
            report_execs=C["EXECS_ALL"] if selection.exes else C["EXECS_TRACED"])
        self.metrics = AgentMetrics(self)
        self.capture = load_capture(settings)
        if settings.http_exchanges and not self.capture.http_exchanges:
            log.warning("--http-exchanges: the %s loader's programs cannot parse HTTP/1.x "
                        "heads (no bpf_loop); HTTP/1.x takes the payload path",
                        self.capture.front_end.name)
        # Kernel BPF stats on for the agent's life: the kernel turns them
        # back off when this fd closes, however the agent exits.
        self.bpf_stats_fd = enable_stats()
        selection.known_pids, selection.known_cgroups = pids or set(), cgroups or set()
        selection.install_exes(self.capture)
        tls = None
        if config.tls:
            tls = TlsProbes(self.capture)
            tls.start()
        self.tls = tls
        self.k8s = PodMetadata.from_environment()
        if self.k8s is not None:
            self.k8s.start()
        self.nat = open_resolver() if config.conntrack else None
        self.pipeline = Pipeline(self.capture, self.span_stage, sampler,
                                 selection=selection if selection.exes or selection.by_cgroup else None,
                                 tls=tls, k8s=self.k8s,
                                 nat=self.nat if self.nat is not None and self.nat.available
                                 else None,
                                 cpu_yield=CpuYield(os.getpid(), self.capture.ring, config.yield_cpu))
        if otlp_metrics:
            stage = self.span_stage
            self.otlp_metrics = OtlpMetricsExport(lambda: stage.snapshot().get("red"),
                                                  otlp_impl=config.otlp_impl)
            self.otlp_metrics.start()
        if config.metrics_address:
            self.metrics_server = MetricsServer(config.metrics_address, self.metrics, self)
            self.metrics_server.start()

    def describe(self) -> str:
        capture = self.capture
        parts = [f"loader={capture.front_end.describe()}",
                 f"hooks={capture.hook_family.name} ({capture.attached_programs} programs)"]
        for name, why in capture.skipped_hooks:
            parts.append(f"not {name}: {why.splitlines()[0]}")
        if not capture.http_exchanges:
            parts.append("HTTP/1.x=payload path")
        elif capture.settings.http_exchanges == C["HTTP_EXCHANGES_BY_LOAD"]:
            parts.append("HTTP/1.x=exchange records under load, payload path otherwise")
        else:
            parts.append("HTTP/1.x=exchange records")
        parts.append(f"exporter={self.sink_name}")
        workers = self.config.span_workers
        parts.append(f"span workers=up to {workers}, while the load needs them" if workers
                     else "span workers=0")
        parts.append(f"nice={os.getpriority(os.PRIO_PROCESS, 0)}")
        parts.append("yields the CPU while it keeps up" if self.pipeline.cpu_yield.enabled
                     else "does not yield the CPU")
        if self.nat is not None:
            parts.append("NAT resolution=conntrack" if self.nat.available
                         else "NAT resolution=unavailable")
        if self.metrics_server:
            parts.append(f"metrics=http://{self.metrics_server.address}/metrics")
        return "; ".join(parts)

    def run(self, duration_s: float | None = None) -> None:
        deadline = time.monotonic() + duration_s if duration_s else None
        settle_heap()
        self.pipeline.run(self._stop, deadline)

    def request_stop(self) -> None:
        # Runs in signal handlers, between any two bytecodes of the main
        # thread: a second SIGTERM can arrive while the first is inside
        # Event.set(), whose lock is not reentrant.  Only the first goes on.
        if self._stop_requested:
            return
        self._stop_requested = True
        self._stop.set()
        if self.pipeline is not None:
            self.pipeline.wake()

    def shutdown(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop(STOP_FLUSH_SECONDS)
        else:
            if self.capture is not None:
                self.capture.close()
            if self.span_stage is not None:
                self.span_stage.shutdown(STOP_FLUSH_SECONDS)
        if self.otlp_metrics is not None:
            self.otlp_metrics.stop()
        if self.k8s is not None:
            self.k8s.stop()
        if self.nat is not None:
            self.nat.close()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.bpf_stats_fd is not None:
            os.close(self.bpf_stats_fd)
            self.bpf_stats_fd = None

    def healthy(self) -> tuple[bool, str]:
        if self.pipeline is None:
            return False, "starting"
        stalled = time.monotonic() - self.pipeline.last_loop_monotonic
        if stalled > LOOP_STALL_SECONDS:
            return False, f"loop stalled for {stalled:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.capture is None or not self.capture.attached_programs:
            return False, "probes not attached"
        if self.span_stage is None or not self.span_stage.alive():
            return False, "span stage (exporter) not running"
        return True, "ok"
