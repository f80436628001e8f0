"""Loopback helpers shared by the tests, the fixture capture scripts and the
benchmarks: every server they start listens on 127.0.0.1 only."""
from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import time

# Below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 and
# up by default): a port the kernel hands out for port 0 can be taken by any
# outgoing connection (curl, the agent's exporter) before the server binds it.
_SERVER_PORTS = range(20000, 32000)


def free_port() -> int:
    while True:
        port = random.choice(_SERVER_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


# Waits in the tests stretch by this factor: the kernel matrix runs them in
# an emulated VM (scripts/kernel-matrix.sh), many times slower than here.
TIME_SCALE = float(os.environ.get("OTEL_EBPF_TEST_TIME_SCALE", "1"))


def wait_for_port(port: int, timeout: float = 10.0, process=None, name: str = "server") -> None:
    """Until something accepts on 127.0.0.1:port; fails early when `process`
    (a Popen) exits first."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before listening")
        time.sleep(0.05)
    raise TimeoutError(f"{name}: nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def announced_peer(argv: list, name: str = "peer"):
    """A peer process that prints the port it listens on as its first line
    and serves until its stdin closes: yields the port once it accepts."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"{name} printed {line!r} instead of its port")
        port = int(line)
        wait_for_port(port, process=proc, name=name)
        yield port
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
