"""Loopback helpers shared by the tests, the fixture capture scripts and the
benchmarks: every server they start listens on 127.0.0.1 only."""
from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, process=None, name: str = "server") -> None:
    """Until something accepts on 127.0.0.1:port; fails early when `process`
    (a Popen) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before listening")
        time.sleep(0.05)
    raise TimeoutError(f"{name}: nothing listens on 127.0.0.1:{port} after {timeout}s")
