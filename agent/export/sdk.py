"""The standard OpenTelemetry SDK export path, kept as a reference.

Spans are converted to ReadableSpan and handed to the SDK's OTLPSpanExporter.
It is correct but several times slower than agent.export.otlp
(docs/performance.md); the tests use it as the oracle for the hand-written
encoder, and `--otlp-impl sdk` selects it.
"""
from __future__ import annotations

import os

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from agent import DISTRO_NAME, __version__
from agent.export.otlp import FAILED, SUCCESS, resolve_config

# OTLP kind numbers (agent.spans.model) -> API SpanKind, whose values are one lower.
_KINDS = {kind.value + 1: kind for kind in SpanKind}
_STATUS = {code.value: code for code in StatusCode}
_SCOPE = InstrumentationScope(DISTRO_NAME, __version__)
_RESOURCE_CACHE_MAX = 16384


class SdkConverter:
    """Span -> ReadableSpan, with one SDK Resource per ProcessResource."""

    def __init__(self):
        # Keyed by the ProcessResource object itself (identity hash); slotted
        # without __weakref__, so a bounded dict instead of a weak one.
        self._resources: dict = {}

    def resource(self, process_resource) -> Resource:
        resource = self._resources.get(process_resource)
        if resource is None:
            if len(self._resources) >= _RESOURCE_CACHE_MAX:
                self._resources.clear()
            resource = self._resources[process_resource] = Resource(
                dict(process_resource.attributes))
        return resource

    def convert(self, span) -> ReadableSpan:
        trace_id = int.from_bytes(span.trace_id, "big")
        trace_state = TraceState.from_header([span.trace_state]) if span.trace_state else None
        context = SpanContext(trace_id, int.from_bytes(span.span_id, "big"), is_remote=False,
                              trace_flags=TraceFlags(span.trace_flags), trace_state=trace_state)
        parent = None
        if span.parent_span_id:
            # The parent id was read from the wire: it belongs to another process.
            parent = SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"),
                                 is_remote=True, trace_flags=TraceFlags(span.trace_flags))
        return ReadableSpan(
            name=span.name,
            context=context,
            parent=parent,
            resource=self.resource(span.resource),
            attributes=dict(span.attributes),
            kind=_KINDS[span.kind],
            status=Status(_STATUS[span.status_code], span.status_message or None),
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=_SCOPE,
        )


def build_sdk_exporter(environ=os.environ):
    """The SDK's OTLPSpanExporter configured from `environ` (the SDK itself
    reads os.environ, so every setting is resolved here and passed in)."""
    config = resolve_config(environ)
    if config.protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        credentials = None
        if not config.insecure:
            credentials = grpc.ssl_channel_credentials(config.ca_certificate_bytes())
        return OTLPSpanExporter(
            endpoint=config.grpc_target, insecure=config.insecure, credentials=credentials,
            headers=dict(config.headers), timeout=config.timeout_s,
            compression=grpc.Compression.Gzip if config.gzip else grpc.Compression.NoCompression,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=config.url, certificate_file=config.certificate or None,
        headers=dict(config.headers), timeout=config.timeout_s,
        compression=Compression.Gzip if config.gzip else Compression.NoCompression,
    )


class SdkOtlpSink:
    """Sink interface over the SDK exporter.  The SDK retries internally, so
    a failure it reports is final."""

    def __init__(self, environ=os.environ, exporter=None):
        self._converter = SdkConverter()
        self._exporter = exporter if exporter is not None else build_sdk_exporter(environ)
        self.bytes_sent = 0  # not observable through the SDK exporter
        self.requests_sent = 0
        self.rejected_spans = 0

    def convert(self, spans) -> list:
        convert = self._converter.convert
        return [convert(span) for span in spans]

    def export(self, spans, timeout_s: float | None = None) -> str:
        self.requests_sent += 1
        result = self._exporter.export(self.convert(spans))
        return SUCCESS if result is SpanExportResult.SUCCESS else FAILED

    def shutdown(self) -> None:
        self._exporter.shutdown()
