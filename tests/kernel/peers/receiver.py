"""The test OTLP receiver in a process of its own, as a real collector runs:
counts spans per process.executable.name and prints the counts as JSON on
each line of stdin it reads (`counts`), until stdin closes."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from otlp_receiver import OtlpReceiver  # noqa: E402

if __name__ == "__main__":
    receiver = OtlpReceiver(keep_spans=False)
    receiver.start(sys.argv[1] if len(sys.argv) > 1 else "http")
    print(receiver.endpoint, flush=True)
    for _ in sys.stdin:
        print(json.dumps(receiver.counts), flush=True)
    receiver.stop()
