"""The span stage: exchange tuples -> spans -> sampling -> export, in the
calling process.  The agent runs one in its main process, and, under heavy
load, one in each span worker process (agent/runtime/span_worker.py), which
StageSettings tells how to make its own.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field

from agent.export import create_sink
from agent.export.batch import BatchExporter
from agent.metrics.red import DEFAULT_SERIES_LIMIT, RedAggregator, merge_red
from agent.spans.builder import SpanFactory
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from agent.spans.routes import RouteNamer
from agent.spans.sampling import Sampler

EXPORT_SECONDS_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class StageSettings:
    """What a span stage is made from, as plain values: a span worker is a
    process of its own, started when the load first needs it, and makes its
    stage from these (pickled) rather than inheriting the main process's."""
    exporter: str = "auto"
    otlp_impl: str = "fast"
    # The exporter's and sampler's OTEL_* variables.
    environ: dict = field(default_factory=lambda: dict(os.environ))
    redact_query_keys: tuple = ()
    sql_text: str = "sanitized"
    routes: tuple = ()
    keep_error_spans: bool = True
    red_metrics: bool = True
    series_limit: int = DEFAULT_SERIES_LIMIT
    exporter_options: dict | None = None

    def sampler(self) -> Sampler:
        return Sampler.from_environment(self.environ, keep_errors=self.keep_error_spans)

    def make(self, console_stream=None) -> "LocalSpanStage":
        return LocalSpanStage(
            create_sink(self.exporter, self.otlp_impl, self.environ,
                        console_stream=console_stream),
            Redactor(self.redact_query_keys, self.sql_text), self.sampler(),
            RouteNamer(self.routes), exporter_options=self.exporter_options,
            red_metrics=self.red_metrics, series_limit=self.series_limit)


class ExportLatency:
    """Histogram counts kept as plain numbers so that they can cross processes."""

    def __init__(self):
        self.buckets = [0] * (len(EXPORT_SECONDS_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(EXPORT_SECONDS_BUCKETS, seconds)] += 1
        self.sum += seconds


class LocalSpanStage:
    """Factory, sampler and batch exporter in the calling process."""

    def __init__(self, sink, redactor: Redactor, sampler: Sampler, routes: RouteNamer,
                 exporter_options: dict | None = None, red_metrics: bool = True,
                 series_limit: int = DEFAULT_SERIES_LIMIT):
        self.resources = ResourceCache()
        # Request metrics see every span, before sampling (agent/metrics/red.py).
        self.red = RedAggregator(series_limit) if red_metrics else None
        self.factory = SpanFactory(self.resources, redactor, routes=routes)
        self.redactor = redactor
        self.sampler = sampler
        self.latency = ExportLatency()
        self.exporter = BatchExporter(sink, observe_export_seconds=self.latency.observe,
                                      **(exporter_options or {}))

    def submit(self, exchanges: list) -> None:
        spans = self.factory.spans(exchanges)
        if self.red is not None:
            self.red.observe(spans)
        self.exporter.submit(self.sampler.filter(spans))

    def housekeeping(self) -> None:
        self.factory.refresh_clock()
        self.resources.forget_gone()

    def alive(self) -> bool:
        return self.exporter.is_alive()

    def export_idle(self) -> bool:
        """Whether the exporter holds no span, queued or in flight."""
        return self.exporter.idle()

    def snapshot(self) -> dict:
        exporter = self.exporter
        sink = exporter.sink
        return {
            "spans_server": self.factory.spans_server,
            "spans_client": self.factory.spans_client,
            "sampled_out": self.sampler.sampled_out,
            "redactions": dict(self.redactor.counts),
            "spans_exported": exporter.spans_exported,
            "spans_failed": exporter.spans_failed,
            "spans_dropped_queue_full": exporter.spans_dropped_queue_full,
            "bytes_sent": getattr(sink, "bytes_sent", 0),
            "queue_depth": exporter.queue_depth(),
            "processes": len(self.resources),
            "export_seconds_buckets": list(self.latency.buckets),
            "export_seconds_sum": self.latency.sum,
            "alive": int(self.alive()),
            "red": self.red.snapshot() if self.red is not None else {},
        }

    def shutdown(self, timeout_s: float) -> None:
        self.exporter.shutdown(timeout_s)


def merge_snapshots(snapshots: list[dict]) -> dict:
    total: dict = {}
    reds = [snap["red"] for snap in snapshots if snap.get("red")]
    for snap in snapshots:
        for key, value in snap.items():
            if key == "red":
                continue
            if isinstance(value, dict):
                bucket = total.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
            elif isinstance(value, list):
                current = total.setdefault(key, [0] * len(value))
                total[key] = [a + b for a, b in zip(current, value)]
            elif key == "alive":
                total[key] = min(total.get(key, 1), value)
            elif key == "processes":
                # Every stage holds every process's resource.
                total[key] = max(total.get(key, 0), value)
            else:
                total[key] = total.get(key, 0) + value
    if reds:
        total["red"] = merge_red(reds, max(r.get("limit", DEFAULT_SERIES_LIMIT) for r in reds))
    return total
