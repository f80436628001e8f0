"""The tracers of a row's server: none, the agent (`otel-ebpf run`), and the
hooks floor, whose process (`run.py --hooks-floor`) is here too."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from loopback import free_port  # noqa: E402
from processes import children, cpu_seconds, pss_bytes, stop_process, vm_hwm_bytes  # noqa: E402

# The floor runs as this same benchmark's script: run.py's main passes
# --hooks-floor on to hooks_floor().
RUN_PY = Path(__file__).resolve().parent / "run.py"
VENV_BIN = Path(sys.executable).parent
BSP_DELAY_MS = "500"     # OTEL_BSP_SCHEDULE_DELAY for the agent and the SDK


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


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
            [sys.executable, str(RUN_PY), "--hooks-floor",
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


# --- the hooks floor's process ---------------------------------------------

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
