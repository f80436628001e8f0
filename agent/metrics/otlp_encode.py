"""ExportMetricsServiceRequest written straight to protobuf wire format, from
the request-metric snapshot (agent/metrics/red.py): cumulative histograms,
one ResourceMetrics per service.

The agent sends it over its own OTLP/HTTP client (agent/export/otlp.py)
rather than the SDK's metric exporter, whose requests/urllib3 stack would
stay resident in the agent for one request a minute (docs/performance.md).
tests/metrics/test_red.py checks these bytes against the SDK's encoder.
"""
from __future__ import annotations

import struct

from agent import DISTRO_NAME, __version__
from agent.export.protobuf_wire import DOUBLE, encode_key_value, ld, varint
from agent.metrics.red import METRICS, OVERFLOW_ATTRIBUTE

_FIXED64 = struct.Struct("<Q")
_CUMULATIVE = 2      # AggregationTemporality
# ScopeMetrics.scope: InstrumentationScope name (1), version (2).
_SCOPE = ld(b"\x0a", ld(b"\x0a", DISTRO_NAME.encode()) + ld(b"\x12", __version__.encode()))


def _data_point(attributes: dict, start_ns: int, now_ns: int, slots: list) -> bytes:
    """HistogramDataPoint: start (2), time (3), count (4), sum (5), bucket
    counts (6, packed), bounds (7, packed; added by the caller, per metric),
    attributes (9)."""
    counts = slots[:-1]
    return (b"\x11" + _FIXED64.pack(start_ns) + b"\x19" + _FIXED64.pack(now_ns)
            + b"\x21" + _FIXED64.pack(sum(counts)) + b"\x29" + DOUBLE.pack(slots[-1])
            + ld(b"\x32", struct.pack(f"<{len(counts)}Q", *counts)))


def encode_metrics_request(red: dict, start_ns: int, now_ns: int) -> bytes:
    """Serialised ExportMetricsServiceRequest of a request-metric snapshot."""
    by_service: dict = {}
    for metric in METRICS:
        bounds = ld(b"\x3a", struct.pack(f"<{len(metric.buckets)}d", *metric.buckets))
        for key, slots in red["series"].get(metric.name, {}).items():
            if key[0] == OVERFLOW_ATTRIBUTE:
                service, attributes = None, {OVERFLOW_ATTRIBUTE: True}
            else:
                service = key[0]
                attributes = {a: v for a, v in zip(metric.attributes, key[1:]) if v is not None}
            point = _data_point(attributes, start_ns, now_ns, slots) + bounds + b"".join(
                encode_key_value(b"\x4a", k, v) for k, v in attributes.items())
            by_service.setdefault(service, {}).setdefault(metric, []).append(ld(b"\x0a", point))
    resource_metrics = []
    for service, metrics in by_service.items():
        attributes = dict(red["services"].get(service, ())) if service is not None else {}
        if service is not None:
            attributes["service.name"] = service
        resource = ld(b"\x0a", b"".join(encode_key_value(b"\x0a", k, v)
                                         for k, v in attributes.items()))
        encoded_metrics = b"".join(
            # Metric: name (1), description (2), unit (3), histogram (9):
            # data points (1), temporality (2).
            ld(b"\x12", ld(b"\x0a", m.name.encode()) + ld(b"\x12", m.description.encode())
               + ld(b"\x1a", b"s")
               + ld(b"\x4a", b"".join(points) + b"\x10" + varint(_CUMULATIVE)))
            for m, points in metrics.items())
        resource_metrics.append(ld(b"\x0a", resource + ld(b"\x12", _SCOPE + encoded_metrics)))
    return b"".join(resource_metrics)
