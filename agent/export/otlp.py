"""OTLP sinks sending requests built by agent.export.otlp_encode.

Configuration follows the OpenTelemetry exporter variables; the signal-specific
OTEL_EXPORTER_OTLP_TRACES_* form wins over the generic one.  A sink's
export(spans) returns SUCCESS, RETRYABLE (worth trying again later, per the
OTLP spec's retryable responses) or FAILED; retrying is the batch exporter's job.
"""
from __future__ import annotations

import gzip
import http.client
import os
import select
import ssl
import urllib.parse
from dataclasses import dataclass

from agent.export.otlp_encode import encode_export_request

SUCCESS = "success"
RETRYABLE = "retryable"
FAILED = "failed"

PROTOCOLS = ("http/protobuf", "grpc")
_RETRYABLE_HTTP = frozenset((429, 502, 503, 504))
_DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
_DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
_GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _setting(environ, name: str, signal: str = "traces") -> tuple[str, str | None]:
    """(variable actually used, its value): the signal-specific variable
    (OTEL_EXPORTER_OTLP_TRACES_*, _METRICS_*) first, then the generic one."""
    specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}"
    value = environ.get(specific)
    if value is not None and value.strip():
        return specific, value.strip()
    generic = "OTEL_EXPORTER_OTLP_" + name
    value = environ.get(generic)
    return generic, value.strip() if value is not None and value.strip() else None


def parse_headers(variable: str, text: str) -> list[tuple[str, str]]:
    """W3C-baggage-like `k1=v1,k2=v2` with url-encoded keys and values."""
    headers = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = urllib.parse.unquote(key).strip()
        if not sep or not key:
            raise ValueError(f"{variable}: expected a comma-separated list of key=value, "
                             f"got {item.strip()!r}")
        headers.append((key, urllib.parse.unquote(value).strip()))
    return headers


@dataclass
class OtlpConfig:
    protocol: str
    endpoint: str          # as configured (generic endpoint before /v1/traces)
    url: str               # http: full URL to POST to; grpc: same as endpoint
    headers: list
    gzip: bool
    timeout_s: float
    certificate: str       # CA bundle path, "" for the system store
    insecure: bool         # grpc: plaintext channel

    @property
    def grpc_target(self) -> str:
        host, port = endpoint_address(self.endpoint, 4317)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def ca_certificate_bytes(self) -> bytes | None:
        if not self.certificate:
            return None
        with open(self.certificate, "rb") as f:
            return f.read()


def endpoint_address(endpoint: str, default_port: int) -> tuple[str, int]:
    """(host, port) of an endpoint URL or bare host:port."""
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else "//" + endpoint)
    port = parsed.port
    if port is None:
        port = {"http": 80, "https": 443}.get(parsed.scheme, default_port)
    return parsed.hostname or "localhost", port


def resolve_config(environ=os.environ, signal: str = "traces") -> OtlpConfig:
    """Read and validate the exporter variables of a signal ("traces" or
    "metrics"); ValueError names the bad one."""
    variable, protocol = _setting(environ, "PROTOCOL", signal)
    protocol = (protocol or "http/protobuf").lower()
    if protocol == "http/json":
        raise ValueError(f"{variable}=http/json is not supported by otel-ebpf; "
                         f"use one of: {', '.join(PROTOCOLS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"{variable}={protocol!r} is invalid; allowed: {', '.join(PROTOCOLS)}")
    grpc = protocol == "grpc"

    specific_name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    specific = environ.get(specific_name, "").strip()
    generic = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if specific:
        endpoint, url = specific, specific
    else:
        endpoint = generic or (_DEFAULT_GRPC_ENDPOINT if grpc else _DEFAULT_HTTP_ENDPOINT)
        url = endpoint if grpc else f"{endpoint.rstrip('/')}/v1/{signal}"
    if not grpc and not url.startswith(("http://", "https://")):
        name = specific_name if specific else "OTEL_EXPORTER_OTLP_ENDPOINT"
        raise ValueError(f"{name}={endpoint!r}: an http/protobuf endpoint must be an "
                         f"http:// or https:// URL")
    try:
        endpoint_address(endpoint, 0)
    except ValueError as exc:
        raise ValueError(f"OTEL_EXPORTER_OTLP(_{signal.upper()})_ENDPOINT={endpoint!r}: "
                         f"{exc}") from None

    variable, text = _setting(environ, "HEADERS", signal)
    headers = parse_headers(variable, text) if text else []

    variable, compression = _setting(environ, "COMPRESSION", signal)
    compression = (compression or "none").lower()
    if compression not in ("gzip", "none"):
        raise ValueError(f"{variable}={compression!r} is invalid; allowed: gzip, none")

    variable, timeout = _setting(environ, "TIMEOUT", signal)
    try:
        timeout_s = float(timeout) / 1000.0 if timeout else 10.0
    except ValueError:
        timeout_s = -1.0
    if not timeout_s > 0:
        raise ValueError(f"{variable}={timeout!r} is invalid; expected a positive "
                         f"number of milliseconds")

    _, certificate = _setting(environ, "CERTIFICATE", signal)
    variable, insecure_text = _setting(environ, "INSECURE", signal)
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if scheme in ("http", "https"):
        insecure = scheme == "http"
    else:
        # Per the spec, INSECURE only matters for a scheme-less gRPC endpoint.
        value = (insecure_text or "false").lower()
        if value not in ("true", "false"):
            raise ValueError(f"{variable}={insecure_text!r} is invalid; allowed: true, false")
        insecure = value == "true"

    return OtlpConfig(protocol=protocol, endpoint=endpoint, url=url, headers=headers,
                      gzip=compression == "gzip", timeout_s=timeout_s,
                      certificate=certificate or "", insecure=insecure)


def _rejected_spans(body: bytes) -> int:
    if not body:
        return 0
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )
    try:
        return ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans
    except Exception:  # a malformed success response still means "accepted"
        return 0


class _SinkCounters:
    """What every sink reports to the agent's metrics."""

    def __init__(self):
        self.bytes_sent = 0
        self.requests_sent = 0
        self.rejected_spans = 0
        self.last_error = ""


class OtlpHttpClient:
    """POSTs OTLP protobuf bodies over one keep-alive connection, with the
    standard library's http.client: urllib3's pool, URL, timeout and
    response handling cost twice the encoding of a 512-span batch per
    request (docs/performance.md, OTLP encoder), and requests.Session
    several times that."""

    def __init__(self, config: OtlpConfig):
        self.config = config
        url = urllib.parse.urlsplit(config.url)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._headers = dict(config.headers)
        self._headers["Content-Type"] = "application/x-protobuf"
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"
        # The system's CAs, or only the configured bundle's.
        self._tls = ssl.create_default_context(cafile=config.certificate or None) \
            if self._https else None
        self._connection: http.client.HTTPConnection | None = None
        self.bytes_sent = 0
        self.last_error = ""

    def send(self, body: bytes, timeout_s: float | None = None) -> tuple[str, bytes]:
        """(SUCCESS, RETRYABLE or FAILED, the response body)."""
        if self.config.gzip:
            # Level 6 costs ~3x level 1 for a few % smaller protobuf.
            body = gzip.compress(body, compresslevel=1)
        timeout = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        try:
            status, data = self._post(body, timeout)
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            self.last_error = f"{type(exc).__name__}: {exc}"
            return RETRYABLE, b""
        self.bytes_sent += len(body)
        if 200 <= status < 300:
            return SUCCESS, data
        self.last_error = f"HTTP {status}"
        return (RETRYABLE if status in _RETRYABLE_HTTP else FAILED), data

    def _post(self, body: bytes, timeout: float) -> tuple[int, bytes]:
        """One request; the caller retries (the batch exporter with backoff
        and a deadline), so there are no retries or redirects here.  The
        timeout bounds each socket operation."""
        connection = self._open(timeout)
        connection.request("POST", self._path, body=body, headers=self._headers)
        response = connection.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        return response.status, data

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is not None and connection.sock is not None:
            # A collector that closed the idle connection (a restart, its
            # idle timeout) left it readable at EOF: reconnect rather than
            # fail a request on it.
            if select.select([connection.sock], [], [], 0)[0]:
                self.close()
                connection = None
            else:
                connection.sock.settimeout(timeout)
        if connection is None:
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                     context=self._tls) if self._https \
                else http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class OtlpHttpSink(_SinkCounters):
    """Spans over OTLP/HTTP protobuf (OtlpHttpClient)."""

    def __init__(self, environ=os.environ, config: OtlpConfig | None = None):
        super().__init__()
        self.config = config or resolve_config(environ)
        self.client = OtlpHttpClient(self.config)

    def export(self, spans, timeout_s: float | None = None) -> str:
        client = self.client
        self.requests_sent += 1
        outcome, data = client.send(encode_export_request(spans), timeout_s)
        self.bytes_sent = client.bytes_sent
        if outcome == SUCCESS:
            self.rejected_spans += _rejected_spans(data)
        else:
            self.last_error = client.last_error
        return outcome

    def shutdown(self) -> None:
        self.client.close()


def _retryable_grpc_codes():
    import grpc

    c = grpc.StatusCode
    # The OTLP spec's retryable gRPC codes.
    return frozenset((c.CANCELLED, c.DEADLINE_EXCEEDED, c.RESOURCE_EXHAUSTED, c.ABORTED,
                      c.OUT_OF_RANGE, c.UNAVAILABLE, c.DATA_LOSS))


class OtlpGrpcSink(_SinkCounters):
    """OTLP/gRPC with the request already serialised: the generic unary call
    passes bytes through untouched (request_serializer=None)."""

    def __init__(self, environ=os.environ, config: OtlpConfig | None = None):
        import grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        super().__init__()
        self._grpc = grpc
        self.config = config or resolve_config(environ)
        target = self.config.grpc_target
        # gRPC's reconnect backoff grows to 120 s by default: export would stay
        # down for minutes after a collector restart.
        options = [("grpc.initial_reconnect_backoff_ms", 250),
                   ("grpc.max_reconnect_backoff_ms", 5000)]
        if self.config.insecure:
            self._channel = grpc.insecure_channel(target, options)
        else:
            credentials = grpc.ssl_channel_credentials(self.config.ca_certificate_bytes())
            self._channel = grpc.secure_channel(target, credentials, options)
        self._call = self._channel.unary_unary(
            _GRPC_METHOD, request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString)
        # gRPC metadata keys must be lowercase.
        self._metadata = tuple((k.lower(), v) for k, v in self.config.headers) or None
        self._compression = grpc.Compression.Gzip if self.config.gzip else None
        self._retryable = _retryable_grpc_codes()

    def export(self, spans, timeout_s: float | None = None) -> str:
        body = encode_export_request(spans)
        timeout = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        self.requests_sent += 1
        try:
            response = self._call(body, timeout=timeout, metadata=self._metadata,
                                  compression=self._compression)
        except self._grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            self.last_error = f"gRPC {code.name if code else 'error'}: " \
                              f"{exc.details() if hasattr(exc, 'details') else exc}"
            return RETRYABLE if code in self._retryable else FAILED
        except ValueError as exc:  # channel closed by shutdown()
            self.last_error = str(exc)
            return FAILED
        self.bytes_sent += len(body)
        self.rejected_spans += response.partial_success.rejected_spans
        return SUCCESS

    def shutdown(self) -> None:
        self._channel.close()


class NullSink(_SinkCounters):
    """Counts and discards: measures the pipeline without any export cost."""

    def __init__(self):
        super().__init__()
        self.spans_discarded = 0

    def export(self, spans, timeout_s: float | None = None) -> str:
        self.spans_discarded += len(spans)
        return SUCCESS

    def shutdown(self) -> None:
        pass
