"""Route and link cost per server exchange while server exchanges wait for
clients that are not traced (agent/spans/client_wait.py): every server
exchange with a loopback peer is held for the link wait, so the held table
stays full and each batch's release runs against it.

    .venv/bin/python benchmarks/pipeline.py --compare-records --no-trace-context --keep DIR
    .venv/bin/python benchmarks/client_wait.py DIR/wrk-records.events [--batch 16]

Replays the recording's records without its client-side ones (as if wrk were
not traced) in batches, through the router and the linker with the agent's
default link wait, and prints the best of three runs in thread CPU time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.recording import read_records  # noqa: E402
from agent.capture.records import C, ffi  # noqa: E402
from agent.protocols.router import ProtocolRouter  # noqa: E402
from agent.runtime.pipeline import LINK_WAIT_S  # noqa: E402
from agent.spans.builder import ExchangeLinker  # noqa: E402

MAX_RECORDS = 60000


def server_side(records: list[bytes]) -> list[bytes]:
    client = C["ROLE_CLIENT"]
    return [r for r in records
            if ffi.cast("struct event_header *", ffi.from_buffer(r)).role != client]


def replay(records: list[bytes], batch: int) -> tuple[int, int, float]:
    router, linker = ProtocolRouter(), ExchangeLinker(link_wait_s=LINK_WAIT_S)
    exchanges = most_held = 0
    started = time.thread_time()
    for i in range(0, len(records), batch):
        items = router.process(records[i:i + batch])
        exchanges += len(linker.exchanges(items)) + len(linker.release_held())
        most_held = max(most_held, len(linker.client_wait))
    exchanges += len(linker.release_held(flush=True))
    return exchanges, most_held, time.thread_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    records = server_side(read_records(args.recording))[:MAX_RECORDS]
    runs = [replay(records, args.batch) for _ in range(3)]
    exchanges, most_held, seconds = min(runs, key=lambda run: run[2])
    print(f"{exchanges} server exchanges, up to {most_held} held, "
          f"{seconds / exchanges * 1e6:.2f} µs per exchange (batches of {args.batch})")


if __name__ == "__main__":
    main()
