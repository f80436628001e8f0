"""/metrics families of the probes' HTTP/1.x exchange records
(bpf/http_exchange.h): connections turned over to the payload path and
exchanges shed whole under load, by reason."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily


def http_exchange_families(capture, prefix: str):
    """The families, or none when the probes do not pair exchanges."""
    if not capture.http_exchanges:
        return
    fallbacks = CounterMetricFamily(
        f"{prefix}_kernel_http_fallbacks",
        "Connections whose HTTP/1 the probes turned over to the payload path, by reason; "
        "response_first: one exchange whose response came before its request's call ended, "
        "the connection going on with records.",
        labels=["reason"])
    dropped = CounterMetricFamily(
        f"{prefix}_kernel_http_requests_dropped",
        "Requests the probes held, then dropped when their connection went to the payload "
        "path mid-body (one whose response had not begun is handed over), by reason.",
        labels=["reason"])
    for reason, (connections, requests) in capture.http_fallbacks().items():
        fallbacks.add_metric([reason], connections)
        dropped.add_metric([reason], requests)
    shed = _by_label(
        f"{prefix}_kernel_http_exchanges_shed",
        "Exchanges the probes followed but did not write (neither side), by reason: "
        "ring_fill, the ring buffer was past its shed mark when the request came.",
        "reason", capture.http_shed())
    moves = _by_label(
        f"{prefix}_kernel_http_moves",
        "Connections moved between the paths at a request head by --http-exchanges by-load: "
        "to records while the ring buffer fills, to the payload path once it keeps up.",
        "to", capture.http_moves())
    yield from (fallbacks, dropped, shed, moves)


def _by_label(name: str, documentation: str, label: str, counts: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in counts.items():
        family.add_metric([value], count)
    return family
