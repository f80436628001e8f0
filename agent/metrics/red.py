"""Request metrics (rate, errors, duration) from every span, before sampling.

The span stage calls observe() with each batch it builds, before the sampler
drops any: counts stay exact at any sampling ratio.  The hot path only looks
up a tuple in a dict and increments a list slot; families are read at
collection time (Prometheus scrape, OTLP export interval).  Series are keyed
by service.name plus the conventions' attributes of each metric, never raw
paths or SQL text; a metric holding `series_limit` series folds new ones into
one series with otel.metric.overflow=true and counts them.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import NamedTuple

from agent.spans import semconv
from agent.spans.model import KIND_SERVER, TemplatedSpan

# Recommended explicit bucket boundaries (seconds) of the conventions.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
DEFAULT_SERIES_LIMIT = 2000
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"


class RedMetric(NamedTuple):
    name: str
    description: str
    attributes: tuple        # span attribute keys that label a series
    buckets: tuple


_HTTP_COMMON = ("http.request.method", "http.response.status_code", semconv.ERROR_TYPE,
                semconv.NETWORK_PROTOCOL_VERSION)
HTTP_SERVER = RedMetric("http.server.request.duration", "Duration of HTTP server requests.",
                        _HTTP_COMMON + ("http.route", "url.scheme"), HTTP_BUCKETS)
HTTP_CLIENT = RedMetric("http.client.request.duration", "Duration of HTTP client requests.",
                        _HTTP_COMMON + (semconv.SERVER_ADDRESS, semconv.SERVER_PORT),
                        HTTP_BUCKETS)
_RPC = (semconv.RPC_SYSTEM_NAME, semconv.RPC_METHOD, semconv.RPC_RESPONSE_STATUS_CODE,
        semconv.ERROR_TYPE)
RPC_SERVER = RedMetric("rpc.server.call.duration", "Duration of RPCs served.", _RPC,
                       HTTP_BUCKETS)
RPC_CLIENT = RedMetric("rpc.client.call.duration", "Duration of RPCs made.",
                       _RPC + (semconv.SERVER_ADDRESS, semconv.SERVER_PORT), HTTP_BUCKETS)
_DB = (semconv.DB_SYSTEM_NAME, semconv.DB_NAMESPACE, semconv.DB_OPERATION_NAME,
       semconv.DB_COLLECTION_NAME, semconv.DB_RESPONSE_STATUS_CODE, semconv.ERROR_TYPE)
DB_CLIENT = RedMetric("db.client.operation.duration", "Duration of database client operations.",
                      _DB + (semconv.SERVER_ADDRESS, semconv.SERVER_PORT), DB_BUCKETS)
# Not in the conventions: the same operations seen in the database server.
DB_SERVER = RedMetric("db.server.operation.duration",
                      "Duration of operations served by a traced database process.", _DB,
                      DB_BUCKETS)
METRICS = (HTTP_SERVER, HTTP_CLIENT, RPC_SERVER, RPC_CLIENT, DB_CLIENT, DB_SERVER)

# Resource attributes that identify a service rather than one process.
SERVICE_RESOURCE_PREFIXES = ("service.", "k8s.", "host.", "telemetry.", "container.")


def overflow_key(metric: RedMetric) -> tuple:
    return (OVERFLOW_ATTRIBUTE,) + (None,) * len(metric.attributes)


def service_attributes(resource) -> tuple:
    return tuple((k, v) for k, v in resource.attributes
                 if k.startswith(SERVICE_RESOURCE_PREFIXES))


# (has rpc.system.name, has db.system.name, is a server span) -> metric.
_METRIC_OF = {(rpc, db, server): (RPC_SERVER if server else RPC_CLIENT) if rpc
              else (DB_SERVER if server else DB_CLIENT) if db
              else (HTTP_SERVER if server else HTTP_CLIENT)
              for rpc in (False, True) for db in (False, True) for server in (False, True)}
_RPC, _DB = semconv.RPC_SYSTEM_NAME, semconv.DB_SYSTEM_NAME


def _template_metric(template) -> tuple:
    """(metric, its attributes' values) of a SpanTemplate, kept in its slot."""
    attrs = dict(template.attributes)
    metric = _METRIC_OF[_RPC in attrs, _DB in attrs, template.kind == KIND_SERVER]
    labels = template.metric = (metric, tuple(map(attrs.get, metric.attributes)))
    return labels


class RedAggregator:
    """Cumulative histograms per (service, attributes) of each metric.

    series[metric.name][key] = [count per bucket..., +Inf count, sum seconds],
    key = (service.name, attribute values in metric.attributes order)."""

    def __init__(self, series_limit: int = DEFAULT_SERIES_LIMIT):
        self.series_limit = series_limit
        self.series = {m.name: {} for m in METRICS}
        self.overflowed = {m.name: 0 for m in METRICS}
        self.services: dict = {}       # service.name -> service resource attributes

    def observe(self, spans) -> None:
        series = self.series
        services = self.services
        limit = self.series_limit
        for span in spans:
            if span.__class__ is TemplatedSpan:
                # Spans of one template share the series but for the service:
                # the template keeps the last process's series (a process's
                # spans of one shape mostly come together).
                template = span[8]
                resource = span[7]
                last = template.red
                if last is not None and last[1] is resource and last[0] is series:
                    slots = last[2]
                    seconds = (span[5] - span[4]) / 1e9
                    slots[bisect_left(last[3], seconds)] += 1
                    slots[-1] += seconds
                    continue
                metric, labels = template.metric or _template_metric(template)
            else:
                template = None
                # _METRIC_OF's choice, written out: a look-up per span
                # made this loop measurably slower on the payload path.
                attrs = dict(span.attributes)
                if _RPC in attrs:
                    metric = RPC_SERVER if span.kind == KIND_SERVER else RPC_CLIENT
                elif _DB in attrs:
                    metric = DB_SERVER if span.kind == KIND_SERVER else DB_CLIENT
                else:
                    metric = HTTP_SERVER if span.kind == KIND_SERVER else HTTP_CLIENT
                labels = tuple(map(attrs.get, metric.attributes))
                resource = span.resource
            service = resource.service_name if resource is not None else "unknown_service"
            key = (service,) + labels
            table = series[metric.name]
            slots = table.get(key)
            if slots is None:
                if len(table) >= limit:
                    # Not kept on the template: each span counts as overflowed.
                    self.overflowed[metric.name] += 1
                    key = overflow_key(metric)
                    slots = table.get(key)
                    template = None
                if slots is None:
                    slots = table[key] = [0] * (len(metric.buckets) + 2)
                if service not in services and resource is not None:
                    services[service] = service_attributes(resource)
            if template is not None:
                template.red = (series, resource, slots, metric.buckets)
            seconds = (span.end_ns - span.start_ns) / 1e9
            slots[bisect_left(metric.buckets, seconds)] += 1
            slots[-1] += seconds

    def snapshot(self) -> dict:
        """Plain copies, picklable across the span workers' sockets."""
        return {"series": {name: {k: list(v) for k, v in table.items()}
                           for name, table in self.series.items()},
                "overflowed": dict(self.overflowed), "services": dict(self.services),
                "limit": self.series_limit}


def merge_red(snapshots: list[dict], series_limit: int = DEFAULT_SERIES_LIMIT) -> dict:
    """One snapshot from several stages' (span workers'), the limit applied
    again to the union so that it bounds the agent, not each worker."""
    total = {"series": {m.name: {} for m in METRICS}, "overflowed": {m.name: 0 for m in METRICS},
             "services": {}, "limit": series_limit}
    by_name = {m.name: m for m in METRICS}
    for snap in snapshots:
        if not snap:
            continue
        total["services"].update(snap["services"])
        for name, count in snap["overflowed"].items():
            total["overflowed"][name] += count
        for name, table in snap["series"].items():
            merged = total["series"][name]
            for key, slots in table.items():
                current = merged.get(key)
                if current is None and len(merged) >= series_limit:
                    fold = overflow_key(by_name[name])
                    if key != fold:     # the stage counted its own overflow already
                        total["overflowed"][name] += sum(slots[:-1])
                    key = fold
                    current = merged.get(key)
                if current is None:
                    merged[key] = list(slots)
                else:
                    merged[key] = [a + b for a, b in zip(current, slots)]
    return total
