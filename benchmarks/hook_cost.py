"""Kernel cost of the capture hooks per syscall.  Measured from the calling
side (N calls timed with the probes detached, attached, then detached again,
in one run) and by the kernel's own count of the time spent in the programs
(kernel.bpf_stats_enabled, on for that measurement only), for

- a traced TCP socket carrying HTTP (classified, copied to the ring buffer),
  written and read (reads are hooked at their exit only);
- an untraced file descriptor (/dev/null: filtered out after one map lookup);
- a syscall the agent does not hook (getppid): what every other syscall of
  every process on the node pays while the probes are attached.

    .venv/bin/python benchmarks/hook_cost.py [--writes 200000] [--hooks auto] [--loader auto]

A process of its own, untraced, drains the socket written to and floods
the socket read from with requests; the agent's userspace
does not run (the ring buffer is large enough to hold every record), so only
kernel time is added.  The caller-side difference also holds what the
programs' count leaves out (the tracepoint's own dispatch), but this VM's
write() cost drifts by 100 ns or more over a minute with no probe at all;
the programs' count does not drift with it.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.kernel_features import ensure_tracefs  # noqa: E402
from agent.capture.loader import CaptureSettings, load_capture  # noqa: E402
from bpf_stats import program_time_ns, stats_enabled  # noqa: E402

PAYLOAD = (b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
           b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")


def timed_writes(fd: int, count: int) -> float:
    write = os.write
    start = time.perf_counter_ns()
    for _ in range(count):
        write(fd, PAYLOAD)
    return (time.perf_counter_ns() - start) / count


def timed_reads(fd: int, count: int) -> float:
    read, size = os.read, len(PAYLOAD)
    start = time.perf_counter_ns()
    for _ in range(count):
        read(fd, size)
    return (time.perf_counter_ns() - start) / count


def timed_getppid(count: int) -> float:
    getppid = os.getppid
    start = time.perf_counter_ns()
    for _ in range(count):
        getppid()
    return (time.perf_counter_ns() - start) / count


def serve_peers(drain_server: socket.socket, feed_server: socket.socket) -> None:
    """The peers, in a process of its own: not traced, and not competing with
    the timed loop for the interpreter.  One drains what the timed process
    writes, the other keeps the socket it reads from full of requests."""
    def drain(conn):
        while conn.recv(1 << 20):
            pass

    def feed(conn):
        chunk = PAYLOAD * 512
        try:
            while True:
                conn.sendall(chunk)
        except OSError:
            pass

    def accept_forever(server, serve):
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_forever, args=(feed_server, feed), daemon=True).start()
    accept_forever(drain_server, drain)


def in_programs(calls: dict, count: int) -> dict[str, float]:
    """Program time per call of each kind, with kernel.bpf_stats_enabled on
    for the measurement only (the accounting has a cost of its own).  Every
    program run in the window counts, other processes' filtered-out
    syscalls included: an upper bound."""
    costs = {}
    with stats_enabled():
        for name, call in calls.items():
            before = program_time_ns(["self"])
            call(count)
            costs[name] = (program_time_ns(["self"]) - before) / count
    return costs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=200_000)
    parser.add_argument("--hooks", default="auto")
    parser.add_argument("--loader", default="auto", choices=["auto", "core", "bcc"])
    args = parser.parse_args()
    ensure_tracefs()
    server = socket.create_server(("127.0.0.1", 0))
    feeder = socket.create_server(("127.0.0.1", 0))
    drain_address, feed_address = server.getsockname(), feeder.getsockname()
    # Writer and reader each on a core of their own, the same in every phase:
    # a write that wakes the reader on its own core costs more.
    cores = sorted(os.sched_getaffinity(0))
    reader = os.fork()
    if reader == 0:
        os.sched_setaffinity(0, {cores[-1]})
        serve_peers(server, feeder)
    server.close()
    feeder.close()
    os.sched_setaffinity(0, {cores[0]})
    devnull = os.open("/dev/null", os.O_WRONLY)

    def phase() -> tuple[dict, dict]:
        # A new connection each time (left open): attached, the hooks
        # classify it from its first bytes.
        sock = socket.create_connection(drain_address)
        fed = socket.create_connection(feed_address)
        calls = {"traced TCP write": lambda n: timed_writes(sock.fileno(), n),
                 "traced TCP read": lambda n: timed_reads(fed.fileno(), n),
                 "untraced /dev/null write": lambda n: timed_writes(devnull, n),
                 "unhooked getppid": timed_getppid}
        calls["traced TCP write"](10_000)       # warm up
        calls["traced TCP read"](10_000)
        return calls, {name: min(call(args.writes) for _ in range(3))
                       for name, call in calls.items()}

    try:
        _, before = phase()
        capture = load_capture(CaptureSettings(hooks=args.hooks, loader=args.loader, agent_pid=0,
                                               pids={os.getpid()}, ring_buffer_bytes=512 << 20))
        try:
            calls, attached = phase()
            programs = in_programs(calls, args.writes // 4)
            stats = capture.probe_stats()
            family = f"{capture.hook_family.name}, loader {capture.front_end.name}"
        finally:
            capture.close()
        _, after = phase()
    finally:
        # The reader accepts forever: it must not outlive a failed run.
        os.kill(reader, signal.SIGKILL)
        os.waitpid(reader, 0)
    print(f"hooks: {family}; records written {sum(s[0] for s in stats.values())}, "
          f"lost {sum(s[1] for s in stats.values())}")
    print("ns per call; detached is measured before and after, and the added cost is against "
          "their mean (the machine drifts by more than the hooks cost)")
    print(f"{'':26} {'detached':>9} {'attached':>9} {'detached':>9} {'added':>7} {'in programs':>12}")
    for name in calls:
        base = (before[name] + after[name]) / 2
        print(f"{name:26} {before[name]:9.0f} {attached[name]:9.0f} {after[name]:9.0f} "
              f"{attached[name] - base:7.0f} {programs[name]:12.0f}")


if __name__ == "__main__":
    main()
