"""Request metrics (agent/metrics): exact counts before sampling, the
conventions' names and buckets, bounded series, and both exports (the
Prometheus exposition and OTLP to the test receiver).  No privileges."""
from __future__ import annotations

import subprocess
import shutil

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from agent.metrics.otlp import (OtlpMetricsExport, create_metric_exporter, metric_exporter_endpoint,
                                metrics_data, metrics_endpoint_url)
from agent.metrics.otlp_encode import encode_metrics_request
from agent.metrics.prometheus import red_families
from agent.metrics.red import (HTTP_BUCKETS, HTTP_SERVER, OVERFLOW_ATTRIBUTE, RedAggregator,
                               merge_red, overflow_key)
from agent.runtime.metrics import PREFIX, declared_families
from agent.runtime.span_stage import LocalSpanStage, merge_snapshots
from agent.spans.builder import RESOURCE_MARKER
from agent.spans.http import TAG, HttpExchange
from agent.spans.model import KIND_CLIENT, KIND_SERVER, new_span_id, new_trace_id
from agent.spans.redact import Redactor
from agent.spans.routes import RouteNamer
from agent.spans.sampling import Sampler
from otlp_receiver import OtlpReceiver

PID = 4242
OVERFLOW_KEY_OF_HTTP = overflow_key(HTTP_SERVER)
MIX = {200: 70, 404: 20, 500: 10}


def exchange(status: int, path: str = "/items/1", duration_ms: float = 3.0,
             kind: int = KIND_SERVER, method: str = "GET", n: int = 0) -> HttpExchange:
    start = 1_000_000_000 + n * 10_000_000
    return HttpExchange(TAG, kind, PID, new_trace_id(), new_span_id(),
                        b"", 1, "", start, start + int(duration_ms * 1e6), method, path,
                        "1.1", "shop.local:8080", "curl/8", status, "127.0.0.1", 8080,
                        "127.0.0.1", 50000 + n % 1000, "127.0.0.1", 50000 + n % 1000,
                        "http", None)


RESOURCE = (RESOURCE_MARKER, PID, [("service.name", "shop"), ("process.pid", PID),
                                   ("k8s.namespace.name", "prod")])


def mixed_exchanges() -> list:
    out, n = [], 0
    for status, count in MIX.items():
        for _ in range(count):
            out.append(exchange(status, f"/items/{n}", n=n))
            n += 1
    return out


class Discard:
    bytes_sent = 0

    def export(self, spans, timeout_s=None):
        return "success"

    def shutdown(self):
        pass


def stage(ratio: float = 0.1, routes=("/items/{id}",), limit: int = 2000) -> LocalSpanStage:
    return LocalSpanStage(Discard(), Redactor(), Sampler(ratio, keep_errors=False),
                          RouteNamer(routes), series_limit=limit)


def prometheus_samples(red: dict) -> dict:
    class Collector:
        def collect(self):
            return red_families(red, "otel_ebpf")
    registry = CollectorRegistry()
    registry.register(Collector())
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples, text


def counts_by_status(samples: list) -> dict:
    out = {}
    for labels, value in samples:
        status = labels.get("http_response_status_code")
        out[status] = out.get(status, 0) + value
    return out


def test_counts_per_status_are_exact_at_sampling_ratio_0_1():
    s = stage(0.1)
    s.submit([RESOURCE] + mixed_exchanges())
    snap = s.snapshot()
    assert snap["sampled_out"] > 0            # sampling did drop spans...
    samples, _ = prometheus_samples(snap["red"])
    count = samples["http_server_request_duration_seconds_count"]
    assert counts_by_status(count) == {str(k): v for k, v in MIX.items()}   # ...not counts
    labels = {frozenset(lbl.items()) for lbl, _ in count}
    assert all(dict(lbl)["http_route"] == "/items/{id}" for lbl in labels)
    assert all(dict(lbl)["service_name"] == "shop" for lbl in labels)
    errors = {dict(lbl)["http_response_status_code"]: dict(lbl)["error_type"] for lbl in labels}
    assert errors == {"200": "", "404": "", "500": "500"}   # 4xx is no server error


def test_buckets_are_the_conventions_and_hold_the_durations():
    aggregator_stage = stage(1.0)
    aggregator_stage.submit([RESOURCE, exchange(200, duration_ms=3), exchange(200, n=1,
                                                                               duration_ms=300)])
    samples, _ = prometheus_samples(aggregator_stage.snapshot()["red"])
    buckets = {lbl["le"]: v for lbl, v in samples["http_server_request_duration_seconds_bucket"]}
    assert [float(b) for b in buckets if b != "+Inf"] == list(HTTP_BUCKETS)
    assert buckets["0.005"] == 1 and buckets["0.25"] == 1 and buckets["0.5"] == 2
    assert buckets["+Inf"] == 2
    total = samples["http_server_request_duration_seconds_sum"][0][1]
    assert total == pytest.approx(0.303)


def test_client_spans_feed_the_client_metric_with_4xx_as_errors():
    s = stage(1.0)
    s.submit([RESOURCE, exchange(404, kind=KIND_CLIENT)])
    samples, _ = prometheus_samples(s.snapshot()["red"])
    assert "http_server_request_duration_seconds_count" not in samples
    [(labels, value)] = samples["http_client_request_duration_seconds_count"]
    assert value == 1 and labels["error_type"] == "404" and labels["server_address"] == "shop.local"


def test_distinct_paths_never_become_labels():
    s = stage(1.0, routes=())
    s.submit([RESOURCE] + [exchange(200, f"/p/{i}?q={i}", n=i) for i in range(10_000)])
    samples, text = prometheus_samples(s.snapshot()["red"])
    assert len(samples["http_server_request_duration_seconds_count"]) == 1
    assert "/p/" not in text and "q=" not in text


def test_series_beyond_the_limit_fold_into_the_overflow_series():
    s = stage(1.0, routes=(), limit=5)
    # 10,000 distinct paths answered with 50 different status codes.
    s.submit([RESOURCE] + [exchange(200 + i % 50, f"/p/{i}", n=i) for i in range(10_000)])
    red = s.snapshot()["red"]
    samples, _ = prometheus_samples(red)
    count = samples["http_server_request_duration_seconds_count"]
    assert len(count) == 6                       # the limit, plus the overflow series
    overflow = [v for lbl, v in count if lbl.get("otel_metric_overflow") == "true"]
    assert overflow == [10_000 - 5 * 200]
    assert sum(v for _, v in count) == 10_000    # nothing lost
    [(labels, folded)] = [(lbl, v) for lbl, v in samples["otel_ebpf_metric_series_overflow_total"]
                          if lbl["metric"] == "http.server.request.duration"]
    assert folded == 10_000 - 5 * 200


def test_span_workers_snapshots_merge_under_one_limit():
    a, b = RedAggregator(3), RedAggregator(3)
    first = stage(1.0, routes=())
    first.submit([RESOURCE] + [exchange(200 + i, n=i) for i in range(3)])
    second = stage(1.0, routes=())
    second.submit([RESOURCE] + [exchange(300 + i, n=i) for i in range(3)])
    a.series, b.series = first.red.series, second.red.series
    merged = merge_red([a.snapshot(), b.snapshot()], 3)
    table = merged["series"]["http.server.request.duration"]
    assert len(table) == 4 and merged["overflowed"]["http.server.request.duration"] == 3
    # A stage's own overflow series, folded at the limit, is not counted twice.
    again = merge_red([merged, merged], 3)
    assert again["overflowed"]["http.server.request.duration"] == 6
    assert sum(again["series"]["http.server.request.duration"][OVERFLOW_KEY_OF_HTTP][:-1]) == 6
    via_stage = merge_snapshots([first.snapshot(), second.snapshot()])["red"]
    assert sum(sum(v[:-1]) for v in via_stage["series"]["http.server.request.duration"].values()) == 6


def test_no_request_metrics_switch():
    s = LocalSpanStage(Discard(), Redactor(), Sampler(), RouteNamer(), red_metrics=False)
    s.submit([RESOURCE, exchange(200)])
    assert s.snapshot()["red"] == {}
    assert list(red_families({}, "otel_ebpf")) == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (apt prometheus) absent")
def test_exposition_passes_promtool():
    s = stage(1.0, limit=2)
    s.submit([RESOURCE] + [exchange(200 + i, n=i) for i in range(5)])
    _, text = prometheus_samples(s.snapshot()["red"])
    result = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                            capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("protocol, otlp_impl", [("http", "fast"), ("http", "sdk"),
                                                 ("grpc", "fast")])
def test_otlp_export_carries_exact_cumulative_histograms(protocol, otlp_impl):
    receiver = OtlpReceiver().start(protocol)
    try:
        s = stage(0.1)
        s.submit([RESOURCE] + mixed_exchanges())
        export = OtlpMetricsExport(lambda: s.snapshot()["red"],
                                   create_metric_exporter(receiver.env, otlp_impl), interval_s=3600)
        export.export_now()
        points = receiver.histogram_points("http.server.request.duration")
    finally:
        receiver.stop()
    assert export.exports == 1
    by_status = {}
    for resource, attrs, point in points:
        assert resource["service.name"] == "shop" and resource["k8s.namespace.name"] == "prod"
        assert "process.pid" not in resource          # a service's series, not a process's
        assert attrs["http.route"] == "/items/{id}" and "url.path" not in attrs
        assert list(point.explicit_bounds) == list(HTTP_BUCKETS)
        assert sum(point.bucket_counts) == point.count
        by_status[attrs["http.response.status_code"]] = point.count
    assert by_status == MIX


def test_the_agents_metric_request_is_the_one_the_sdk_encodes():
    """Byte for byte the SDK's message (parsed: protobuf has one wire form
    per message here), overflow series and its empty resource included."""
    s = stage(1.0, routes=(), limit=2)
    s.submit([RESOURCE] + mixed_exchanges())
    red = s.snapshot()["red"]
    assert red["overflowed"]["http.server.request.duration"]
    ours = ExportMetricsServiceRequest.FromString(encode_metrics_request(red, 123, 456))
    assert ours == encode_metrics(metrics_data(red, 123, 456))
    assert len(ours.resource_metrics) == 2


def test_a_failed_metrics_export_is_counted_and_the_next_carries_the_totals(caplog):
    receiver = OtlpReceiver().start("http")
    try:
        s = stage(0.1)
        s.submit([RESOURCE] + mixed_exchanges())
        export = OtlpMetricsExport(lambda: s.snapshot()["red"],
                                   create_metric_exporter(receiver.env), interval_s=3600)
        assert export_counts(export) == {"ok": 0, "failed": 0}      # on /metrics from the start
        receiver.fail_with = 503
        export.export_now()
        assert export_counts(export) == {"ok": 0, "failed": 1}
        assert "OTLP metrics export failed: HTTP 503" in caplog.text
        receiver.fail_with = None
        export.export_now()
        points = receiver.histogram_points("http.server.request.duration")
    finally:
        receiver.stop()
    assert export_counts(export) == {"ok": 1, "failed": 1}
    assert sum(point.count for _, _, point in points) == sum(MIX.values())


def export_counts(export) -> dict:
    """otel_ebpf_otlp_metric_exports_total by outcome, as /metrics gives it."""
    (family,) = declared_families(export.counter_values())
    assert family.name == f"{PREFIX}_otlp_metric_exports"
    return {sample.labels["outcome"]: sample.value for sample in family.samples}


@pytest.mark.parametrize("environ, url, address", [
    ({}, None, ("localhost", 4318)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
     "http://collector:4318/v1/metrics", ("collector", 4318)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
      "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics:9000/custom"},
     "https://metrics:9000/custom", ("metrics", 9000)),
    ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}, None, ("localhost", 4317)),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
     "http://collector:4317", ("collector", 4317)),
])
def test_metrics_endpoint_follows_the_metrics_variables_then_the_generic_ones(environ, url, address):
    assert metrics_endpoint_url(environ) == url
    assert metric_exporter_endpoint(environ) == address


@pytest.mark.parametrize("variable, value", [
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
    ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4318"),
])
def test_a_bad_metrics_variable_is_named_at_start(variable, value):
    environ = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", variable: value} \
        if variable.endswith("TIMEOUT") else {variable: value}
    with pytest.raises(ValueError, match=variable):
        metric_exporter_endpoint(environ)


def test_overflow_series_exports_with_its_attribute():
    s = stage(1.0, routes=(), limit=1)
    s.submit([RESOURCE, exchange(200), exchange(404, n=1)])
    data = metrics_data(s.snapshot()["red"], 1, 2)
    attrs = [p.attributes for rm in data.resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics for p in m.data.data_points]
    assert {OVERFLOW_ATTRIBUTE: True} in attrs and len(attrs) == 2
