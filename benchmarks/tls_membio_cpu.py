"""CPU per TLS request, Node.js https over OpenSSL memory BIOs: the agent's
own CPU, and what the traced processes (client and server) pay for the
probes, with and without the agent, in one run.

    .venv/bin/python benchmarks/tls_membio_cpu.py [--requests 2000] [--loader bcc]

A Node https server and client (tests/kernel/peers/node_https.js, one
keep-alive connection, requests one after another) run twice: once
untraced, once with `otel-ebpf run --pid SERVER --pid CLIENT` exporting to
an in-process OTLP receiver.  CPU is utime+stime from /proc/PID/stat; the
agent's (its process and its children) is counted from the client's go
until every span has arrived.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "kernel"), str(ROOT / "tests"), str(ROOT)]

from conftest import AgentProcess, TlsCertificate  # noqa: E402
from loopback import free_port, wait_for_port  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

PEER = ROOT / "tests" / "kernel" / "peers" / "node_https.js"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its descendants (the agent's span workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            pass
        todo += children.get(current, [])
    return total


def start_client(node: str, port: int, count: int, cert: Path) -> subprocess.Popen:
    return subprocess.Popen([node, str(PEER), "client", f"https://127.0.0.1:{port}/bench",
                             str(count), str(cert), "00-0af7651916cd43dd8448eb211c80319c-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run_client(client: subprocess.Popen, server_pid: int) -> tuple[float, float, float]:
    """(wall seconds, client CPU, server CPU) of the client's requests."""
    time.sleep(0.5)   # node's start-up CPU stays out
    before = cpu_seconds(client.pid), cpu_seconds(server_pid)
    started = time.monotonic()
    client.stdin.write("go\n")
    client.stdin.flush()
    lines = []
    for line in client.stdout:
        lines.append(line.strip())
        if line.strip() == "done":
            break
    wall = time.monotonic() - started
    after = cpu_seconds(client.pid), cpu_seconds(server_pid)
    client.kill()
    client.wait()
    assert lines[:-1] == ["200"] * (len(lines) - 1), lines[-3:]
    return wall, after[0] - before[0], after[1] - before[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--loader", choices=("core", "bcc"), default="core")
    args = parser.parse_args()
    expected = 2 * args.requests   # a server and a client span per request
    node = shutil.which("node")
    n = args.requests
    cert = TlsCertificate(Path(tempfile.mkdtemp()))
    port = free_port()
    server = subprocess.Popen([node, str(PEER), "server", str(port), str(cert.cert),
                               str(cert.key)], stdout=subprocess.PIPE, text=True)
    receiver = OtlpReceiver().start("http")
    try:
        server.stdout.readline()
        wait_for_port(port)
        wall, client_cpu, server_cpu = run_client(start_client(node, port, n, cert.cert), server.pid)
        print(f"untraced: {n} requests in {wall:.2f}s; node CPU per request: "
              f"client {client_cpu / n * 1e6:.0f} µs, server {server_cpu / n * 1e6:.0f} µs")
        client = start_client(node, port, n, cert.cert)
        agent = AgentProcess(["--loader", args.loader,
                              "--pid", str(server.pid), "--pid", str(client.pid)],
                             {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                              "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                              "OTEL_BSP_SCHEDULE_DELAY": "200"})
        try:
            agent_before = tree_cpu_seconds(agent.proc.pid)
            wall, client_cpu, server_cpu = run_client(client, server.pid)
            receiver.wait_for(lambda spans: len(spans) >= expected, 60)
            agent_cpu = tree_cpu_seconds(agent.proc.pid) - agent_before
            spans = len(receiver.spans)
            unmapped = agent.metric("otel_ebpf_kernel_tls_unmapped_total")
            bound = agent.metric("otel_ebpf_kernel_tls_membio_bindings_total", result="bound")
        finally:
            agent.stop()
        print(f"traced:   {n} requests in {wall:.2f}s; node CPU per request: "
              f"client {client_cpu / n * 1e6:.0f} µs, server {server_cpu / n * 1e6:.0f} µs")
        print(f"agent ({args.loader}): {agent_cpu:.2f}s CPU for {spans} spans ({expected} "
              f"expected), {agent_cpu / n * 1e6:.0f} µs per request; tls_unmapped "
              f"{unmapped:.0f}; SSLs bound {bound:.0f}")
    finally:
        receiver.stop()
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
