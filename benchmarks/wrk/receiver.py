"""The OTLP receiver the exporting rows send to (tests/otlp_receiver.py,
keep_spans=False), in a process of its own: the benchmark's handle on it,
and the process (`run.py --serve-receiver`)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from processes import cpu_seconds, stop_process

ROOT = Path(__file__).resolve().parents[2]
# The receiver runs as this same benchmark's script: run.py's main passes
# --serve-receiver on to serve_receiver().
RUN_PY = Path(__file__).resolve().parent / "run.py"


class Receiver:
    def __init__(self, workdir: Path):
        self.proc = subprocess.Popen([sys.executable, str(RUN_PY), "--serve-receiver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(workdir / "receiver.log", "a"), text=True, cwd=ROOT)
        self.endpoint = json.loads(self.proc.stdout.readline())["endpoint"]

    def server_spans(self) -> int:
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["spans"]

    def settle(self, timeout: float, quiet: float = 1.5) -> int:
        """Until the count has not moved for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last, since = self.server_spans(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.server_spans()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        stop_process(self.proc)


# --- the receiver's process --------------------------------------------------

def serve_receiver() -> None:
    """`run.py --serve-receiver`: the OTLP receiver in its own process.
    Prints its endpoint, then answers `counts` on stdin with a JSON line."""
    sys.path.insert(0, str(ROOT / "tests"))
    from otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver(keep_spans=False).start("http")
    print(json.dumps({"endpoint": receiver.endpoint}), flush=True)
    total = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "counts":
            # Every span of every export request: only this benchmark's
            # tracers send here (ReceivedRequest.span_count, whatever the
            # receiver's per-key `counts` are keyed by).
            with receiver._cond:
                total += sum(r.span_count for r in receiver.requests)
                receiver.requests.clear()
            print(json.dumps({"spans": total}), flush=True)
        elif command == "quit":
            break
    receiver.stop()
