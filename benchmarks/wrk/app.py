"""The Python WSGI service of the SDK comparison (benchmarks/wrk/run.py).

Every path answers 200 with a short body: the work a request costs is the
server's and the tracer's, nothing else.  Served by gunicorn:

    gunicorn -w 2 -k gthread --threads 16 --chdir benchmarks/wrk app:app

BENCH_OTEL_SDK=1 wraps the app in the OpenTelemetry WSGI middleware with the
SDK's TracerProvider, BatchSpanProcessor and OTLP/HTTP exporter (configured
by the standard OTEL_EXPORTER_OTLP_* / OTEL_BSP_* variables), set up in each
worker after the fork: gunicorn imports this module in every worker unless
--preload is given.
"""
from __future__ import annotations

import os

BODY = b"ok\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def plain_app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]


def _instrumented(app):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "bench-wsgi")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return OpenTelemetryMiddleware(app, tracer_provider=provider)


app = _instrumented(plain_app) if os.environ.get("BENCH_OTEL_SDK") == "1" else plain_app
