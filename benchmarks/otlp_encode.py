"""spans/s of the hand-written OTLP encoder vs the SDK path, same spans.

The SDK figure includes Span -> ReadableSpan conversion, since that is what
the SDK path costs the agent.  Run: .venv/bin/python benchmarks/otlp_encode.py
"""
from __future__ import annotations

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402

from agent.export.otlp_encode import encode_export_request  # noqa: E402
from agent.export.sdk import SdkConverter  # noqa: E402
from agent.spans.resources import ProcessResource  # noqa: E402
from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET, Span, new_span_id, new_trace_id  # noqa: E402,E501

BATCH = 512


def http_spans(count: int, resources: list) -> list:
    """12-attribute HTTP server/client spans with realistic cardinality: a
    handful of routes and peers, unique client ports and query strings."""
    rng = random.Random(1)
    routes = ["/api/users/{id}", "/api/orders", "/healthz", "/api/cart/{id}/items"]
    now = time.time_ns()
    spans = []
    for i in range(count):
        route = rng.choice(routes)
        path = route.replace("{id}", str(rng.randrange(100000)))
        code = rng.choice((200, 200, 200, 201, 404, 500))
        server = i % 2 == 0
        attrs = [
            ("http.request.method", "GET"),
            ("http.response.status_code", code),
            ("url.path", path),
            ("url.query", f"page={rng.randrange(50)}"),
            ("url.scheme", "http"),
            ("http.route", route),
            ("network.protocol.version", "1.1"),
            ("server.address", "api.internal"),
            ("server.port", 8080),
            ("client.address" if server else "network.peer.address", f"10.0.{i % 7}.{i % 200}"),
            ("client.port" if server else "network.peer.port", 30000 + rng.randrange(30000)),
            ("user_agent.original", "curl/8.5.0"),
        ]
        start = now + i * 1000
        spans.append(Span(
            new_trace_id(), new_span_id(), new_span_id() if i % 3 else b"",
            f"GET {route}", KIND_SERVER if server else KIND_CLIENT,
            start, start + rng.randrange(10_000, 50_000_000), attrs, resources[i % len(resources)],
            status_code=STATUS_ERROR if code >= 500 else STATUS_UNSET))
    return spans


def _resources(n: int) -> list:
    return [ProcessResource(1000 + i, [
        ("service.name", f"svc-{i}"), ("process.pid", 1000 + i),
        ("process.executable.name", "python3"), ("host.name", "node-1"),
        ("telemetry.distro.name", "otel-ebpf"), ("telemetry.distro.version", "0.1.0"),
    ]) for i in range(n)]


def _rate(fn, batches: list, min_seconds: float) -> float:
    spans = 0
    start = time.perf_counter()
    while True:
        for batch in batches:
            fn(batch)
            spans += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return spans / elapsed


def main() -> None:
    spans = http_spans(BATCH * 8, _resources(4))
    batches = [spans[i:i + BATCH] for i in range(0, len(spans), BATCH)]
    converter = SdkConverter()

    def sdk(batch):
        encode_spans([converter.convert(s) for s in batch]).SerializeToString()

    fast = _rate(encode_export_request, batches, 2.0)
    slow = _rate(sdk, batches, 2.0)
    print(f"12-attribute HTTP spans, batches of {BATCH}")
    print(f"  fast encoder: {fast:12,.0f} spans/s  ({1e6 / fast:7.2f} us/span)")
    print(f"  SDK encoder:  {slow:12,.0f} spans/s  ({1e6 / slow:7.2f} us/span)")
    print(f"  ratio:        {fast / slow:12.1f}x")


if __name__ == "__main__":
    main()
