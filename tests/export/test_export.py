"""Sinks against a real OTLP receiver, exporter configuration, BatchExporter
behaviour and the console format."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402
import pytest  # noqa: E402

from agent.export import create_sink, exporter_endpoint  # noqa: E402
from agent.export.batch import BatchExporter  # noqa: E402
from agent.export.console import ConsoleSink  # noqa: E402
from agent.export.otlp import (FAILED, RETRYABLE, SUCCESS, NullSink, OtlpGrpcSink,  # noqa: E402
                               OtlpHttpSink, resolve_config)
from agent.export.sdk import SdkOtlpSink  # noqa: E402
from agent.spans.resources import ProcessResource  # noqa: E402
from agent.spans.model import (KIND_CLIENT, KIND_SERVER, STATUS_ERROR, Span, new_span_id,  # noqa: E402
                         new_trace_id)
from otlp_receiver import OtlpReceiver  # noqa: E402
from wake_ups import wake_ups, wake_ups_once_asleep  # noqa: E402

RESOURCE = ProcessResource(7, [("service.name", "checkout"), ("process.pid", 7)])


def make_spans(n, resource=RESOURCE, prefix="op"):
    start = 1_700_000_000_000_000_000
    return [Span(new_trace_id(), new_span_id(), new_span_id() if i % 2 else b"",
                 f"{prefix}{i}", KIND_SERVER, start + i, start + i + 2_500_000,
                 [("http.request.method", "GET"), ("http.response.status_code", 200),
                  ("url.path", f"/items/{i}"), ("server.port", 8080)], resource)
            for i in range(n)]


@pytest.fixture(params=["http", "grpc"])
def receiver(request):
    r = OtlpReceiver().start(request.param)
    yield r
    r.stop()


# --- sinks against the receiver ------------------------------------------

@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_fast_sink_delivers(receiver, compression):
    env = dict(receiver.env, OTEL_EXPORTER_OTLP_COMPRESSION=compression,
               OTEL_EXPORTER_OTLP_HEADERS="x-api-key=s%3Dcret,x-tenant=acme%20corp")
    sink = create_sink("auto", environ=env)
    assert isinstance(sink, OtlpGrpcSink if receiver.protocol == "grpc" else OtlpHttpSink)
    spans = make_spans(20)
    assert sink.export(spans) == SUCCESS
    assert receiver.wait_for(lambda got: len(got) == 20)
    sink.shutdown()
    got = {s.span_id: s for s in receiver.spans}
    for span in spans:
        r = got[span.span_id.hex()]
        assert r.name == span.name and r.kind == KIND_SERVER
        assert r.trace_id == span.trace_id.hex()
        assert r.parent_span_id == span.parent_span_id.hex()
        assert r.attributes == dict(span.attributes)
        assert r.resource == {"service.name": "checkout", "process.pid": 7}
        assert r.scope_name == "otel-ebpf"
        assert (r.start_ns, r.end_ns) == (span.start_ns, span.end_ns)
    (request,) = receiver.requests
    assert request.headers["x-api-key"] == "s=cret"
    assert request.headers["x-tenant"] == "acme corp"
    if receiver.protocol == "http":
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.headers.get("content-encoding") == ("gzip" if compression == "gzip" else None)
        assert sink.bytes_sent == request.body_size
    else:
        assert sink.bytes_sent > 0
    assert sink.requests_sent == 1


def test_http_sink_over_tls_trusts_the_configured_certificate(tmp_path):
    """OTEL_EXPORTER_OTLP_CERTIFICATE names the CA that signs the
    collector's certificate; without it the system store decides, and a
    self-signed collector is refused (retryable, with the reason kept)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (make setup installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    r = OtlpReceiver()
    r.tls = (str(cert), str(key))
    r.start("http")
    try:
        env = dict(r.env, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
        untrusted = OtlpHttpSink(environ=env)
        assert untrusted.export(make_spans(3)) == RETRYABLE
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.last_error
        trusted = OtlpHttpSink(environ=dict(env, OTEL_EXPORTER_OTLP_CERTIFICATE=str(cert)))
        assert trusted.export(make_spans(3)) == SUCCESS
        assert r.wait_for(lambda got: len(got) == 3)
        untrusted.shutdown()
        trusted.shutdown()
    finally:
        r.stop()


def test_http_sink_keeps_one_connection_and_replaces_one_the_collector_closed():
    r = OtlpReceiver().start("http")
    sink = OtlpHttpSink(environ=dict(r.env, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"))
    try:
        assert sink.export(make_spans(2)) == SUCCESS
        assert sink.export(make_spans(2)) == SUCCESS
        assert r.wait_for(lambda got: len(got) == 4)
        assert len(r._connections) == 1          # keep-alive: one connection for both
        r.stop()
        r.start("http")                          # a restart closed the idle connection
        assert sink.export(make_spans(2)) == SUCCESS, sink.last_error
        assert r.wait_for(lambda got: len(got) == 6)
    finally:
        sink.shutdown()
        r.stop()


def test_traces_endpoint_used_as_is():
    r = OtlpReceiver().start("http")
    try:
        sink = create_sink("otlp", environ={
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": r.endpoint + "/v1/traces",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
        assert sink.export(make_spans(1)) == SUCCESS
        assert len(r.spans) == 1
    finally:
        r.stop()


def test_partial_success_counted(receiver):
    receiver.reject_spans = 3
    sink = create_sink("otlp", environ=receiver.env)
    assert sink.export(make_spans(10)) == SUCCESS
    assert sink.rejected_spans == 3
    assert len(receiver.spans) == 7
    sink.shutdown()


@pytest.mark.parametrize("protocol,failure,expected", [
    ("http", 503, RETRYABLE), ("http", 429, RETRYABLE), ("http", 502, RETRYABLE),
    ("http", 400, FAILED), ("http", 500, FAILED),
    ("grpc", grpc.StatusCode.UNAVAILABLE, RETRYABLE),
    ("grpc", grpc.StatusCode.RESOURCE_EXHAUSTED, RETRYABLE),
    ("grpc", grpc.StatusCode.ABORTED, RETRYABLE),
    ("grpc", grpc.StatusCode.INVALID_ARGUMENT, FAILED),
    ("grpc", grpc.StatusCode.PERMISSION_DENIED, FAILED),
])
def test_error_classification(protocol, failure, expected):
    r = OtlpReceiver().start(protocol)
    r.fail_with = failure
    try:
        sink = create_sink("otlp", environ=r.env)
        assert sink.export(make_spans(2)) == expected
        assert sink.last_error
        sink.shutdown()
    finally:
        r.stop()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_connection_refused_is_retryable(protocol):
    port = OtlpReceiver().start("http")
    port.stop()   # a port nobody listens on any more
    sink = create_sink("otlp", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": port.endpoint,
                                        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                                        "OTEL_EXPORTER_OTLP_TIMEOUT": "500"})
    assert sink.export(make_spans(1)) == RETRYABLE
    sink.shutdown()


def test_sdk_sink_delivers_the_same_spans(receiver):
    spans = make_spans(6)
    sdk = create_sink("otlp", otlp_impl="sdk", environ=receiver.env)
    assert isinstance(sdk, SdkOtlpSink)
    assert sdk.export(spans) == SUCCESS
    sdk.shutdown()
    via_sdk = sorted(receiver.spans, key=lambda s: s.span_id)
    receiver.spans.clear()
    fast = create_sink("otlp", environ=receiver.env)
    assert fast.export(spans) == SUCCESS
    fast.shutdown()
    via_fast = sorted(receiver.spans, key=lambda s: s.span_id)
    assert len(via_fast) == len(via_sdk) == 6
    for a, b in zip(via_fast, via_sdk):
        # The SDK leaves W3C trace flags out of Span.flags.
        assert (a.flags & ~0xFF) == b.flags
        a.proto.flags = b.proto.flags
        assert a.proto == b.proto
        assert a.resource == b.resource


def test_null_sink_counts():
    sink = create_sink("none", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"})
    assert isinstance(sink, NullSink)
    assert sink.export(make_spans(5)) == SUCCESS
    assert sink.spans_discarded == 5


# --- configuration -----------------------------------------------------------

def test_config_defaults():
    c = resolve_config({})
    assert (c.protocol, c.url, c.gzip, c.timeout_s, c.headers) == \
        ("http/protobuf", "http://localhost:4318/v1/traces", False, 10.0, [])
    c = resolve_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert c.grpc_target == "localhost:4317" and c.insecure


@pytest.mark.parametrize("endpoint,url", [
    ("http://collector:4318", "http://collector:4318/v1/traces"),
    ("http://collector:4318/", "http://collector:4318/v1/traces"),
    ("https://collector/otlp", "https://collector/otlp/v1/traces"),
])
def test_generic_endpoint_gets_signal_path(endpoint, url):
    assert resolve_config({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}).url == url


def test_traces_variables_win():
    c = resolve_config({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://specific:9999/custom",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=2",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
    })
    assert c.url == "http://specific:9999/custom"
    assert c.protocol == "http/protobuf"
    assert c.headers == [("b", "2")]
    assert c.gzip and c.timeout_s == 2.5


def test_grpc_security_from_scheme_or_insecure():
    grpc_env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert resolve_config({**grpc_env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).insecure
    assert not resolve_config({**grpc_env, "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}).insecure
    bare = {**grpc_env, "OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"}
    assert not resolve_config(bare).insecure
    c = resolve_config({**bare, "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"})
    assert c.insecure and c.grpc_target == "c:4317"


@pytest.mark.parametrize("env,variable", [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "c:1",
      "OTEL_EXPORTER_OTLP_INSECURE": "maybe"}, "OTEL_EXPORTER_OTLP_INSECURE"),
])
def test_bad_config_names_the_variable(env, variable):
    with pytest.raises(ValueError, match=variable):
        create_sink("otlp", environ=env)


def test_http_json_says_not_supported():
    with pytest.raises(ValueError, match="not supported"):
        resolve_config({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_create_sink_choices():
    assert isinstance(create_sink("auto", environ={}), ConsoleSink)
    assert isinstance(create_sink("auto", environ={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                                                   "http://c:4318/v1/traces"}), OtlpHttpSink)
    assert isinstance(create_sink("console", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}),
                      ConsoleSink)
    assert isinstance(create_sink("otlp", environ={}), OtlpHttpSink)
    with pytest.raises(ValueError, match="auto, console, otlp, none"):
        create_sink("jaeger", environ={})
    with pytest.raises(ValueError, match="fast, sdk"):
        create_sink("otlp", otlp_impl="rust", environ={})


def test_exporter_endpoint():
    assert exporter_endpoint({}) is None
    assert exporter_endpoint({}, include_default=True) == ("localhost", 4318)
    assert exporter_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://10.1.2.3:4318"}) == \
        ("10.1.2.3", 4318)
    assert exporter_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otel.example/v1/traces"}) \
        == ("otel.example", 443)
    assert exporter_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",
                              "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == ("collector", 4317)


# --- batch exporter ------------------------------------------------------------

class BlockingSink(NullSink):
    """Holds every export until released; records batch sizes."""

    def __init__(self, result=SUCCESS):
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches = []
        self.result = result
        self.shut = False

    def export(self, spans, timeout_s=None):
        self.entered.set()
        self.release.wait()
        self.batches.append(len(spans))
        return self.result

    def shutdown(self):
        self.shut = True
        self.release.set()


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_batch_full_exports_before_schedule_delay():
    sink = BlockingSink()
    sink.release.set()
    exporter = BatchExporter(sink, max_queue_size=100, max_batch=10, schedule_delay_s=60)
    exporter.submit(make_spans(25))
    assert wait_until(lambda: exporter.spans_exported == 20)
    assert sink.batches == [10, 10]
    assert exporter.queue_depth() == 5
    exporter.shutdown(2.0)
    assert exporter.spans_exported == 25 and exporter.spans_failed == 0


def test_schedule_delay_flushes_partial_batch():
    sink = NullSink()
    observed = []
    exporter = BatchExporter(sink, max_batch=512, schedule_delay_s=0.1,
                             observe_export_seconds=observed.append)
    exporter.submit(make_spans(3))
    assert wait_until(lambda: exporter.spans_exported == 3, timeout=2)
    assert exporter.batches_exported == 1 and len(observed) == 1 and observed[0] >= 0
    exporter.shutdown(1.0)


def test_an_idle_exporter_sleeps_until_spans_come():
    exporter = BatchExporter(NullSink(), max_batch=512, schedule_delay_s=0.02)
    before = wake_ups_once_asleep(exporter._thread)
    time.sleep(0.5)             # 25 schedule delays with nothing queued
    assert wake_ups(exporter._thread) - before <= 2
    started = time.monotonic()
    exporter.submit(make_spans(3))
    assert wait_until(lambda: exporter.spans_exported == 3, timeout=2)
    assert time.monotonic() - started < 0.5
    exporter.shutdown(1.0)


def test_queue_full_drops_are_counted_and_submit_never_blocks():
    sink = BlockingSink()
    exporter = BatchExporter(sink, max_queue_size=50, max_batch=10, schedule_delay_s=0.01)
    exporter.submit(make_spans(10))
    assert sink.entered.wait(2)          # worker is stuck inside export
    t0 = time.monotonic()
    for _ in range(10):
        exporter.submit(make_spans(20))
    assert time.monotonic() - t0 < 0.5
    assert exporter.queue_depth() == 50
    assert exporter.spans_dropped_queue_full == 150
    assert exporter.spans_submitted == 210
    sink.release.set()
    exporter.shutdown(2.0)
    assert exporter.spans_exported == 60
    assert exporter.spans_submitted == (exporter.spans_exported + exporter.spans_failed
                                        + exporter.spans_dropped_queue_full)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_export_resumes_after_collector_restart(protocol):
    receiver = OtlpReceiver().start(protocol)
    env = dict(receiver.env, OTEL_EXPORTER_OTLP_TIMEOUT="500")
    exporter = BatchExporter(create_sink("otlp", environ=env), max_batch=10,
                             schedule_delay_s=0.05, retry_timeout_s=20, max_attempts=50,
                             initial_backoff_s=0.05, max_backoff_s=0.2)
    try:
        exporter.submit(make_spans(5, prefix="before"))
        # Stopping while the response is in flight would (rightly) make the
        # exporter resend, so let the first batch settle.
        assert wait_until(lambda: exporter.spans_exported == 5)
        receiver.stop()
        exporter.submit(make_spans(5, prefix="during"))
        assert wait_until(lambda: exporter.export_errors >= 2)
        receiver.start(protocol)    # same port
        exporter.submit(make_spans(5, prefix="after"))
        assert receiver.wait_for(lambda s: len({x.span_id for x in s}) == 15, timeout=10)
        names = {s.name for s in receiver.spans}
        assert {"during0", "after4"} <= names
        assert wait_until(lambda: exporter.spans_exported == 15)
        assert exporter.spans_failed == 0
    finally:
        exporter.shutdown(1.0)
        receiver.stop()


def test_retries_give_up_and_count_failed():
    sink = NullSink()
    sink.export = lambda spans, timeout_s=None: RETRYABLE
    exporter = BatchExporter(sink, max_batch=4, schedule_delay_s=0.01, max_attempts=3,
                             initial_backoff_s=0.01, max_backoff_s=0.02)
    exporter.submit(make_spans(4))
    assert wait_until(lambda: exporter.spans_failed == 4)
    assert exporter.export_errors == 3 and exporter.spans_exported == 0
    exporter.shutdown(1.0)


def test_non_retryable_fails_at_once():
    calls = []
    sink = NullSink()
    sink.export = lambda spans, timeout_s=None: calls.append(1) or FAILED
    exporter = BatchExporter(sink, max_batch=2, schedule_delay_s=0.01)
    exporter.submit(make_spans(2))
    assert wait_until(lambda: exporter.spans_failed == 2)
    assert len(calls) == 1
    exporter.shutdown(1.0)


def test_sink_exception_does_not_kill_the_worker():
    sink = NullSink()
    results = iter([RuntimeError("boom")])

    def export(spans, timeout_s=None):
        error = next(results, None)
        if error:
            raise error
        return SUCCESS
    sink.export = export
    exporter = BatchExporter(sink, max_batch=2, schedule_delay_s=0.01)
    exporter.submit(make_spans(2))
    assert wait_until(lambda: exporter.spans_failed == 2)
    exporter.submit(make_spans(2))
    assert wait_until(lambda: exporter.spans_exported == 2)
    exporter.shutdown(1.0)


def test_shutdown_flushes_within_deadline():
    sink = NullSink()
    exporter = BatchExporter(sink, max_batch=100, schedule_delay_s=60)
    exporter.submit(make_spans(250))
    exporter.shutdown(2.0)
    assert sink.spans_discarded == 250 and exporter.spans_exported == 250
    assert exporter.queue_depth() == 0


def test_shutdown_deadline_respected_with_hung_collector():
    sink = BlockingSink()
    exporter = BatchExporter(sink, max_queue_size=1000, max_batch=100, schedule_delay_s=0.01)
    exporter.submit(make_spans(100))
    assert sink.entered.wait(2)
    exporter.submit(make_spans(300))
    t0 = time.monotonic()
    exporter.shutdown(0.3)
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 0.8
    assert exporter.spans_failed == 400 and exporter.spans_exported == 0
    assert sink.shut
    exporter.submit(make_spans(5))   # late spans after shutdown are counted, not queued
    assert exporter.spans_failed == 405 and exporter.queue_depth() == 0
    time.sleep(0.05)  # the released worker must not count its batch a second time
    assert exporter.spans_exported == 0


def test_shutdown_deadline_with_real_unreachable_collector():
    receiver = OtlpReceiver().start("http")
    receiver.fail_with = 503
    exporter = BatchExporter(create_sink("otlp", environ=receiver.env), max_batch=10,
                             schedule_delay_s=0.01, initial_backoff_s=0.2)
    try:
        exporter.submit(make_spans(30))
        assert wait_until(lambda: exporter.export_errors >= 1)
        t0 = time.monotonic()
        exporter.shutdown(0.5)
        assert time.monotonic() - t0 < 1.0
        assert exporter.spans_failed == 30
    finally:
        receiver.stop()


def test_bsp_environment():
    env = {"OTEL_BSP_MAX_QUEUE_SIZE": "64", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "16",
           "OTEL_BSP_SCHEDULE_DELAY": "250"}
    exporter = BatchExporter(NullSink(), environ=env)
    assert (exporter.max_queue_size, exporter.max_batch, exporter.schedule_delay_s) == (64, 16, 0.25)
    exporter.shutdown(0.5)
    defaults = BatchExporter(NullSink(), environ={})
    assert (defaults.max_queue_size, defaults.max_batch, defaults.schedule_delay_s) == (8192, 512, 1.0)
    defaults.shutdown(0.5)
    with pytest.raises(ValueError, match="OTEL_BSP_MAX_QUEUE_SIZE"):
        BatchExporter(NullSink(), environ={"OTEL_BSP_MAX_QUEUE_SIZE": "lots"})


# --- console -------------------------------------------------------------------

def test_console_line_format():
    stream = io.StringIO()
    sink = create_sink("console", environ={}, console_stream=stream)
    root = Span(bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"), bytes.fromhex("00f067aa0ba902b7"),
                b"", "GET /api/orders", KIND_SERVER, 1_700_000_000_123_000_000,
                1_700_000_000_135_407_000,
                [("http.request.method", "GET"), ("url.path", "/api/orders"),
                 ("http.response.status_code", 503), ("client.address", "10.0.0.7")],
                RESOURCE, status_code=STATUS_ERROR, status_message="upstream down")
    child = Span(root.trace_id, bytes.fromhex("1111111111111111"), root.span_id, "SELECT",
                 KIND_CLIENT, root.start_ns, root.start_ns + 500,
                 [("url.full", "http://db/\x1b[31mred\nx"), ("server.address", "db"),
                  ("server.port", 5432)], RESOURCE)
    assert sink.export([root, child]) == SUCCESS
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = lines
    assert " checkout " in first and " SERVER " in first and " ERROR " in first
    assert "    12.407ms" in first
    assert "trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 parent=-" in first
    assert "status=503" in first and "url=/api/orders" in first and "peer=10.0.0.7" in first
    assert first.endswith('msg="upstream down"')
    assert " CLIENT " in second and "     0.001ms" in second and "parent=00f067aa0ba902b7" in second
    # Captured bytes cannot inject terminal escapes or line breaks.
    assert "\x1b" not in second and "url=http://db/\\x1b[31mred\\x0ax" in second
    assert "server=db port=5432" in second
    assert second.endswith("server=db port=5432")
    # Columns line up for scanning.
    assert first.index("trace=") == second.index("trace=")
    assert first.index("ms ") == second.index("ms ")
