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
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bpf_stats import program_time_ns, stats_enabled  # noqa: E402
from loopback import free_port, wait_for_port  # noqa: E402
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BSP_DELAY_MS = "500"     # OTEL_BSP_SCHEDULE_DELAY for the agent and the SDK


# --- small helpers ----------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_seconds(pid: int) -> float:
    """On-CPU time (user + kernel, which includes the BPF programs run in the
    process's syscalls) of a process's live threads, in ns resolution from
    /proc/PID/task/*/schedstat; falls back to the tick-based utime+stime."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"{task.path}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return 0.0
    return total / 1e9 if total else cpu_seconds(pid)


def _proc_kb_field(path: str, key: str) -> int:
    """A `Key:   123 kB` line of a /proc file, in bytes (0 when gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def vm_hwm_bytes(pid: int) -> int:
    return _proc_kb_field(f"/proc/{pid}/status", "VmHWM:")


def pss_bytes(pid: int) -> int:
    """Proportional set size: a page shared by n processes counts 1/n in
    each, so the agent's processes sum to the memory they hold together
    (summed RSS counts the pages a forked worker shares with its parent
    in both)."""
    return _proc_kb_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry.name))
    return out


def host_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs, from /proc/stat.  Steal is
    time the hypervisor ran something else while a vCPU had work."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, values[7], sum(values)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[index])


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- helper processes run by this same script ------------------------------

def serve_receiver() -> None:
    """`run.py --serve-receiver`: the OTLP receiver in its own process.
    Prints its endpoint, then answers `counts` on stdin with a JSON line."""
    sys.path.insert(0, str(ROOT / "tests"))
    from otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver(keep_spans=False).start("http")
    print(json.dumps({"endpoint": receiver.endpoint}), flush=True)
    total = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "counts":
            # Every span of every export request: only this benchmark's
            # tracers send here (ReceivedRequest.span_count, whatever the
            # receiver's per-key `counts` are keyed by).
            with receiver._cond:
                total += sum(r.span_count for r in receiver.requests)
                receiver.requests.clear()
            print(json.dumps({"spans": total}), flush=True)
        elif command == "quit":
            break
    receiver.stop()


def hooks_floor(pids: list[int], stats_file: str) -> None:
    """`run.py --hooks-floor PID,...`: the agent's BPF programs attached to
    these pids (same object, settings and hook family choice as `otel-ebpf
    run`), the ring buffer drained and every record discarded, yielding the
    CPU as the agent does."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    sys.path.insert(0, str(ROOT))
    from agent.capture.kernel_features import ensure_tracefs
    from agent.capture.loader import CaptureSettings, load_capture

    ensure_tracefs()
    capture = load_capture(CaptureSettings(pids=set(pids)))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    print(json.dumps({"hooks": capture.hook_family.name, "programs": capture.attached_programs}),
          flush=True)
    ring = capture.ring
    records = 0
    try:
        while not stop:
            batch = ring.read_batch(4096)
            if batch:
                records += len(batch)
            else:
                ring.wait()
        capture.detach()
        records += len(ring.read_batch(1 << 30))
        stats = capture.probe_stats()
    finally:
        capture.close()
    with open(stats_file, "w") as f:
        json.dump({"records": records,
                   "events": sum(s[0] for s in stats.values()),
                   "lost": sum(s[1] for s in stats.values())}, f)


# --- servers -----------------------------------------------------------------

class Nginx:
    name = "nginx"

    def __init__(self, workdir: Path, env: dict | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
        self.port = free_port()
        conf = textwrap.dedent(f"""
            daemon off;
            user root;
            master_process on;
            worker_processes 1;
            pid {self.dir}/nginx.pid;
            error_log {self.dir}/error.log;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                client_body_temp_path {self.dir};
                proxy_temp_path {self.dir};
                fastcgi_temp_path {self.dir};
                uwsgi_temp_path {self.dir};
                scgi_temp_path {self.dir};
                server {{
                    listen 127.0.0.1:{self.port};
                    location / {{ return 200 "ok\\n"; }}
                }}
            }}
        """)
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(["nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        self.pids = self._pids(1)

    def _pids(self, workers: int) -> list[int]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if len(kids) >= workers:
                return [self.proc.pid, *kids]
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: workers did not start")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)   # nginx: graceful; SIGTERM is fast
        shutil.rmtree(self.dir, ignore_errors=True)


class Gunicorn(Nginx):
    name = "python"

    def __init__(self, workdir: Path, workers: int, threads: int, env: dict | None = None):
        self.port = free_port()
        self.dir = None
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-w", str(workers), "-k", "gthread", "--threads", str(threads),
             "-b", f"127.0.0.1:{self.port}", "--backlog", "2048", "--keep-alive", "60",
             "--log-level", "warning", "--chdir", str(HERE), "app:app"],
            env=full_env, stdout=subprocess.DEVNULL, stderr=open(workdir / "gunicorn.log", "a"))
        wait_for_port(self.port)
        self.pids = self._pids(workers)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)


# --- tracers -----------------------------------------------------------------

class Tracer:
    """Base: no tracer (baseline and sdk rows)."""
    pid = None

    def pids(self) -> list[int]:
        """The tracer's processes."""
        return []

    def snapshot(self) -> dict:
        return {}

    def settle(self, timeout: float) -> None:
        pass

    def stop(self) -> dict:
        return {}


class AgentRun(Tracer):
    def __init__(self, pids: list[int], exporter: str, env: dict, workdir: Path):
        self.metrics_port = free_port()
        self.log = open(workdir / "agent.log", "a")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        full_env.update(env)
        args = [str(VENV_BIN / "otel-ebpf"), "run", "--exporter", exporter,
                "--metrics-address", f"127.0.0.1:{self.metrics_port}", "--log-level", "warning"]
        for pid in pids:
            args += ["--pid", str(pid)]
        self.proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}; see {workdir}/agent.log")
            try:
                if http_get(f"http://127.0.0.1:{self.metrics_port}/readyz", 1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("agent not ready after 30 s")
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        text = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", 5)[1].decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            name = key.partition("{")[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
        return out

    def pids(self) -> list[int]:
        # The agent may fork span workers.
        return [self.pid, *children(self.pid)]

    def snapshot(self) -> dict:
        m = self.metrics()
        # Count every agent process.  Newer agents sum them in
        # otel_ebpf_process_cpu_seconds_total{process=...}; otherwise add the
        # children's /proc figures to the main process's.
        procs = self.pids()
        cpu = m.get("otel_ebpf_process_cpu_seconds_total")
        if cpu is None:
            cpu = m.get("process_cpu_seconds_total", cpu_seconds(self.pid)) + \
                sum(cpu_seconds(p) for p in procs[1:])
        self.processes = max(getattr(self, "processes", 0), len(procs))
        return {"cpu": cpu,
                "built": m.get("otel_ebpf_spans_built_total", 0.0),
                "exported": m.get("otel_ebpf_spans_exported_total", 0.0),
                "kernel_lost": m.get("otel_ebpf_kernel_events_lost_total", 0.0),
                "kernel_events": m.get("otel_ebpf_kernel_events_total", 0.0),
                "dropped_queue": m.get("otel_ebpf_spans_dropped_queue_full_total", 0.0),
                "export_failed": m.get("otel_ebpf_spans_export_failed_total", 0.0),
                "ring_fill": m.get("otel_ebpf_ring_buffer_fill_ratio", 0.0),
                "rss_peak": sum(vm_hwm_bytes(p) for p in procs),
                "pss": sum(pss_bytes(p) for p in procs)}

    def settle(self, timeout: float) -> None:
        """Until the pipeline has caught up: the ring drained, spans built
        stable for a second (span workers report twice a second) and, when
        exporting, every built span exported (or given up on)."""
        deadline = time.monotonic() + timeout
        last, stable = None, 0
        while time.monotonic() < deadline:
            s = self.snapshot()
            done = s["exported"] + s["dropped_queue"] + s["export_failed"]
            key = (s["built"], done)
            stable = stable + 1 if key == last and s["ring_fill"] == 0 else 0
            if stable >= 2 and (self.exporter_counts is False or done >= s["built"]):
                return
            last = key
            time.sleep(0.5)

    exporter_counts = True

    def stop(self) -> dict:
        stop_process(self.proc)
        if not self.log.closed:
            self.log.close()
        return {}


class NullAgentRun(AgentRun):
    exporter_counts = False


class HooksFloor(Tracer):
    def __init__(self, pids: list[int], workdir: Path):
        self.stats_file = workdir / f"floor-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--hooks-floor",
             ",".join(map(str, pids)), "--stats-file", str(self.stats_file)],
            stdout=subprocess.PIPE, stderr=open(workdir / "floor.log", "a"), text=True, cwd=ROOT)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"hooks floor failed to start; see {workdir}/floor.log")
        self.info = json.loads(line)

    def snapshot(self) -> dict:
        return {"cpu": cpu_seconds(self.pid), "rss_peak": vm_hwm_bytes(self.pid),
                "pss": pss_bytes(self.pid)}

    def pids(self) -> list[int]:
        return [self.pid]

    def settle(self, timeout: float) -> None:
        time.sleep(0.3)

    def stop(self) -> dict:
        stop_process(self.proc)
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return {}


# --- receiver ----------------------------------------------------------------

class Receiver:
    def __init__(self, workdir: Path):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-receiver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(workdir / "receiver.log", "a"), text=True, cwd=ROOT)
        self.endpoint = json.loads(self.proc.stdout.readline())["endpoint"]

    def server_spans(self) -> int:
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["spans"]

    def settle(self, timeout: float, quiet: float = 1.5) -> int:
        """Until the count has not moved for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last, since = self.server_spans(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.server_spans()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        stop_process(self.proc)


# --- load ----------------------------------------------------------------------

LOAD_PROCESSES = 10


# Requests sent in the first moments of a run are left out of its
# percentiles: the load generator is still opening its connections, and
# under tracing each new connection's first requests take the capture's slow
# path (classification, a new process's /proc read).  In one run that
# start-up held every latency over 0.7 ms and took an nginx p99.9 from 425 to
# 674 us; the p99 moved by 4 us.  The requests still count everywhere else
# (completed, achieved, lost).
STEADY_AFTER_S = 0.2


def request_log_entries(paths: list) -> tuple[list[tuple[int, int]], int]:
    """h2load --log-file lines (start time in us since the epoch, status,
    latency in us): (start, latency) of each success, and the failures."""
    entries = []
    failed = 0
    for path in paths:
        try:
            f = open(path)
        except OSError:
            continue
        with f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                if parts[1] != "200":
                    failed += 1
                    continue
                try:
                    entries.append((int(parts[0]), int(parts[2])))
                except ValueError:   # a line cut short by a killed h2load
                    continue
    return entries, failed


def read_request_logs(paths: list, steady_after_s: float = STEADY_AFTER_S) -> tuple[int, int, list[int]]:
    """Successes, failures, and the sorted latencies of the requests that
    started at least `steady_after_s` after the first one."""
    entries, failed = request_log_entries(paths)
    if not entries:
        return 0, failed, []
    steady_from = min(start for start, _ in entries) + steady_after_s * 1e6
    latencies = sorted(latency for start, latency in entries if start >= steady_from)
    return len(entries), failed, latencies


def h2load(port: int, rate: int, seconds: float, connections: int, log_path: Path) -> dict:
    """`rate` requests/s for `seconds` over `connections` connections, from
    LOAD_PROCESSES h2load processes started so that their request timers
    are spread evenly over one period (per-request logs in log_path.N).

    One h2load process fires the timers of all its connections together:
    with 50 connections at 5,000/s, 50 requests left within half a
    millisecond every 10 ms.  The latency it measured was then mostly the
    wait behind that burst (untraced nginx: p50 1.5 ms), and any CPU a
    tracer added to a request counted once per request queued behind it.
    Ten processes of five connections gave the same nginx a p50 of 0.22 ms
    and a p99 of 0.8 to 1.5 ms; fifty of one connection, 0.17 to 0.27 and
    2.5 to 5.8 ms (fifty load processes waking on two cores)."""
    processes = max(1, min(LOAD_PROCESSES, connections, rate))
    per_process = max(1, min(connections, rate) // processes)
    conns = processes * per_process
    period = conns / rate
    for old in log_path.parent.glob(log_path.name + ".*"):
        old.unlink()
    procs = []
    first = time.monotonic() + 0.05
    try:
        for k in range(processes):
            start = first + k * period / processes
            now = time.monotonic()
            while start < now:
                start += period
            time.sleep(start - now)
            procs.append(subprocess.Popen(
                ["h2load", "--h1", "-t", "1", "-c", str(per_process), "--rps", f"{rate / conns:.6g}",
                 "-D", f"{int(seconds * 1000)}ms", "--log-file", f"{log_path}.{k}",
                 f"http://127.0.0.1:{port}/"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        outputs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ok, failed, latencies = read_request_logs([f"{log_path}.{k}" for k in range(processes)])
    achieved = 0.0
    for out in outputs:
        for line in out.splitlines():
            if line.startswith("finished in") and "req/s" in line:
                try:
                    achieved += float(line.split(",")[1].split()[0])
                except (IndexError, ValueError):
                    pass
    return {"completed": ok, "failed": failed, "achieved": achieved or ok / seconds,
            "p50_us": percentile(latencies, 0.50), "p99_us": percentile(latencies, 0.99),
            "p999_us": percentile(latencies, 0.999),
            "h2load_rc": max((proc.returncode for proc in procs), default=0)}


# --- one row ---------------------------------------------------------------------

@dataclass
class Row:
    service: str
    config: str
    rate: int
    achieved: float = 0.0
    completed: int = 0
    failed: int = 0
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    p999_us: float = float("nan")
    svc_cpu_s: float = 0.0
    tracer_cpu_s: float = float("nan")
    spans_built: float = float("nan")
    spans_received: float = float("nan")
    kernel_lost: float = float("nan")
    rss_peak: float = float("nan")
    pss_end: float = float("nan")       # summed PSS after the load
    receiver_cpu_s: float = float("nan")
    host_busy: float = float("nan")
    host_steal: float = float("nan")
    programs_s: float = float("nan")    # in the tracer's BPF programs (--program-time)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


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


# --- table --------------------------------------------------------------------------

def fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec)


def ratio(value: float, base: float) -> str:
    if not base or value != value or base != base:
        return "-"
    return f"x{value / base:.2f}"


def median_rounds(rows: list[Row]) -> tuple[list[Row], dict]:
    """One row per (service, config, rate): the round with the median p99;
    and the p99s of every round, by the same key."""
    rounds: dict[tuple, list[Row]] = {}
    for r in rows:
        rounds.setdefault((r.service, r.config, r.rate), []).append(r)
    chosen, p99s = [], {}
    for key, group in rounds.items():
        ordered = sorted(group, key=lambda r: r.p99_us if r.p99_us == r.p99_us else float("inf"))
        chosen.append(ordered[(len(ordered) - 1) // 2])
        p99s[key] = [r.p99_us for r in group]
    return chosen, p99s


def p99_ratio_interval(p99s: list[float], base_p99s: list[float], resamples: int = 2000,
                       level: float = 0.95) -> tuple[float, float] | None:
    """A bootstrap interval for median(p99s) / median(base_p99s) over the
    rounds.  Round i of both ran in the same minutes (rounds interleave), so
    rounds are drawn in pairs: a slow minute of the machine stays on both
    sides.  None below three rounds."""
    pairs = [(p, b) for p, b in zip(p99s, base_p99s) if p == p and b == b]
    if len(pairs) < 3:
        return None
    draw = random.Random(0)
    ratios = []
    for _ in range(resamples):
        sample = draw.choices(pairs, k=len(pairs))
        ratios.append(statistics.median(p for p, _ in sample)
                      / statistics.median(b for _, b in sample))
    ratios.sort()
    tail = round(resamples * (1 - level) / 2)
    return ratios[tail], ratios[resamples - 1 - tail]


def print_table(rows: list[Row], p99s: dict) -> None:
    baselines = {(r.service, r.rate): r for r in rows if r.config == "baseline"}
    header = ["service", "config", "rate", "achieved", "p50us", "p99us", "p99 rounds us", "p99.9us",
              "p50x", "p99x", "p99x 95%", "p99.9x", "+p50us", "+p99us", "svcCPU ms/1kreq",
              "tracer cores", "tracer CPU s/1k spans", "kernel us/req", "peakRSS MB", "PSS MB", "spans/req",
              "lost%", "kern lost", "steal%"]
    lines = [header]
    for r in rows:
        base = baselines.get((r.service, r.rate))
        spans = r.spans_received if r.config in EXPORTING_CONFIGS else r.spans_built
        spans_per_req = spans / r.completed if r.completed and spans == spans else float("nan")
        lost = (1 - spans_per_req) * 100 if spans_per_req == spans_per_req else float("nan")
        per_1k_spans = (r.tracer_cpu_s / spans * 1000
                        if spans == spans and spans and r.tracer_cpu_s == r.tracer_cpu_s else float("nan"))
        if r.config == "hooks":
            per_1k_spans = float("nan")
        interval = (p99_ratio_interval(p99s[(r.service, r.config, r.rate)],
                                       p99s[(r.service, "baseline", r.rate)])
                    if base and r is not base else None)
        lines.append([
            r.service, r.config, str(r.rate), f"{r.achieved:.0f}",
            fmt(r.p50_us, ".0f"), fmt(r.p99_us, ".0f"),
            " ".join(fmt(p, ".0f") for p in p99s[(r.service, r.config, r.rate)]),
            fmt(r.p999_us, ".0f"),
            ratio(r.p50_us, base.p50_us) if base else "-",
            ratio(r.p99_us, base.p99_us) if base else "-",
            f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-",
            ratio(r.p999_us, base.p999_us) if base else "-",
            fmt(r.p50_us - base.p50_us, "+.0f") if base else "-",
            fmt(r.p99_us - base.p99_us, "+.0f") if base else "-",
            fmt(r.svc_cpu_s / r.completed * 1e6 if r.completed else float("nan"), ".1f"),
            fmt(r.tracer_cpu_s / r.seconds if r.seconds else float("nan"), ".2f"),
            fmt(per_1k_spans, ".3f"),
            fmt(r.programs_s / r.completed * 1e6 if r.completed else float("nan"), ".2f"),
            fmt(r.rss_peak / 1e6 if r.rss_peak == r.rss_peak else float("nan"), ".0f"),
            fmt(r.pss_end / 1e6 if r.pss_end == r.pss_end else float("nan"), ".0f"),
            fmt(spans_per_req, ".3f"),
            fmt(lost, ".2f"),
            fmt(r.kernel_lost, ".0f"),
            fmt(r.host_steal * 100, ".1f"),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(cell.rjust(w) if i > 1 else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --- main ---------------------------------------------------------------------------

CONFIGS = {"nginx": ["baseline", "hooks", "agent-none", "agent"],
           "python": ["baseline", "agent", "sdk"]}
# Rows run only when --configs names them.
OPTIONAL_CONFIGS = {"nginx": ["agent-records"], "python": []}
# Rows whose spans reach the receiver (counted there, not by the tracer).
EXPORTING_CONFIGS = ("agent", "agent-records", "sdk")


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
