"""The agent's main loop: drain -> reassemble and match -> link trace
context -> span stage (build spans, sample, export: agent/span_worker.py).

One thread runs the first three stages back to back on each batch drained
from the ring buffer (the batch list is the bounded queue between them, at
most `batch_records` long); the span stage sits behind a socket to its
worker processes, or runs in this process, and its exporter behind its own
bounded queue.  Every stage counts what it drops.
"""
from __future__ import annotations

import threading
import time

from agent.connections import ConnectionTracker
from agent.loader import LoadedCapture
from agent.sampling import Sampler
from agent.resources import ResourceCache
from agent.span_builder import RESOURCE_MARKER, HttpExchangeLinker


class Pipeline:
    """Drain, reassemble and match, link trace context; hand the exchanges
    to the span stage (in this process or in span workers)."""

    def __init__(self, capture: LoadedCapture, span_stage, sampler: Sampler,
                 batch_records: int = 4096, housekeeping_interval_s: float = 2.0,
                 selection=None, tls=None):
        self.capture = capture
        self.span_stage = span_stage
        self.tracker = ConnectionTracker()
        self.linker = HttpExchangeLinker(sampler)
        # Reads resources only: the span stage keeps them, in its own process.
        self.resources = ResourceCache()
        self.batch_records = batch_records
        self.housekeeping_interval_s = housekeeping_interval_s
        self.selection = selection
        self.tls = tls
        self.records_drained = 0
        self.last_loop_monotonic = time.monotonic()

    def drain_once(self) -> int:
        """Process whatever the ring holds now; returns records handled."""
        ring = self.capture.ring
        handled = 0
        while True:
            records = ring.read_batch(self.batch_records)
            if not records:
                return handled
            handled += len(records)
            self.records_drained += len(records)
            tracker = self.tracker
            items = tracker.process(records)
            exchanges = self.linker.exchanges(items) if items else []
            if tracker.new_pids:
                exchanges[:0] = [(RESOURCE_MARKER, pid, self.resources.attributes_of(pid))
                                 for pid in tracker.new_pids]
                tracker.new_pids.clear()
            if exchanges:
                self.span_stage.submit(exchanges)

    def housekeeping(self) -> None:
        self.tracker.expire(time.monotonic_ns())
        self.span_stage.housekeeping()
        if self.selection is not None:
            self.selection.refresh(self.capture)

    def run(self, stop: threading.Event, deadline: float | None = None) -> None:
        ring = self.capture.ring
        next_housekeeping = time.monotonic() + self.housekeeping_interval_s
        while not stop.is_set():
            now = time.monotonic()
            self.last_loop_monotonic = now
            if deadline is not None and now >= deadline:
                break
            if not self.drain_once():
                ring.wait(0.1)
            if self.tls is not None:
                execs = self.tracker.execs
                if execs:
                    self.tls.exec_seen(execs)
                    execs.clear()
                self.tls.poll(now)
            if now >= next_housekeeping:
                self.housekeeping()
                next_housekeeping = now + self.housekeeping_interval_s

    def stop(self, flush_timeout_s: float) -> None:
        """Detach the probes, process what the ring still holds, flush."""
        started = time.monotonic()
        self.capture.detach()
        self.drain_once()
        self.span_stage.shutdown(max(0.1, flush_timeout_s - (time.monotonic() - started)))
        self.capture.close()
