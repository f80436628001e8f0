"""Saturating HTTP/1.x load with both ends traced: `wrk -t1 -c4 -d5s`
against a local nginx's /fast location, the agent selecting the port (so
wrk's client side and nginx's server side are both traced), exporting
OTLP/HTTP to a receiver that stores what it is sent and answers at once
(decoded after the run, so that decoding takes no CPU from the load).

For each configuration, in turn, for --rounds rounds: the requests wrk
completed, the server and client spans exported with their share of
wrk's count, and every loss and shed counter that moved, so that spans +
shed + lost can be checked against wrk.

    .venv/bin/python benchmarks/wrk_saturation.py [--rounds 2] [--configs default,--http-exchanges]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "kernel"), str(ROOT), str(ROOT / "tests")]

from conftest import AgentProcess, Nginx, free_port  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402
from test_http1_load import settle  # noqa: E402

KIND_SERVER, KIND_CLIENT = 2, 3
COUNTERS = (
    "otel_ebpf_kernel_events_lost_total",
    "otel_ebpf_kernel_http_exchanges_shed_total",
    "otel_ebpf_kernel_http_requests_dropped_total",
    "otel_ebpf_requests_without_response_total",
    "otel_ebpf_responses_without_request_total",
    "otel_ebpf_parse_errors_total",
    "otel_ebpf_spans_dropped_queue_full_total",
    "otel_ebpf_spans_export_failed_total",
)


def wrk(port: int) -> int:
    out = subprocess.run(["wrk", "-t1", "-c4", "-d5s", f"http://127.0.0.1:{port}/fast"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def run_once(args: tuple) -> str:
    receiver = OtlpReceiver(keep_spans=False, store_bodies=True).start("http")
    nginx = Nginx(Path(tempfile.mkdtemp()), free_port(), None)
    agent = None
    try:
        agent = AgentProcess(["--port", str(nginx.port), *args], receiver.env)
        completed = wrk(nginx.port)
        settle(agent, lambda: len(receiver.stored_bodies), timeout=120.0)
        counters = {name.removeprefix("otel_ebpf_"): int(agent.metric(name)) for name in COUNTERS}
        spans = receiver.decode_stored()
        servers = sum(1 for s in spans if s.kind == KIND_SERVER)
        clients = sum(1 for s in spans if s.kind == KIND_CLIENT)
        moved = {k: v for k, v in counters.items() if v}
        return (f"{' '.join(args) or 'default':18} completed {completed:7d}  "
                f"server spans {servers:7d} ({servers / max(completed, 1):7.2%})  "
                f"client spans {clients:7d} ({clients / max(completed, 1):7.2%})  {moved}")
    finally:
        if agent is not None:
            agent.stop()
        nginx.stop()
        receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default="default,--http-exchanges",
                        help="comma-separated; each is the agent's extra arguments, 'default' none")
    options = parser.parse_args()
    configs = [() if c == "default" else tuple(c.split()) for c in options.configs.split(",")]
    for _ in range(options.rounds):
        for args in configs:
            print(run_once(args), flush=True)


if __name__ == "__main__":
    main()
