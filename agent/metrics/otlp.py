"""Request metrics to an OTLP collector at OTEL_METRIC_EXPORT_INTERVAL.

The span stage aggregates (agent/metrics/red.py); this thread sends the
cumulative snapshot over the configured protocol
(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL,
default http/protobuf), with the endpoint, headers, compression, timeout
and certificate variables (OTEL_EXPORTER_OTLP_METRICS_* first, then the
generic ones).  Over HTTP the request is agent/metrics/otlp_encode.py's,
sent by the agent's own OTLP/HTTP client; over gRPC (or with `--otlp-impl
sdk`) the snapshot becomes the SDK's MetricsData for
opentelemetry-exporter-otlp's exporter.  Histograms are cumulative, so an
export that fails loses nothing: the next one carries the same totals.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from agent import __version__
from agent.counters import Counter, Metric
from agent.export.otlp import SUCCESS, OtlpHttpClient, endpoint_address, resolve_config
from agent.metrics.otlp_encode import encode_metrics_request
from agent.metrics.red import METRICS, OVERFLOW_ATTRIBUTE

log = logging.getLogger("otel_ebpf")

DEFAULT_INTERVAL_MS = 60000

METRIC_EXPORTS = Metric("otlp_metric_exports", "Request-metric exports to the OTLP collector, "
                        "by outcome (a failed one loses nothing: the next carries the "
                        "cumulative totals).", "outcome")
COUNTERS = (Counter("exports", METRIC_EXPORTS, "ok"), Counter("failures", METRIC_EXPORTS, "failed"))


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
    return resolve_config(environ, "metrics").protocol


def metric_exporter_endpoint(environ=os.environ) -> tuple[str, int]:
    """(host, port) the metric exporter sends to, left untraced by the agent."""
    config = resolve_config(environ, "metrics")
    return endpoint_address(config.endpoint, 4317 if config.protocol == "grpc" else 4318)


def metrics_endpoint_url(environ=os.environ) -> str | None:
    """The URL to send to (the metrics variable as given; the generic one,
    plus /v1/metrics over HTTP), or None when neither is set: the SDK's
    exporter then reads its own default."""
    if not ((environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or "").strip()
            or (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()):
        return None
    return resolve_config(environ, "metrics").url


class HttpMetricExporter:
    """OTLP/HTTP: agent/metrics/otlp_encode.py's request, one attempt."""

    def __init__(self, environ=os.environ):
        self.client = OtlpHttpClient(resolve_config(environ, "metrics"))

    def export(self, red: dict, start_ns: int, now_ns: int) -> bool:
        outcome, _ = self.client.send(encode_metrics_request(red, start_ns, now_ns))
        if outcome != SUCCESS:
            log.warning("OTLP metrics export failed: %s", self.client.last_error)
        return outcome == SUCCESS

    def shutdown(self) -> None:
        self.client.close()


class SdkMetricExporter:
    """opentelemetry-exporter-otlp's metric exporter of the protocol, given
    the snapshot as the SDK's MetricsData: for gRPC, and for HTTP with
    `--otlp-impl sdk`."""

    def __init__(self, environ=os.environ):
        url = metrics_endpoint_url(environ)
        if metrics_protocol(environ) == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            self.exporter = OTLPMetricExporter() if url is None else \
                OTLPMetricExporter(endpoint=url, insecure=url.startswith("http://") or None)
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            self.exporter = OTLPMetricExporter(endpoint=url) if url is not None \
                else OTLPMetricExporter()

    def export(self, red: dict, start_ns: int, now_ns: int) -> bool:
        from opentelemetry.sdk.metrics.export import MetricExportResult
        return self.exporter.export(metrics_data(red, start_ns, now_ns)) == \
            MetricExportResult.SUCCESS

    def shutdown(self) -> None:
        self.exporter.shutdown()


def create_metric_exporter(environ=os.environ, otlp_impl: str = "fast"):
    """The agent's own OTLP/HTTP exporter, or the SDK's (gRPC, or asked for)."""
    if otlp_impl == "sdk" or metrics_protocol(environ) == "grpc":
        return SdkMetricExporter(environ)
    return HttpMetricExporter(environ)


def metrics_data(red: dict, start_ns: int, now_ns: int):
    """The SDK's MetricsData of a snapshot: cumulative histograms, one
    ResourceMetrics per service.  The SDK's metric types are imported here,
    for gRPC only: loaded at start they would stay resident in every agent."""
    from opentelemetry.sdk.metrics.export import (AggregationTemporality, Histogram,
                                                  HistogramDataPoint, Metric, MetricsData,
                                                  ResourceMetrics, ScopeMetrics)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    scope = InstrumentationScope("otel-ebpf", __version__)
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
        resource_metrics.append(ResourceMetrics(resource, [ScopeMetrics(scope, scope_metrics, "")],
                                                ""))
    return MetricsData(resource_metrics)


class OtlpMetricsExport:
    """A thread exporting snapshot() every interval, and once more at stop()."""

    def __init__(self, snapshot, exporter=None, interval_s: float | None = None,
                 otlp_impl: str = "fast"):
        self.snapshot = snapshot
        self.exporter = exporter or create_metric_exporter(otlp_impl=otlp_impl)
        self.interval_s = interval_s if interval_s is not None else export_interval_s()
        self.start_ns = time.time_ns()
        self.exports = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def counter_values(self):
        return [(c, getattr(self, c.key)) for c in COUNTERS]

    def export_now(self) -> None:
        red = self.snapshot()
        if not red:
            return
        try:
            exported = self.exporter.export(red, self.start_ns, time.time_ns())
        except Exception as error:   # the collector's failure must not stop the agent
            log.warning("OTLP metrics export failed: %s", error)
            exported = False
        if exported:
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
