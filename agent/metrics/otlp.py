"""Request metrics to an OTLP collector at OTEL_METRIC_EXPORT_INTERVAL.

The span stage aggregates (agent/metrics/red.py); this thread turns the
cumulative snapshot into the SDK's MetricsData and hands it to the
opentelemetry-exporter-otlp metric exporter of the configured protocol
(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL,
default http/protobuf).  The exporters read the endpoint, headers,
compression, timeout and certificate variables themselves
(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT first, then the generic one).
"""
from __future__ import annotations

import logging
import os
import threading
import time

from opentelemetry.sdk.metrics.export import (AggregationTemporality, Histogram,
                                              HistogramDataPoint, Metric, MetricExportResult,
                                              MetricsData, ResourceMetrics, ScopeMetrics)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agent import __version__
from agent.metrics.red import METRICS, OVERFLOW_ATTRIBUTE

log = logging.getLogger("otel_ebpf")

DEFAULT_INTERVAL_MS = 60000
SCOPE = InstrumentationScope("otel-ebpf", __version__)


def export_interval_s(environ=os.environ) -> float:
    text = (environ.get("OTEL_METRIC_EXPORT_INTERVAL") or "").strip()
    if not text:
        return DEFAULT_INTERVAL_MS / 1000
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"OTEL_METRIC_EXPORT_INTERVAL: expected milliseconds, got {text!r}")
    if value <= 0:
        raise ValueError(f"OTEL_METRIC_EXPORT_INTERVAL: must be positive, got {value}")
    return value / 1000


def metrics_protocol(environ=os.environ) -> str:
    for name in ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = (environ.get(name) or "").strip()
        if value:
            if value not in ("grpc", "http/protobuf"):
                raise ValueError(f"{name}: expected grpc or http/protobuf, got {value!r}")
            return value
    return "http/protobuf"


def metric_exporter_endpoint(environ=os.environ) -> tuple[str, int]:
    """(host, port) the metric exporter sends to, left untraced by the agent."""
    from agent.export.otlp import endpoint_address
    grpc = metrics_protocol(environ) == "grpc"
    endpoint = metrics_endpoint_url(environ) \
        or ("http://localhost:4317" if grpc else "http://localhost:4318")
    return endpoint_address(endpoint, 4317 if grpc else 4318)


def metrics_endpoint_url(environ=os.environ) -> str | None:
    """The URL to send to: the metrics variable as given; the generic one
    plus /v1/metrics over HTTP; None for the exporter's default."""
    specific = (environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or "").strip()
    if specific:
        return specific
    generic = (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    if not generic:
        return None
    return generic if metrics_protocol(environ) == "grpc" else generic.rstrip("/") + "/v1/metrics"


def create_metric_exporter(environ=os.environ):
    """The SDK's OTLP metric exporter; headers, compression, timeout and
    certificate come from the OTEL_EXPORTER_OTLP_(METRICS_) variables of the
    process environment, which the exporters read themselves."""
    url = metrics_endpoint_url(environ)
    if metrics_protocol(environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        if url is None:
            return OTLPMetricExporter()
        return OTLPMetricExporter(endpoint=url, insecure=url.startswith("http://") or None)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter(endpoint=url) if url is not None else OTLPMetricExporter()


def metrics_data(red: dict, start_ns: int, now_ns: int) -> MetricsData:
    """Cumulative histograms, one ResourceMetrics per service."""
    by_service: dict = {}
    series = red["series"]
    for metric in METRICS:
        for key, slots in series.get(metric.name, {}).items():
            if key[0] == OVERFLOW_ATTRIBUTE:
                service, attributes = None, {OVERFLOW_ATTRIBUTE: True}
            else:
                service = key[0]
                attributes = {a: v for a, v in zip(metric.attributes, key[1:]) if v is not None}
            counts = slots[:-1]
            point = HistogramDataPoint(
                attributes=attributes, start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                count=sum(counts), sum=slots[-1], bucket_counts=counts,
                explicit_bounds=list(metric.buckets), min=None, max=None)
            by_service.setdefault(service, {}).setdefault(metric, []).append(point)
    resource_metrics = []
    for service, metrics in by_service.items():
        attributes = dict(red["services"].get(service, ()))
        if service is not None:
            attributes["service.name"] = service
        resource = Resource(attributes) if service is not None else Resource.get_empty()
        scope_metrics = [Metric(name=m.name, description=m.description, unit="s",
                                data=Histogram(data_points=points, aggregation_temporality=
                                               AggregationTemporality.CUMULATIVE))
                         for m, points in metrics.items()]
        resource_metrics.append(ResourceMetrics(resource, [ScopeMetrics(SCOPE, scope_metrics, "")],
                                                ""))
    return MetricsData(resource_metrics)


class OtlpMetricsExport:
    """A thread exporting snapshot() every interval, and once more at stop()."""

    def __init__(self, snapshot, exporter=None, interval_s: float | None = None):
        self.snapshot = snapshot
        self.exporter = exporter or create_metric_exporter()
        self.interval_s = interval_s if interval_s is not None else export_interval_s()
        self.start_ns = time.time_ns()
        self.exports = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def export_now(self) -> None:
        red = self.snapshot()
        if not red:
            return
        try:
            result = self.exporter.export(metrics_data(red, self.start_ns, time.time_ns()))
        except Exception as error:   # the collector's failure must not stop the agent
            log.warning("OTLP metrics export failed: %s", error)
            result = MetricExportResult.FAILURE
        if result == MetricExportResult.SUCCESS:
            self.exports += 1
        else:
            self.failures += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.export_now()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.export_now()
        self.exporter.shutdown()
