"""The load of a row: h2load at a fixed rate from several processes, and
the latencies read from their per-request logs."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

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


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[index])


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
