"""The kernel side's latency cost at a fixed request rate, with the host's
noise shared between the things compared.

run.py gives each configuration a run of its own, and on a VM whose
untraced p99 moves several-fold from one minute to the next a 5%
difference drowns.  Here one nginx serves one continuous h2load run, while
a helper process switches the hooks every --period seconds, through every
phase once per cycle in a fresh random order:

- off: nothing attached;
- empty: programs that return at once, at the capture's own attach points
  (the kernel's hook mechanism by itself: what any tracer hooked there pays);
- filtered: the capture attached, tracing no process (what the agent costs
  a process it does not trace);
- hooks: the capture attached, tracing nginx (run.py's hooks row: records
  copied to the ring, drained and discarded);
- agent: `otel-ebpf run --pid` for nginx, exporting OTLP/HTTP to a local
  receiver (run.py's agent row), started at the switch and stopped at the
  next.

Requests are counted in the phase they started in, leaving out the first
--guard seconds after each switch (a switch ends once the programs are
attached, or the agent answers /readyz).  Each phase's percentiles come
from all its windows together; the intervals are bootstrap draws of whole
cycles, so a slow minute stays on every side of a ratio.

    sudo .venv/bin/python benchmarks/wrk/interleave.py [--rate 5000] [--seconds 600] [--period 2] [--http-exchanges]
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import h2load, request_log_entries  # noqa: E402
from receiver import Receiver  # noqa: E402
from run import ROOT, preflight  # noqa: E402
from servers import Nginx  # noqa: E402
from tracers import BSP_DELAY_MS, AgentRun  # noqa: E402

PHASES = ("off", "empty", "filtered", "hooks", "agent")
QUANTILES = (0.50, 0.90, 0.99, 0.999)
CLANG = os.environ.get("CLANG", "clang-19")
# A switch takes up to this long (the agent's start, links' grace periods):
# a cycle starts only if it can end before --seconds are up.
SWITCH_ALLOWANCE_S = 3.0


def empty_object(sections: list[str], workdir: Path) -> Path:
    """An object of programs that return at once, one per section."""
    source = ['char LICENSE[] __attribute__((section("license"), used)) = "GPL";']
    source += [f'__attribute__((section("{section}"), used)) int empty_{i}(void *ctx) {{ return 0; }}'
               for i, section in enumerate(sections)]
    c_file, obj = workdir / "empty.bpf.c", workdir / "empty.bpf.o"
    c_file.write_text("\n".join(source) + "\n")
    subprocess.run([CLANG, "-target", "bpf", "-O2", "-g", "-c", str(c_file), "-o", str(obj)],
                   check=True)
    return obj


def switch_phases(pids: list[int], phases: list[str], period: float, seconds: float,
                  marks_path: Path, workdir: Path, http_exchanges: bool = False) -> None:
    """`interleave.py --switcher`: load every phase's programs, then switch
    between phases, `period` seconds each after its switch, for as many
    whole cycles as `seconds` hold; write the switches' times.  Only the
    ring-draining threads run under SCHED_IDLE (as the agent's do while they
    keep up): the agent started from here must not inherit it."""
    sys.path.insert(0, str(ROOT))
    from agent.capture import libbpf
    from agent.capture.kernel_features import ensure_tracefs
    from agent.capture.libbpf import check_ptr, check_ret, ffi
    from agent.capture.loader import CaptureSettings, CoreObject, load_capture

    ensure_tracefs()
    lib = libbpf.lib()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    traced = load_capture(CaptureSettings(loader="core", pids=set(pids),
                                          http_exchanges=http_exchanges))
    untraced = load_capture(CaptureSettings(loader="core", pids={pid_max},   # no such pid
                                            http_exchanges=http_exchanges))
    for capture in (traced, untraced):
        capture.detach()
    hooks = traced.front_end.hook_programs()
    sections = [ffi.string(lib.bpf_program__section_name(p)).decode() for p in hooks]
    empty_obj = check_ptr(lib.bpf_object__open_file(str(empty_object(sections, workdir)).encode(),
                                                    ffi.NULL), "open the empty object")
    empty = CoreObject(empty_obj)
    check_ret(lib.bpf_object__load(empty_obj), "load the empty object")
    programs = {"off": [], "agent": [], "empty": empty.hook_programs(), "hooks": hooks,
                "filtered": untraced.front_end.hook_programs()}
    receiver = Receiver(workdir)
    agent_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                 "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                 "OTEL_BSP_SCHEDULE_DELAY": BSP_DELAY_MS,
                 "OTEL_EBPF_HTTP_EXCHANGES": "1" if http_exchanges else "0"}
    stop = threading.Event()

    def drain(capture):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))   # this thread only
        while not stop.is_set():
            if not capture.ring.read_batch(4096):
                capture.ring.wait()

    drains = [threading.Thread(target=drain, args=(capture,), daemon=True)
              for capture in (traced, untraced)]
    for thread in drains:
        thread.start()
    print(json.dumps({"hooks": traced.hook_family.name, "programs": len(hooks)}), flush=True)
    marks, links, agent = [], [], None
    draw = random.Random()
    deadline = time.monotonic() + seconds
    # Tracepoint links go one RCU grace period each: destroyed together,
    # they take one period's wait rather than one per program.
    pool = ThreadPoolExecutor(len(hooks))
    try:
        cycle = 0
        while time.monotonic() + (period + SWITCH_ALLOWANCE_S) * len(phases) < deadline:
            for phase in draw.sample(phases, len(phases)):
                began = time.time()
                list(pool.map(lib.bpf_link__destroy, links))
                if agent is not None:
                    agent.stop()
                    agent = None
                links = [check_ptr(lib.bpf_program__attach(p), "attach") for p in programs[phase]]
                if phase == "agent":
                    agent = AgentRun(pids, "otlp", agent_env, workdir)
                marks.append({"phase": phase, "cycle": cycle, "from": time.time(),
                              "switch_began": began})
                time.sleep(period)
            cycle += 1
        marks.append({"phase": "end", "switch_began": time.time()})
    finally:
        list(pool.map(lib.bpf_link__destroy, links))
        pool.shutdown()
        if agent is not None:
            agent.stop()
        receiver.stop()
        stop.set()
        for thread in drains:
            thread.join()
        for capture in (traced, untraced):
            capture.close()
        empty.close()
    marks_path.write_text(json.dumps(marks))


def phase_windows(entries: list[tuple[int, int]], marks: list[dict], guard_s: float
                  ) -> dict[int, dict[str, list[int]]]:
    """cycle -> phase -> sorted latencies of the requests (start us, latency
    us) that started in that phase's window, from `guard_s` after its switch
    ended to the next switch's start; only cycles with every phase."""
    phases = {mark["phase"] for mark in marks[:-1]}
    windows = []
    for mark, following in zip(marks, marks[1:]):
        windows.append((mark["from"] + guard_s, following["switch_began"], mark["cycle"], mark["phase"]))
    cycles: dict[int, dict[str, list[int]]] = {}
    ordered = sorted(entries)
    index = 0
    for begin, end, cycle, phase in windows:
        begin_us, end_us = begin * 1e6, end * 1e6
        while index < len(ordered) and ordered[index][0] < begin_us:
            index += 1
        bucket = cycles.setdefault(cycle, {}).setdefault(phase, [])
        while index < len(ordered) and ordered[index][0] < end_us:
            bucket.append(ordered[index][1])
            index += 1
    return {c: {phase: sorted(latencies) for phase, latencies in found.items()}
            for c, found in cycles.items() if all(found.get(p) for p in phases)}


def weighted_percentile(sorted_lists: list[list[int]], weights: list[int], q: float) -> float:
    """load.percentile of the latencies of every list repeated `weight`
    times, without building that list: a bootstrap draw of whole cycles
    repeats some and leaves others out, and sorting a few hundred thousand
    latencies per draw would take minutes."""
    pairs = [(values, w) for values, w in zip(sorted_lists, weights) if w and values]
    count = sum(len(values) * w for values, w in pairs)
    if not count:
        return float("nan")
    rank = max(1, min(count, round(q * count + 0.5)))
    low, high = min(v[0] for v, _ in pairs), max(v[-1] for v, _ in pairs)
    while low < high:     # the least latency with `rank` latencies at or below it
        middle = (low + high) // 2
        if sum(bisect.bisect_right(values, middle) * w for values, w in pairs) >= rank:
            high = middle
        else:
            low = middle + 1
    return float(low)


def phase_percentiles(cycles: dict[int, dict[str, list[int]]], phase: str,
                      weights: dict[int, int] | None = None) -> list[float]:
    """QUANTILES of a phase's latencies over the cycles (each counted
    `weights[cycle]` times, once by default); the lists must be sorted."""
    keys = list(cycles)
    lists = [cycles[c][phase] for c in keys]
    counts = [1 if weights is None else weights.get(c, 0) for c in keys]
    return [weighted_percentile(lists, counts, q) for q in QUANTILES]


def ratio_intervals(cycles: dict[int, dict[str, list[int]]], phases: list[str],
                    resamples: int = 1000, level: float = 0.95
                    ) -> dict[str, list[tuple[float, float]]]:
    """phase -> per quantile, a bootstrap interval for phase / off, drawing
    whole cycles; every phase's ratios come from the same draws."""
    keys = list(cycles)
    draw = random.Random(0)
    ratios = {phase: [[] for _ in QUANTILES] for phase in phases}
    for _ in range(resamples):
        weights = collections.Counter(draw.choices(keys, k=len(keys)))
        base = phase_percentiles(cycles, "off", weights)
        for phase in phases:
            for k, (p, b) in enumerate(zip(phase_percentiles(cycles, phase, weights), base)):
                ratios[phase][k].append(p / b)
    tail = round(resamples * (1 - level) / 2)
    return {phase: [(sorted(r)[tail], sorted(r)[resamples - 1 - tail]) for r in per_quantile]
            for phase, per_quantile in ratios.items()}


def print_table(cycles: dict[int, dict[str, list[int]]], rate: int) -> None:
    phases = [p for p in PHASES if p in next(iter(cycles.values()))]
    percentiles = {phase: phase_percentiles(cycles, phase) for phase in phases}
    intervals = ratio_intervals(cycles, [p for p in phases if p != "off"])
    names = [f"p{q * 100:g}" for q in QUANTILES]
    print(f"{len(cycles)} cycles at {rate} requests/s; percentiles in us, ratios against off "
          "with 95% intervals (whole cycles drawn)")
    print(f"{'phase':9} {'requests':>9} " + " ".join(f"{n:>7}" for n in names) + "  "
          + "  ".join(f"{n + ' x off':>22}" for n in names))
    for phase in phases:
        values = percentiles[phase]
        count = sum(len(cycle[phase]) for cycle in cycles.values())
        cells = ["-" for _ in QUANTILES] if phase == "off" else [
            f"x{v / b:.3f} ({lo:.2f}-{hi:.2f})" for v, b, (lo, hi)
            in zip(values, percentiles["off"], intervals[phase])]
        print(f"{phase:9} {count:9} " + " ".join(f"{v:7.0f}" for v in values) + "  "
              + "  ".join(f"{c:>22}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--period", type=float, default=2.0, help="seconds per phase")
    parser.add_argument("--guard", type=float, default=0.5,
                        help="seconds left out after each switch")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"a subset of {','.join(PHASES)}, off included")
    parser.add_argument("--json", type=Path, help="also save the marks and every request here")
    parser.add_argument("--http-exchanges", action="store_true",
                        help="the capture and the agent pair HTTP/1.x in the probes")
    parser.add_argument("--switcher", help=argparse.SUPPRESS)
    parser.add_argument("--marks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.switcher:
        switch_phases([int(p) for p in args.switcher.split(",")], args.phases.split(","),
                      args.period, args.seconds, args.marks, args.marks.parent, args.http_exchanges)
        return 0
    phases = args.phases.split(",")
    if "off" not in phases or not set(phases) <= set(PHASES):
        parser.error(f"--phases: a subset of {','.join(PHASES)} with off in it")
    problems = preflight() + ([] if shutil.which(CLANG) else [f"{CLANG} not found (make setup)"])
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="otel-ebpf-interleave-"))
    server = Nginx(workdir)
    switcher = None
    try:
        h2load(server.port, args.rate, 1.0, args.connections, workdir / "warmup.log")
        marks_path = workdir / "marks.json"
        switcher = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--switcher",
             ",".join(map(str, server.pids)), "--phases", args.phases, "--period", str(args.period),
             "--seconds", str(args.seconds), "--marks", str(marks_path),
             *(["--http-exchanges"] if args.http_exchanges else [])],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        ready = switcher.stdout.readline()
        if not ready:
            raise RuntimeError("the phase switcher failed to start")
        print(f"# {json.loads(ready)}; {args.seconds:g} s at {args.rate}/s, "
              f"{args.period:g} s per phase", file=sys.stderr)
        log = workdir / "load.log"
        load = h2load(server.port, args.rate, args.seconds + 1, args.connections, log)
        if switcher.wait(timeout=60) != 0:
            raise RuntimeError("the phase switcher failed")
        marks = json.loads(marks_path.read_text())
        entries, failed = request_log_entries(sorted(workdir.glob(log.name + ".*")))
        if args.json:
            args.json.write_text(json.dumps({"marks": marks, "requests": entries}))
        cycles = phase_windows(entries, marks, args.guard)
        if not cycles:
            print("no complete cycle: run longer", file=sys.stderr)
            return 1
        print(f"# achieved {load['achieved']:.0f} requests/s, {failed} failed", file=sys.stderr)
        print_table(cycles, args.rate)
        return 0
    finally:
        if switcher is not None and switcher.poll() is None:
            switcher.kill()
            switcher.wait()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
