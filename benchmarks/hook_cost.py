"""Kernel cost of the capture hooks per syscall, measured from the calling
side: time N write() calls with the probes detached, then attached, in one
run, on

- a traced TCP socket carrying HTTP (classified, copied to the ring buffer);
- an untraced file descriptor (/dev/null: filtered out after one map lookup).

    .venv/bin/python benchmarks/hook_cost.py [--writes 200000] [--hooks auto] [--loader auto]

A reader thread drains the socket; the agent's userspace does not run (the
ring buffer is large enough to hold every record), so only kernel time is
added.  Prints ns per syscall without and with the hooks, and the difference.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.kernel_features import ensure_tracefs  # noqa: E402
from agent.loader import CaptureSettings, load_capture  # noqa: E402

PAYLOAD = (b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
           b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")


def timed_writes(fd: int, count: int) -> float:
    write = os.write
    start = time.perf_counter_ns()
    for _ in range(count):
        write(fd, PAYLOAD)
    return (time.perf_counter_ns() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=200_000)
    parser.add_argument("--hooks", default="auto")
    parser.add_argument("--loader", default="auto", choices=["auto", "core", "bcc"])
    args = parser.parse_args()
    ensure_tracefs()
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()

    def drain():
        while conn.recv(1 << 20):
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    devnull = os.open("/dev/null", os.O_WRONLY)
    timed_writes(client.fileno(), 10_000)       # warm up
    results = {}
    for label in ("detached", "attached"):
        capture = None
        if label == "attached":
            # A new connection: the hooks classify it from its first bytes.
            capture = load_capture(CaptureSettings(hooks=args.hooks, loader=args.loader, agent_pid=0,
                                                   pids={os.getpid()},
                                                   ring_buffer_bytes=512 << 20))
        sock = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        threading.Thread(target=lambda: [None for _ in iter(lambda: peer.recv(1 << 20), b"")],
                         daemon=True).start()
        try:
            tcp = min(timed_writes(sock.fileno(), args.writes) for _ in range(3))
            null = min(timed_writes(devnull, args.writes) for _ in range(3))
            if capture is not None:
                stats = capture.probe_stats()
                written = sum(s[0] for s in stats.values())
                lost = sum(s[1] for s in stats.values())
                family = f"{capture.hook_family.name}, loader {capture.front_end.name}"
        finally:
            sock.close()
            if capture is not None:
                capture.close()
        results[label] = (tcp, null)
    (tcp0, null0), (tcp1, null1) = results["detached"], results["attached"]
    print(f"hooks: {family}; records written {written}, lost {lost}")
    print(f"{'':28} {'detached':>10} {'attached':>10} {'added':>10}")
    print(f"{'traced TCP write (ns)':28} {tcp0:10.0f} {tcp1:10.0f} {tcp1 - tcp0:10.0f}")
    print(f"{'untraced /dev/null write (ns)':28} {null0:10.0f} {null1:10.0f} {null1 - null0:10.0f}")


if __name__ == "__main__":
    main()
