"""Pipeline throughput on one core: recorded kernel events replayed through
drain (the ring reader, over a ring image) -> reassemble and match -> link
trace context (the main process) -> build spans -> OTLP protobuf bytes (the
span worker).

    .venv/bin/python benchmarks/pipeline.py [--recording FILE] [--seconds N]

Without --recording it records live first (root; nginx and wrk from
`make setup`): wrk against a local nginx for one second, both ends traced.
Prints spans per CPU-second for the fast encoder and for the OpenTelemetry SDK encoder on
the same spans, their ratio, and where the time goes per stage; then the
request metrics' cost per exchange (agent/metrics/red.py, the "metrics" stage)
against recording the same spans with the OpenTelemetry SDK's Histogram.record().
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.protocols.router import ProtocolRouter  # noqa: E402
from agent.export.otlp_encode import encode_export_request  # noqa: E402
from agent.runtime.heap import settle_heap  # noqa: E402
from agent.capture.recording import read_records  # noqa: E402
from agent.spans.redact import Redactor  # noqa: E402
from agent.spans.resources import ResourceCache  # noqa: E402
from agent.capture.ringbuf import layout_records, read_records as ring_read  # noqa: E402
from agent.spans.builder import ExchangeLinker, SpanFactory  # noqa: E402
from agent.metrics.red import HTTP_SERVER, RedAggregator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 512
NGINX_CONF = """daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
uwsgi_temp_path {d}; scgi_temp_path {d};
server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello\\n"; }} }} }}
"""
# Every request carries a traceparent of its own, as requests from an
# instrumented client do: no two request heads are alike, so the tracker's
# head cache (agent/protocols/http1.ParsedHeads) only helps with the
# responses.  With --no-trace-context the TRACEPARENT line is left out, as
# from an uninstrumented client.
WRK_SCRIPT = """
local hex = "0123456789abcdef"
local function random_hex(n)
  local digits = {}
  for i = 1, n do
    local r = math.random(16)
    digits[i] = hex:sub(r, r)
  end
  return table.concat(digits)
end
request = function()
  TRACEPARENT
  return wrk.format(nil, PATH)
end
"""
TRACEPARENT = 'wrk.headers["traceparent"] = "00-" .. random_hex(32) .. "-" .. random_hex(16) .. "-01"'
# The path every request asks for, or with --unique-paths one with an id of
# its own (a span shape that never repeats).
SAME_PATH = '"/api/v1/items?id=42"'
UNIQUE_PATH = '"/api/v1/items/" .. math.random(1000000000) .. "?id=42"'



def record_live(path: Path, http_exchanges: bool = False, unique_paths: bool = False,
                trace_context: bool = True) -> None:
    if os.geteuid() != 0 or not shutil.which("nginx") or not shutil.which("wrk"):
        sys.exit("live recording needs root, nginx and wrk (make setup); or pass --recording")
    port = 18777
    with tempfile.TemporaryDirectory() as d:
        Path(d, "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
        Path(d, "req.lua").write_text(
            WRK_SCRIPT.replace("PATH", UNIQUE_PATH if unique_paths else SAME_PATH)
            .replace("TRACEPARENT", TRACEPARENT if trace_context else ""))
        nginx = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d])
        time.sleep(0.5)
        recorder = subprocess.Popen([sys.executable, "-m", "agent.runtime.cli", "record", "-o", str(path),
                                     "--duration", "3", "--port", str(port), "--capture-bytes", "512",
                                     *(["--http-exchanges"] if http_exchanges else [])],
                                    cwd=ROOT, stderr=subprocess.PIPE, text=True)
        # Loading takes seconds (the exchange parser's programs, the
        # verifier; longer on a busy machine): the load starts once the
        # recorder says it records.
        for line in recorder.stderr:
            if line.startswith("recording for"):
                break
            sys.stderr.write(line)
        subprocess.run(["wrk", "-t1", "-c8", "-d1s", "-s", f"{d}/req.lua",
                        f"http://127.0.0.1:{port}/"], check=True, capture_output=True)
        recorder.wait()
        nginx.terminate()
        nginx.wait()


def run(records: list[bytes], seconds: float, encode) -> dict:
    size = 1 << max(20, (sum(len(r) + 16 for r in records)).bit_length())
    image = layout_records(records, size)
    producer = int.from_bytes(image[:8], "little")
    tracker = ProtocolRouter()
    linker = ExchangeLinker()
    factory = SpanFactory(ResourceCache(), Redactor())
    red = RedAggregator()
    stage = {"drain": 0.0, "match": 0.0, "link": 0.0, "build": 0.0, "metrics": 0.0,
             "encode": 0.0}
    spans_total = bytes_total = 0
    # CPU time of this thread: other processes on the machine do not count.
    clock = time.thread_time
    deadline = clock() + seconds
    pending = []
    while clock() < deadline:
        consumer = 0
        while consumer < producer:
            t0 = clock()
            batch, consumer = ring_read(image, 4096, size - 1, consumer, producer, 4096)
            t1 = clock()
            items = tracker.process(batch)
            t2 = clock()
            exchanges = linker.exchanges(items)
            t2b = clock()
            spans = factory.spans(exchanges)
            t3a = clock()
            red.observe(spans)
            t3 = clock()
            pending += spans
            while len(pending) >= BATCH:
                bytes_total += len(encode(pending[:BATCH]))
                spans_total += BATCH
                del pending[:BATCH]
            t4 = clock()
            stage["drain"] += t1 - t0
            stage["match"] += t2 - t1
            stage["link"] += t2b - t2
            stage["build"] += t3a - t2b
            stage["metrics"] += t3 - t3a
            stage["encode"] += t4 - t3
    elapsed = sum(stage.values())
    return {"spans": spans_total, "seconds": elapsed, "rate": spans_total / elapsed,
            "bytes": bytes_total, "stage": stage}


def accepted_by_receiver(records: list[bytes]) -> tuple[int, int]:
    """Spans the pipeline built from the recording, and how many of them a
    real OTLP/HTTP receiver (tests/otlp_receiver.py) accepted and decoded."""
    sys.path.insert(0, str(ROOT / "tests"))
    from otlp_receiver import OtlpReceiver
    from agent.export.otlp import SUCCESS, OtlpHttpSink
    from agent.spans.builder import SpanBuilder
    spans = SpanBuilder(ResourceCache(), Redactor()).build(ProtocolRouter().process(records))
    receiver = OtlpReceiver(keep_spans=False)
    receiver.start("http")
    try:
        sink = OtlpHttpSink({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        for i in range(0, len(spans), 4096):
            assert sink.export(spans[i:i + 4096]) == SUCCESS
        sink.shutdown()
        return len(spans), sum(receiver.counts.values())
    finally:
        receiver.stop()


def sdk_histogram_cost(spans: list, seconds: float) -> float:
    """µs per span to record the same measurement through the OpenTelemetry
    SDK's Histogram.record(), with the attributes the aggregator keys on."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = provider.get_meter("bench").create_histogram(HTTP_SERVER.name, unit="s")
    record = histogram.record
    keys = HTTP_SERVER.attributes
    clock = time.thread_time
    done, spent = 0, 0.0
    while spent < seconds:
        t0 = clock()
        for span in spans:
            attrs = dict(span.attributes)
            record((span.end_ns - span.start_ns) / 1e9,
                   {k: attrs[k] for k in keys if attrs.get(k) is not None})
        spent += clock() - t0
        done += len(spans)
    provider.shutdown()
    return spent / done * 1e6


def sdk_encoder():
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from agent.export.sdk import SdkConverter
    converter = SdkConverter()
    return lambda spans: encode_spans([converter.convert(s) for s in spans]).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--compare-records", action="store_true",
                        help="record live twice, payload path and --http-exchanges, and "
                             "compare the fast path's spans/s on the two")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="with --compare-records: keep the two recordings in DIR")
    parser.add_argument("--replay", type=Path, metavar="DIR",
                        help="with --compare-records: replay the recordings --keep kept "
                             "instead of recording")
    parser.add_argument("--unique-paths", action="store_true",
                        help="with --compare-records: every request asks for a path of its own")
    parser.add_argument("--no-trace-context", action="store_true",
                        help="with --compare-records: requests carry no traceparent, as from "
                             "an uninstrumented client")
    parser.add_argument("--slices", type=int, default=4,
                        help="with --compare-records: the two replays take turns, each "
                             "--seconds in this many slices")
    args = parser.parse_args()
    if args.compare_records:
        return compare_records(args.seconds, args.keep, args.replay, args.unique_paths,
                               not args.no_trace_context, max(1, args.slices))
    recording = args.recording
    if recording is None:
        recording = Path(tempfile.mkdtemp()) / "wrk.events"
        record_live(recording)
    records = read_records(recording)
    print(f"{len(records)} recorded events from {recording}")
    settle_heap()   # as the agent's processes do once started
    results = {"fast": run(records, args.seconds, encode_export_request)}
    try:
        results["sdk"] = run(records, args.seconds, sdk_encoder())
    except ImportError as exc:
        print(f"SDK encoder unavailable: {exc}")
    for name, r in results.items():
        per_span = {k: v / r["spans"] * 1e6 for k, v in r["stage"].items()}
        stages = "  ".join(f"{k} {v:.1f}" for k, v in per_span.items())
        main = per_span["drain"] + per_span["match"] + per_span["link"]
        worker = per_span["build"] + per_span["metrics"] + per_span["encode"]
        print(f"{name:>5}: {r['rate']:>9,.0f} spans/s on one core  ({1e6 / r['rate']:.1f} µs/span: {stages} µs)")
        print(f"{'':>5}  main process {main:.1f} µs/span, span worker {worker:.1f} µs/span: "
              f"{1e6 / max(main, worker):,.0f} spans/s with one worker on a second core")
    if "sdk" in results:
        print(f"fast / sdk = {results['fast']['rate'] / results['sdk']['rate']:.1f}x")
    fast = {k: v / results["fast"]["spans"] * 1e6 for k, v in results["fast"]["stage"].items()}
    total = sum(fast.values())
    print(f"request metrics: {fast['metrics']:.2f} µs/exchange; pipeline {total - fast['metrics']:.1f} "
          f"µs/span without them, {total:.1f} with")
    sample = SpanFactory(ResourceCache(), Redactor()).spans(
        ExchangeLinker().exchanges(ProtocolRouter().process(records)))
    print(f"the same with the OpenTelemetry SDK's Histogram.record(): "
          f"{sdk_histogram_cost(sample, min(args.seconds, 2.0)):.2f} µs/exchange")
    built, accepted = accepted_by_receiver(records)
    print(f"OTLP receiver accepted {accepted} of {built} spans built from the recording")


def compare_records(seconds: float, keep: Path | None = None, replay: Path | None = None,
                    unique_paths: bool = False, trace_context: bool = True,
                    slices: int = 1) -> None:
    """Spans/s per core and the per-stage split, payload path against
    exchange records, on two live recordings of the same load (recorded
    one after the other).  The replays take turns in `slices` slices of
    seconds/slices each, so that a drift of the machine's speed reaches
    both paths alike; each pair of slices gives a ratio of its own."""
    recordings = {}
    for name, exchanges in (("payload", False), ("records", True)):
        if replay is not None:
            recordings[name] = replay / f"wrk-{name}.events"
            continue
        directory = keep or Path(tempfile.mkdtemp())
        directory.mkdir(parents=True, exist_ok=True)
        recordings[name] = directory / f"wrk-{name}.events"
        record_live(recordings[name], exchanges, unique_paths, trace_context)
    records = {name: read_records(recording) for name, recording in recordings.items()}
    settle_heap()
    totals = {name: {"spans": 0, "seconds": 0.0, "stage": {}} for name in records}
    slice_ratios = []
    for _ in range(slices):
        slice_rates = {}
        for name in records:
            r = run(records[name], seconds / slices, encode_export_request)
            slice_rates[name] = r["rate"]
            total = totals[name]
            total["spans"] += r["spans"]
            total["seconds"] += r["seconds"]
            for stage, spent in r["stage"].items():
                total["stage"][stage] = total["stage"].get(stage, 0.0) + spent
        slice_ratios.append(slice_rates["records"] / slice_rates["payload"])
    rates = {}
    for name, total in totals.items():
        rate = rates[name] = total["spans"] / total["seconds"]
        per_span = {k: v / total["spans"] * 1e6 for k, v in total["stage"].items()}
        stages = "  ".join(f"{k} {v:.1f}" for k, v in per_span.items())
        print(f"{name:>7}: {len(records[name])} events, {rate:>9,.0f} spans/s on one core "
              f"({1e6 / rate:.1f} µs/span: {stages} µs)")
    spread = f" (slices {min(slice_ratios):.2f}-{max(slice_ratios):.2f}x)" if slices > 1 else ""
    print(f"records / payload = {rates['records'] / rates['payload']:.2f}x{spread}")

if __name__ == "__main__":
    main()
