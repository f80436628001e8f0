"""Where the live agent's CPU goes, per process and thread: idle, then
under h2load at fixed rates (benchmarks/wrk/run.py's nginx, receiver and
agent).  CPU comes from /proc/<pid>/task/<tid>/schedstat (nanoseconds, the
kernel's time included), voluntary context switches are the thread's
wake-ups; each process's peak RSS (VmHWM) at the end.

    .venv/bin/python benchmarks/wrk/agent_threads.py --rates 1000,5000

Another tree's agent (a base commit, say) runs with PYTHONPATH=<its root>.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import h2load  # noqa: E402
from processes import vm_hwm_bytes  # noqa: E402
from receiver import Receiver  # noqa: E402
from servers import Nginx  # noqa: E402
from tracers import BSP_DELAY_MS, AgentRun  # noqa: E402


def threads(pids: list[int]) -> dict:
    """(pid, tid) -> (name, CPU ns, voluntary context switches)."""
    out = {}
    for task in (t for pid in pids for t in Path(f"/proc/{pid}/task").glob("*")):
        try:
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except OSError:
            continue   # the thread exited meanwhile
        wakes = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        out[(int(task.parent.parent.name), int(task.name))] = (name, ns, wakes)
    return out


def report(label: str, agent: AgentRun, seconds: float) -> None:
    pids = agent.pids()
    before = threads(pids)
    time.sleep(seconds)
    after = threads(pids)
    total = 0.0
    print(f"== {label}: {seconds:.0f} s")
    for key, (name, ns, wakes) in sorted(after.items()):
        _, ns0, wakes0 = before.get(key, (name, 0, 0))
        ms = (ns - ns0) / 1e6 / seconds
        total += ms
        print(f"  pid {key[0]:>7} tid {key[1]:>7} {name:16} {ms:6.1f} ms/s "
              f"{(wakes - wakes0) / seconds:6.1f} wake-ups/s")
    print(f"  total {total:.1f} ms/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,5000")
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=7)
    parser.add_argument("--http-exchanges", action="store_true",
                        help="the agent pairs HTTP/1.x exchanges in the probes")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="otel-ebpf-threads-"))
    receiver = Receiver(workdir)
    nginx = Nginx(workdir)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_BSP_SCHEDULE_DELAY": BSP_DELAY_MS}
    if args.http_exchanges:
        env["OTEL_EBPF_HTTP_EXCHANGES"] = "1"
    agent = AgentRun(nginx.pids, "otlp", env, workdir)
    try:
        time.sleep(3)
        report("idle", agent, args.idle_seconds)
        for rate in map(int, args.rates.split(",")):
            load = threading.Thread(target=h2load, args=(
                nginx.port, rate, args.seconds + 3, 50, workdir / "h2load.log"))
            load.start()
            time.sleep(1.5)
            report(f"{rate} requests/s", agent, args.seconds)
            load.join()
        s = agent.snapshot()
        print({k: s[k] for k in ("built", "exported", "kernel_lost", "dropped_queue")})
        print("peak RSS (VmHWM), MB: " + ", ".join(
            f"pid {pid} {vm_hwm_bytes(pid) / 1e6:.0f}" for pid in agent.pids()))
    finally:
        agent.stop()
        nginx.stop()
        receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
