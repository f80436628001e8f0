"""The /metrics and health server (agent/runtime/metrics.py): it answers,
and a stop is quick and frees the port.  No privileges."""
from __future__ import annotations

import socket
import time
import urllib.request

from agent.runtime.metrics import MetricsServer
from wake_ups import wake_ups, wake_ups_once_asleep


class Metrics:
    def exposition(self) -> bytes:
        return b"otel_ebpf_up 1\n"


class Agent:
    def healthy(self):
        return True, "ok"

    def ready(self):
        return False, "probes not attached"


def test_it_answers_sleeps_between_requests_and_stops_at_once():
    server = MetricsServer("127.0.0.1:0", Metrics(), Agent())
    server.start()
    base = f"http://{server.address}"
    assert urllib.request.urlopen(f"{base}/metrics", timeout=5).read() == b"otel_ebpf_up 1\n"
    assert urllib.request.urlopen(f"{base}/healthz", timeout=5).read() == b"ok\n"
    before = wake_ups_once_asleep(server._thread)
    time.sleep(1.0)
    assert wake_ups(server._thread) - before == 0
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.3
    assert not server._thread.is_alive()
    host, port = server.address.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        refused = False
    except OSError:
        refused = True
    assert refused
