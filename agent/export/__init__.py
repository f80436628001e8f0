"""Span sinks: fast OTLP (http/protobuf, grpc), the SDK reference path,
console, and a discarding sink; BatchExporter (agent.export.batch) drives them."""
from __future__ import annotations

import os

from agent.export.otlp import (FAILED, RETRYABLE, SUCCESS, NullSink, OtlpGrpcSink,
                               OtlpHttpSink, endpoint_address, resolve_config)

__all__ = ["SUCCESS", "RETRYABLE", "FAILED", "create_sink", "describe_sink", "exporter_endpoint"]

EXPORTERS = ("auto", "console", "otlp", "none")
OTLP_IMPLS = ("fast", "sdk")
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _otlp_configured(environ) -> bool:
    return any(environ.get(name, "").strip() for name in _ENDPOINT_VARS)


def _resolve_exporter(exporter: str, otlp_impl: str, environ) -> str:
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is invalid; allowed: {', '.join(EXPORTERS)}")
    if otlp_impl not in OTLP_IMPLS:
        raise ValueError(f"otlp_impl={otlp_impl!r} is invalid; allowed: {', '.join(OTLP_IMPLS)}")
    if exporter == "auto":
        return "otlp" if _otlp_configured(environ) else "console"
    return exporter


def describe_sink(exporter: str, otlp_impl: str = "fast", environ=os.environ) -> str:
    """What create_sink would build, validating every setting, without
    creating anything: the main process's stage makes the one it uses."""
    exporter = _resolve_exporter(exporter, otlp_impl, environ)
    if exporter != "otlp":
        return exporter
    config = resolve_config(environ)
    return f"otlp {config.protocol} {config.endpoint} ({otlp_impl})"


def create_sink(exporter: str, otlp_impl: str = "fast", environ=os.environ,
                console_stream=None):
    """exporter: auto (OTLP when an OTLP endpoint variable is set, else
    console), console, otlp or none; otlp_impl: fast or sdk."""
    exporter = _resolve_exporter(exporter, otlp_impl, environ)
    if exporter == "console":
        from agent.export.console import ConsoleSink
        return ConsoleSink(console_stream)
    if exporter == "none":
        return NullSink()
    config = resolve_config(environ)   # validates every variable up front
    if otlp_impl == "sdk":
        from agent.export.sdk import SdkOtlpSink
        return SdkOtlpSink(environ)
    if config.protocol == "grpc":
        return OtlpGrpcSink(config=config)
    return OtlpHttpSink(config=config)


def exporter_endpoint(environ=os.environ, include_default: bool = False):
    """(host, port) the OTLP exporter sends to, so the agent can leave its
    own export traffic untraced; None when no endpoint variable is set
    (unless include_default, for exporter=otlp on the default endpoint)."""
    if not include_default and not _otlp_configured(environ):
        return None
    config = resolve_config(environ)
    return endpoint_address(config.endpoint, 4317 if config.protocol == "grpc" else 4318)
