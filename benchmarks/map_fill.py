"""What counting a kernel hash map's entries costs a /metrics scrape
(agent/capture/bpf_stats.py): BPF_MAP_LOOKUP_BATCH against one
BPF_MAP_GET_NEXT_KEY per entry, on maps this process fills (root).

    sudo .venv/bin/python benchmarks/map_fill.py --entries 50000
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from agent.capture import bpf_stats  # noqa: E402
from bpf_maps import HASH, LRU_HASH, PERCPU_HASH, create_map, insert  # noqa: E402

# About the size of a connection table's key and value (bpf/capture.bpf.c's
# conns: a descriptor key, a struct conn_info).
KEY_SIZE, VALUE_SIZE = 16, 120


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50000)
    args = parser.parse_args()
    capacity = max(args.entries, 1024)
    for name, map_type in (("hash", HASH), ("percpu_hash", PERCPU_HASH), ("lru_hash", LRU_HASH)):
        fd = create_map(map_type, KEY_SIZE, VALUE_SIZE, capacity)
        for i in range(args.entries):
            insert(fd, i.to_bytes(KEY_SIZE, "little"), bytes(VALUE_SIZE))
        started = time.perf_counter()
        batched = bpf_stats._count_batched(fd, KEY_SIZE, VALUE_SIZE, map_type == PERCPU_HASH,
                                           capacity)
        middle = time.perf_counter()
        walked = bpf_stats._count_keys(fd, KEY_SIZE, capacity)
        done = time.perf_counter()
        print(f"{name:12s} {args.entries} entries: batched {batched} in "
              f"{(middle - started) * 1e3:.1f} ms, key by key {walked} in {(done - middle) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
