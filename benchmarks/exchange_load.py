"""The agent with default settings and with --http-exchanges, alternately,
tracing a local nginx (server side) under `wrk -t1 -c4 -d5s` against its
/fast location: requests wrk completed, server spans exported, and the
agent's loss counters, with the record path's shed and dropped counts
(tests/kernel/test_http1_load.py's harness).

    .venv/bin/python benchmarks/exchange_load.py
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "kernel"), str(ROOT), str(ROOT / "tests")]

from conftest import Nginx, free_port  # noqa: E402
from test_http1_load import LOSS_METRICS, traced_load  # noqa: E402

# What the record path adds: exchanges shed whole, requests dropped at a
# change of path.
LOSSES = LOSS_METRICS + ("otel_ebpf_kernel_http_exchanges_shed_total",
                         "otel_ebpf_kernel_http_requests_dropped_total")


def wrk(port: int) -> int:
    out = subprocess.run(["wrk", "-t1", "-c4", "-d5s", f"http://127.0.0.1:{port}/fast"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def main() -> None:
    for args in [(), ("--http-exchanges",)] * 2:
        nginx = Nginx(Path(tempfile.mkdtemp()), free_port(), None)
        try:
            traced_load(nginx, lambda: wrk(nginx.port), loss_metrics=LOSSES,
                        label=" ".join(args) or "payload", agent_args=args)
        finally:
            nginx.stop()


if __name__ == "__main__":
    main()
