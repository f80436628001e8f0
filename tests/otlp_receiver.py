"""An OTLP trace (and metrics) receiver for tests: http/protobuf (gzip too) or gRPC on
127.0.0.1, decoding every span into a flat ReceivedSpan view.

    receiver = OtlpReceiver(); receiver.start("grpc")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           "OTEL_EXPORTER_OTLP_PROTOCOL": receiver.protocol}
    ...
    receiver.wait_for(lambda spans: len(spans) >= 3)
    receiver.stop(); receiver.start("grpc")   # same port: collector restart

`fail_with` makes it answer every request with an error (an HTTP status or
a grpc.StatusCode) and `reject_spans` reports a partial success.
"""
from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import TIME_SCALE, free_port
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def any_value(value):
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes(key_values) -> dict:
    return {kv.key: any_value(kv.value) for kv in key_values}


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str          # "" for a root span
    attributes: dict
    resource: dict
    scope_name: str
    scope_version: str
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    flags: int
    trace_state: str
    proto: object = field(repr=False)


@dataclass
class ReceivedRequest:
    headers: dict                # lowercased names
    body_size: int               # as received (compressed if it was)
    span_count: int


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list:
    spans = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(ReceivedSpan(
                    name=s.name, kind=s.kind, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(), attributes=attributes(s.attributes),
                    resource=resource, scope_name=ss.scope.name, scope_version=ss.scope.version,
                    start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                    status_code=s.status.code, status_message=s.status.message, flags=s.flags,
                    trace_state=s.trace_state, proto=s))
    return spans


class OtlpReceiver:
    """keep_spans=False only counts spans per process.executable.name in
    `counts`, without decoding spans into Python objects: cheap enough for
    load tests at tens of thousands of spans/s."""

    def __init__(self, keep_spans: bool = True, store_bodies: bool = False):
        self.keep_spans = keep_spans
        # store_bodies: trace requests are kept as received and answered at
        # once, decoded only by decode_stored(): a receiver that decodes
        # while a saturating load runs takes CPU from what is measured.
        self.stored_bodies: list | None = [] if store_bodies else None
        self.tls = None            # (certificate, key) files: OTLP/HTTP over TLS
        self.counts: dict[str, int] = {}
        self.spans: list[ReceivedSpan] = []
        self.metric_requests: list = []      # ExportMetricsServiceRequest, as received
        self.requests: list[ReceivedRequest] = []
        self.fail_with = None
        self.hold_s = 0.0          # a stalled collector: each request waits this long
        self.reject_spans = 0
        self.protocol = None
        self.port = None
        self._cond = threading.Condition()
        self._http = None
        self._http_thread = None
        self._connections = set()
        self._grpc = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict:
        """Exporter variables pointing at this receiver."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if self.protocol == "grpc" else "http/protobuf"}

    def _record(self, request, headers: dict, body_size: int) -> int:
        """Store a decoded request; returns the rejected count to report."""
        if not self.keep_spans:
            return self._count(request, headers, body_size)
        spans = flatten(request)
        with self._cond:
            self.requests.append(ReceivedRequest(headers, body_size, len(spans)))
            accepted = spans[:len(spans) - min(self.reject_spans, len(spans))]
            self.spans.extend(accepted)
            self._cond.notify_all()
        return len(spans) - len(accepted)

    def decode_stored(self) -> list:
        """The spans of the stored trace requests (store_bodies=True)."""
        spans = []
        for encoding, body in self.stored_bodies:
            if encoding == "gzip":
                body = gzip.decompress(body)
            spans.extend(flatten(trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
        return spans

    def _count(self, request, headers: dict, body_size: int) -> int:
        counts: dict = {}
        total = 0
        for rs in request.resource_spans:
            name = next((kv.value.string_value for kv in rs.resource.attributes
                         if kv.key == "process.executable.name"), "")
            spans = sum(len(ss.spans) for ss in rs.scope_spans)
            counts[name] = counts.get(name, 0) + spans
            total += spans
        with self._cond:
            self.requests.append(ReceivedRequest(headers, body_size, total))
            for key, value in counts.items():
                self.counts[key] = self.counts.get(key, 0) + value
            self._cond.notify_all()
        return 0

    def _record_metrics(self, request) -> None:
        with self._cond:
            self.metric_requests.append(request)
            self._cond.notify_all()

    def histogram_points(self, metric_name: str) -> list[tuple[dict, dict, object]]:
        """(resource attributes, point attributes, HistogramDataPoint) of the
        last metric export request that carried metric_name (cumulative)."""
        with self._cond:
            requests = list(self.metric_requests)
        for request in reversed(requests):
            points = []
            for rm in request.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == metric_name:
                            points.extend((resource, attributes(p.attributes), p)
                                          for p in metric.histogram.data_points)
            if points:
                return points
        return []

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """Wait until predicate(self.spans) holds; False on timeout."""
        deadline = time.monotonic() + timeout * TIME_SCALE
        with self._cond:
            while not predicate(self.spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def start(self, protocol: str = "http") -> "OtlpReceiver":
        if protocol not in ("http", "grpc"):
            raise ValueError("protocol must be 'http' or 'grpc'")
        self.protocol = protocol
        if self.port is None:
            self.port = free_port()
        if protocol == "http":
            self._start_http()
        else:
            self._start_grpc()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            # A real outage also breaks the exporter's keep-alive connection.
            with self._cond:
                for connection in list(self._connections):
                    try:
                        connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._http_thread.join()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None

    # --- http ------------------------------------------------------------

    def _start_http(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # keep-alive, like a real collector

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with receiver._cond:
                    receiver._connections.add(self.connection)

            def finish(self):
                super().finish()
                with receiver._cond:
                    receiver._connections.discard(self.connection)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.fail_with is not None:
                    return self._reply(receiver.fail_with, b"")
                if self.path == "/v1/metrics":
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    receiver._record_metrics(
                        metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                    return self._reply(
                        200, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString())
                if self.path != "/v1/traces":
                    return self._reply(404, b"")
                if receiver.hold_s:
                    time.sleep(receiver.hold_s)
                if receiver.stored_bodies is not None:
                    receiver.stored_bodies.append((self.headers.get("Content-Encoding"), body))
                    return self._reply(200, b"")
                size = len(body)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                rejected = receiver._record(request, headers, size)
                response = trace_service_pb2.ExportTraceServiceResponse()
                if rejected:
                    response.partial_success.rejected_spans = rejected
                self._reply(200, response.SerializeToString())

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._http.socket = context.wrap_socket(self._http.socket, server_side=True)
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(target=self._http.serve_forever,
                                             kwargs={"poll_interval": 0.05}, daemon=True)
        self._http_thread.start()

    # --- grpc ------------------------------------------------------------

    def _start_grpc(self) -> None:
        import grpc

        receiver = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                if receiver.fail_with is not None:
                    context.abort(receiver.fail_with, "injected failure")
                headers = {k: v for k, v in context.invocation_metadata()}
                rejected = receiver._record(request, headers, request.ByteSize())
                response = trace_service_pb2.ExportTraceServiceResponse()
                if rejected:
                    response.partial_success.rejected_spans = rejected
                return response

        class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                receiver._record_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(),
                                                                      self._grpc)
        self._grpc.add_insecure_port(f"127.0.0.1:{self.port}")
        self._grpc.start()
