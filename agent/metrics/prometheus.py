"""Request metrics as Prometheus families, named as the OpenTelemetry ->
Prometheus conversion names them: dots to underscores, the unit as a suffix
(http.server.request.duration, unit s -> http_server_request_duration_seconds);
service.name becomes the service_name label."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from agent.metrics.red import METRICS, OVERFLOW_ATTRIBUTE


def prometheus_name(metric_name: str) -> str:
    return metric_name.replace(".", "_") + "_seconds"


def label_name(attribute: str) -> str:
    return attribute.replace(".", "_")


def _label_value(value) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    return str(value)


def red_families(red: dict | None, prefix: str):
    """Histogram families from a span stage's request-metric snapshot, and
    the self-metric counting measurements folded into the overflow series."""
    if not red:
        return
    series = red["series"]
    for metric in METRICS:
        table = series.get(metric.name)
        if not table:
            continue
        labels = ["service_name"] + [label_name(a) for a in metric.attributes] \
            + [label_name(OVERFLOW_ATTRIBUTE)]
        bounds = [str(b) for b in metric.buckets] + ["+Inf"]
        family = HistogramMetricFamily(prometheus_name(metric.name), metric.description,
                                       labels=labels)
        for key, slots in table.items():
            if key[0] == OVERFLOW_ATTRIBUTE:
                values = [""] * (len(labels) - 1) + ["true"]
            else:
                values = [_label_value(v) for v in key] + [""]
            running, buckets = 0, []
            for bound, count in zip(bounds, slots):
                running += count
                buckets.append((bound, running))
            family.add_metric(values, buckets, slots[-1])
        yield family
    overflow = CounterMetricFamily(
        f"{prefix}_metric_series_overflow",
        "Request-metric measurements folded into the otel.metric.overflow series because "
        "their metric held the series limit.", labels=["metric"])
    for name, count in red["overflowed"].items():
        overflow.add_metric([name], count)
    yield overflow
