"""Overhead of the agent at fixed request rates, against a baseline without
tracing and against the OpenTelemetry Python SDK.

    sudo .venv/bin/python benchmarks/wrk/run.py [--rates 1000,5000,10000] [--seconds 10]

Load: h2load --h1 --rps from ten processes whose request timers are spread
evenly over a period (open-ish loop: every connection sends at a fixed rate;
see h2load() for why not one process), with per-request logs from which the
percentiles are computed.  All traffic on
127.0.0.1.  Rows, each against a fresh server instance:

  nginx   baseline   no tracing
  nginx   hooks      the agent's BPF programs attached to the server's pids,
                     a consumer that drains the ring buffer and discards every
                     record (the floor: kernel cost plus a minimal drain)
  nginx   agent-none `otel-ebpf run --exporter none`: full parsing and span
                     building, spans counted and discarded
  nginx   agent      `otel-ebpf run`, OTLP/HTTP to a local receiver
  nginx   agent-records  the same with --http-exchanges (HTTP/1.x paired in
                     the probes); only when named in --configs
  python  baseline   gunicorn (gthread) serving benchmarks/wrk/app.py
  python  agent      the same, traced by `otel-ebpf run` exporting OTLP
  python  sdk        the same app wrapped in opentelemetry-instrumentation-wsgi
                     with the SDK's BatchSpanProcessor and OTLP/HTTP exporter

The OTLP receiver (tests/otlp_receiver.py, keep_spans=False) runs in its own
process.  See benchmarks/wrk/README.md for the columns.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(HERE))   # its own modules, when loaded by path (the tests) too

from bpf_stats import program_time_ns, stats_enabled  # noqa: E402
from load import h2load  # noqa: E402
from processes import host_times, run_seconds  # noqa: E402
from receiver import Receiver, serve_receiver  # noqa: E402
from servers import Gunicorn, Nginx  # noqa: E402
from table import EXPORTING_CONFIGS, Row, median_rounds, print_table  # noqa: E402
from tracers import BSP_DELAY_MS, AgentRun, HooksFloor, NullAgentRun, Tracer, hooks_floor  # noqa: E402

VENV_BIN = Path(sys.executable).parent


# --- one row ---------------------------------------------------------------------

def run_row(args, workdir: Path, receiver: Receiver, service: str, config: str, rate: int) -> Row:
    row = Row(service, config, rate)
    otel_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_BSP_SCHEDULE_DELAY": BSP_DELAY_MS}
    if service == "nginx":
        server = Nginx(workdir)
    else:
        env = {}
        if config == "sdk":
            env = {**otel_env, "BENCH_OTEL_SDK": "1", "OTEL_SERVICE_NAME": "bench-wsgi",
                   "OTEL_SEMCONV_STABILITY_OPT_IN": "http"}
        server = Gunicorn(workdir, args.python_workers, args.python_threads, env)
    tracer: Tracer = Tracer()
    counts_spans = config in EXPORTING_CONFIGS
    try:
        if config == "hooks":
            tracer = HooksFloor(server.pids, workdir)
        elif config == "agent-none":
            tracer = NullAgentRun(server.pids, "none", {}, workdir)
        elif config == "agent":
            tracer = AgentRun(server.pids, "otlp", otel_env, workdir)
        elif config == "agent-records":
            tracer = AgentRun(server.pids, "otlp", {**otel_env, "OTEL_EBPF_HTTP_EXCHANGES": "1"},
                              workdir)
        # Warm-up (connections, first-request paths, the SDK's exporter),
        # then let every span of it arrive before taking the snapshot.
        h2load(server.port, rate, args.warmup, args.connections, workdir / "warmup.log")
        tracer.settle(10)
        received_before = receiver.settle(8) if counts_spans else 0
        before = tracer.snapshot()
        # The tracer's CPU from /proc, between the snapshots: its /metrics
        # scrapes (several ms each) are the benchmark's, not the tracing's.
        tracer_before = sum(run_seconds(p) for p in tracer.pids())
        programs_before = program_time_ns(tracer.pids()) if args.program_time else 0
        svc_before = sum(run_seconds(p) for p in server.pids)
        rx_before = receiver.cpu()
        host_before = host_times()
        started = time.monotonic()
        load = h2load(server.port, rate, args.seconds, args.connections, workdir / "h2load.log")
        svc_after = sum(run_seconds(p) for p in server.pids)
        host_after = host_times()
        if counts_spans:
            # Settled when the receiver's count has stopped moving, which
            # needs no scrape of the tracer's /metrics.
            row.spans_received = receiver.settle(15) - received_before
        else:
            tracer.settle(15)
        tracer_after = sum(run_seconds(p) for p in tracer.pids())
        after = tracer.snapshot()
        programs_after = program_time_ns(tracer.pids()) if args.program_time else 0
        row.seconds = time.monotonic() - started
        row.receiver_cpu_s = receiver.cpu() - rx_before if counts_spans else float("nan")
        for key in ("achieved", "completed", "failed", "p50_us", "p99_us", "p999_us"):
            setattr(row, key, load[key])
        row.svc_cpu_s = svc_after - svc_before
        busy, steal, total = (end - start for end, start in zip(host_after, host_before))
        row.host_busy, row.host_steal = busy / max(1, total), steal / max(1, total)
        if before:
            row.tracer_cpu_s = tracer_after - tracer_before if counts_spans \
                else after["cpu"] - before["cpu"]
            row.rss_peak = after["rss_peak"]
            row.pss_end = after.get("pss", float("nan"))
            if args.program_time:
                row.programs_s = (programs_after - programs_before) / 1e9
            if "built" in after:
                row.spans_built = after["built"] - before["built"]
                row.kernel_lost = after["kernel_lost"] - before["kernel_lost"]
                row.extra = {k: after[k] - before[k] for k in
                             ("exported", "dropped_queue", "export_failed", "kernel_events")}
                row.extra["agent_processes"] = getattr(tracer, "processes", 1)
        final = tracer.stop()
        if config == "hooks":
            row.kernel_lost = final.get("lost", float("nan"))
            row.extra = {"records": final.get("records"), "hooks": tracer.info.get("hooks")}
    finally:
        tracer.stop()   # idempotent
        server.stop()
    return row


# --- main ---------------------------------------------------------------------------

CONFIGS = {"nginx": ["baseline", "hooks", "agent-none", "agent"],
           "python": ["baseline", "agent", "sdk"]}
# Rows run only when --configs names them.
OPTIONAL_CONFIGS = {"nginx": ["agent-records"], "python": []}


def preflight() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (the agent loads BPF programs)")
    for tool in ("nginx", "h2load"):
        if not shutil.which(tool):
            problems.append(f"{tool} not found (make setup)")
    if not (VENV_BIN / "gunicorn").exists():
        problems.append(f"{VENV_BIN}/gunicorn missing (make setup)")
    if not (VENV_BIN / "otel-ebpf").exists():
        problems.append(f"{VENV_BIN}/otel-ebpf missing (make setup)")
    if not (ROOT / "build/capture.bpf.o").exists():
        problems.append("build/capture.bpf.o missing (make setup)")
    try:
        import opentelemetry.instrumentation.wsgi  # noqa: F401
    except ImportError:
        problems.append("opentelemetry-instrumentation-wsgi not in .venv (make setup)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,5000,10000", help="requests/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each row")
    parser.add_argument("--connections", type=int, default=50, help="h2load connections")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of every row, interleaved; the table shows the median-p99 run")
    parser.add_argument("--services", default="nginx,python", help="nginx, python or both")
    parser.add_argument("--configs", help="only these configurations (comma-separated; "
                        "keep baseline for the ratios), e.g. baseline,agent")
    parser.add_argument("--python-workers", type=int, default=2)
    parser.add_argument("--python-threads", type=int, default=16)
    parser.add_argument("--json", help="also write every row, with raw figures, to this file")
    parser.add_argument("--program-time", action="store_true",
                        help="count the time the kernel spends in the tracer's BPF programs "
                        "(kernel.bpf_stats_enabled for the run: two clock reads per program run)")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hooks-floor", help=argparse.SUPPRESS)
    parser.add_argument("--stats-file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_receiver:
        serve_receiver()
        return 0
    if args.hooks_floor:
        hooks_floor([int(p) for p in args.hooks_floor.split(",")], args.stats_file)
        return 0

    problems = preflight()
    if problems:
        for problem in problems:
            print(f"run.py: {problem}", file=sys.stderr)
        return 2
    # SIGTERM (and SIGINT, even when started in the background) unwind
    # through the cleanup of the current row: no server or agent left over.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    if args.configs:
        wanted = {c.strip() for c in args.configs.split(",")}
        for service in services:
            CONFIGS[service] = [c for c in CONFIGS[service] + OPTIONAL_CONFIGS[service]
                                if c in wanted]
    workdir = Path(tempfile.mkdtemp(prefix="otel-ebpf-bench-"))
    receiver = Receiver(workdir)
    rows: list[Row] = []
    total = sum(len(CONFIGS[s]) for s in services) * len(rates)
    print(f"# {total} rows x {args.rounds} rounds, {args.seconds:g} s each at "
          f"{args.connections} connections; nproc={os.cpu_count()}; logs in {workdir}",
          file=sys.stderr)
    # The kernel counts program time only while asked to: for this run only.
    with stats_enabled() if args.program_time else contextlib.nullcontext():
        try:
            # Round after round of every row: a slow minute of the machine falls
            # on one run of each configuration, not on all runs of one.
            for round_number in range(1, args.rounds + 1):
                for rate in rates:
                    for service in services:
                        for config in CONFIGS[service]:
                            print(f"# round {round_number}: {service} {config} @ {rate}/s ...",
                                  file=sys.stderr, flush=True)
                            try:
                                row = run_row(args, workdir, receiver, service, config, rate)
                            except Exception as exc:   # one broken row must not lose the others
                                print(f"#   failed: {exc}", file=sys.stderr)
                                row = Row(service, config, rate, extra={"error": str(exc)})
                            rows.append(row)
        finally:
            receiver.stop()
    print_table(*median_rounds(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
