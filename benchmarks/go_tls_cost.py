"""Cost of tracing Go crypto/tls: the agent's CPU per request, and the
kernel's time in the Go TLS uprobe programs per call.

The Go HTTPS peer (tests/kernel/peers/go_tls/main.go, built here) serves;
its client sends N GETs on one connection, HTTP/1.1 then HTTP/2.  Each
protocol runs untraced (before the agent starts), then traced by `otel-ebpf run --exe <peer>`
exporting OTLP to an in-process receiver that only counts.  Reported per
request: the agent's CPU (all its processes, user + system), the peers'
CPU (server + client) untraced and traced, and the kernel's run time of
tls_go_enter/tls_go_exit (kernel.bpf_stats_enabled, on while measuring).

    .venv/bin/python benchmarks/go_tls_cost.py [--requests 5000] [--no-tls]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402
from bpf_stats import stats_enabled  # noqa: E402
from go_peer import go_build  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

PEER = "gotlsbench"


def certificate(directory: str) -> tuple[str, str]:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_peers(binary: str, cert: str, key: str, proto: str, requests: int) -> float:
    """Peers' CPU seconds for one run of requests."""
    server = subprocess.Popen([binary, "server", cert, key], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    client = subprocess.run(["/usr/bin/time", "-f", "%U %S", binary, "client", cert,
                             f"https://127.0.0.1:{port}/items/7", str(requests), proto, "500"],
                            capture_output=True, text=True, check=True)
    client_cpu = sum(map(float, client.stderr.split()[-2:]))
    server_cpu = cpu_seconds(psutil.Process(server.pid))
    server.terminate()
    server.wait()
    return client_cpu + server_cpu


def program_stats() -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of the loaded Go TLS programs, by name (the
    agent started here is the only one that has them, when run alone)."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                         check=True).stdout
    stats: dict[str, tuple[int, int]] = {}
    for prog in json.loads(out or "[]"):
        name = prog.get("name", "")
        if name.startswith("tls_go_"):
            time_ns, runs = stats.get(name, (0, 0))
            stats[name] = (time_ns + prog.get("run_time_ns", 0), runs + prog.get("run_cnt", 0))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--no-tls", action="store_true",
                        help="run the agent with --no-tls: the syscall hooks' share of the cost")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="go-tls-cost-")
    binary = go_build(work, PEER)
    cert, key = certificate(work)
    n = args.requests
    print(f"requests per run: {n}")
    untraced = {proto: run_peers(binary, cert, key, proto, n) for proto in ("h1", "h2")}
    receiver = OtlpReceiver(keep_spans=False)
    receiver.start("http")
    env = {**os.environ, **receiver.env, "PYTHONPATH": str(ROOT)}
    agent = subprocess.Popen([sys.executable, "-m", "agent.runtime.cli", "run", "--exe", PEER,
                              "--metrics-address", ""] + (["--no-tls"] if args.no_tls else []), env=env, cwd=ROOT,
                             stderr=open(os.path.join(work, "agent.log"), "w"))
    try:
        agent_process = psutil.Process(agent.pid)
        time.sleep(8)   # start-up: load, attach, first scan
        # The peer's file is probed once a process runs it (after its exec):
        # a short run first, so the measured runs are traced from their start.
        run_peers(binary, cert, key, "h1", 10)
        time.sleep(3)
        for proto in ("h1", "h2"):
            spans_before = sum(receiver.counts.values())
            with stats_enabled():
                before = cpu_seconds(agent_process)
                programs_before = program_stats()
                traced = run_peers(binary, cert, key, proto, n)
                time.sleep(5)   # the last spans drained and exported
                after = cpu_seconds(agent_process)
                programs_after = program_stats()
            print(f"{proto}: agent CPU {1e6 * (after - before) / n:.0f} us/request; "
                  f"peers' CPU {1e6 * untraced[proto] / n:.0f} us/request untraced (no agent), "
                  f"{1e6 * traced / n:.0f} traced; "
                  f"spans received {sum(receiver.counts.values()) - spans_before} of {2 * n}")
            for name in sorted(programs_after):
                time_ns = programs_after[name][0] - programs_before.get(name, (0, 0))[0]
                runs = programs_after[name][1] - programs_before.get(name, (0, 0))[1]
                if runs:
                    print(f"  {name}: {runs / n:.1f} runs/request, {time_ns / runs:.0f} ns/run "
                          "(program only; the uprobe trap itself is not in this count)")
    finally:
        print(f"agent log: {work}/agent.log (exit status {agent.poll()})")
        agent.terminate()
        agent.wait()
        receiver.stop()


if __name__ == "__main__":
    main()
