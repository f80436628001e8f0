"""Helpers shared by the self-monitoring, redaction and resilience kernel
tests: metric snapshots and deltas, RSS, quiescence, load generators."""
from __future__ import annotations

import socket
import threading
import time

from prometheus_client.parser import text_string_to_metric_families


def snapshot(agent) -> dict:
    """{(sample name, frozenset(labels)): value} of the live /metrics."""
    samples = {}
    for family in text_string_to_metric_families(agent.metrics()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples of name whose labels include labels."""
    want = set(labels.items())
    return sum(v for (n, sample_labels), v in samples.items() if n == name and want <= sample_labels)


def delta(after: dict, before: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def has(samples: dict, name: str) -> bool:
    return any(n == name for n, _ in samples)


def wait_quiet(agent, names=("otel_ebpf_events_drained_total", "otel_ebpf_spans_exported_total"),
               settle: float = 0.6, timeout: float = 15.0) -> dict:
    """Wait until the counters in names stop moving and the export queue is
    empty; returns the last snapshot."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        current = snapshot(agent)
        key = tuple(value(current, n) for n in names)
        if last == key and value(current, "otel_ebpf_queue_depth") == 0:
            return current
        if time.monotonic() > deadline:
            return current
        last = key
        time.sleep(settle)


def raw_request(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send one request on a fresh connection; read until the peer closes or
    a complete small response arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


class KeepAliveLoad:
    """Threads sending GET requests on keep-alive connections, optionally at a
    target rate; counts the complete responses read.

    The backend answers "ok\\n" with a Content-Length, so a response is
    complete when its 3-byte body arrived: the count is exact."""

    RESPONSE_END = b"\r\n\r\nok\n"

    def __init__(self, port: int, path: str = "/load", connections: int = 4,
                 rate: float | None = None):
        self.port = port
        self.request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").encode()
        self.connections = connections
        self.interval = connections / rate if rate else 0.0
        self.sent = 0
        self.completed = 0
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(connections)]

    def start(self) -> "KeepAliveLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        sock = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                with self._lock:
                    self.sent += 1
                sock.sendall(self.request)
                data = b""
                while not data.endswith(self.RESPONSE_END):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    data += chunk
                with self._lock:
                    self.completed += 1
            except OSError:
                with self._lock:
                    self.errors += 1
                if sock is not None:
                    sock.close()
                sock = None
            if self.interval:
                next_at += self.interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    next_at = time.monotonic()
        if sock is not None:
            sock.close()


def counting_receiver():
    """An OtlpReceiver that keeps no spans, only `by_kind` {span kind: count}:
    cheap at load-test rates, and independent of how the shared receiver
    keys its own counts."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from otlp_receiver import OtlpReceiver

    class CountingReceiver(OtlpReceiver):
        def __init__(self):
            super().__init__(keep_spans=False)
            self.by_kind: dict[int, int] = {}

        def _record(self, request, headers, body_size):
            counts: dict[int, int] = {}
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        counts[span.kind] = counts.get(span.kind, 0) + 1
            with self._cond:
                for kind, n in counts.items():
                    self.by_kind[kind] = self.by_kind.get(kind, 0) + n
            return super()._record(request, headers, body_size)

    return CountingReceiver()
