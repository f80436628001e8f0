"""Garbage-collector settings for the agent's long-running processes.

The pipeline allocates a few short-lived objects per record and forms
almost no reference cycles, while the default collector runs every 700
allocations and now and then walks every object alive, start-up state
included: a noticeable share of reassembly and linking on
benchmarks/pipeline.py's recorded traffic (docs/performance.md).
"""
from __future__ import annotations

import gc

# Young objects between collections; the older generations go on as
# CPython counts them, rarely.
YOUNG_COLLECTION_THRESHOLD = 50_000


def freeze_heap() -> None:
    """What exists now, collected first, is never scanned again."""
    gc.collect()
    gc.freeze()


def settle_heap() -> None:
    """Call once start-up is done: what exists now (modules, loaded
    programs, caches) is never scanned again, and young collections run
    less often."""
    freeze_heap()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 20, 100)
