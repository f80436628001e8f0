"""The agent's main loop: drain -> reassemble and match -> build spans ->
export queue.

One thread runs the first three stages back to back on each batch drained
from the ring buffer (the batch list is the bounded queue between them, at
most `batch_records` long); the exporter runs on its own thread behind its
own bounded queue.  Every stage counts what it drops.
"""
from __future__ import annotations

import os
import threading
import time

from agent.connections import ConnectionTracker
from agent.loader import CaptureSettings, LoadedCapture, load_capture
from agent.redact import Redactor
from agent.resources import ResourceCache
from agent.routes import RouteNamer
from agent.sampling import Sampler
from agent.span_builder import HttpSpanBuilder


class Pipeline:
    def __init__(self, capture: LoadedCapture, exporter, redactor: Redactor | None = None,
                 batch_records: int = 4096, housekeeping_interval_s: float = 2.0,
                 process_filter=None, sampler: Sampler | None = None,
                 routes: RouteNamer | None = None):
        self.capture = capture
        self.exporter = exporter
        self.resources = ResourceCache()
        self.redactor = redactor or Redactor()
        self.tracker = ConnectionTracker()
        self.sampler = sampler or Sampler()
        self.builder = HttpSpanBuilder(self.resources, self.redactor, sampler=self.sampler,
                                       routes=routes)
        self.batch_records = batch_records
        self.housekeeping_interval_s = housekeeping_interval_s
        self.process_filter = process_filter
        self.records_drained = 0
        self.spans_built = 0
        self.loop_iterations = 0
        self.last_loop_monotonic = time.monotonic()
        self.stopped = threading.Event()

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
            items = self.tracker.process(records)
            if items:
                spans = self.builder.build(items)
                if spans:
                    self.spans_built += len(spans)
                    self.exporter.submit(self.sampler.filter(spans))

    def housekeeping(self) -> None:
        now = time.monotonic_ns()
        self.tracker.expire(now)
        for pid in [pid for pid in list(self.resources._by_pid) if not os.path.exists(f"/proc/{pid}")]:
            self.resources.forget(pid)
        self.builder.refresh_clock()
        if self.process_filter is not None:
            self.process_filter.refresh(self.capture)

    def run(self, stop: threading.Event, deadline: float | None = None) -> None:
        ring = self.capture.ring
        next_housekeeping = time.monotonic() + self.housekeeping_interval_s
        try:
            while not stop.is_set():
                now = time.monotonic()
                self.last_loop_monotonic = now
                self.loop_iterations += 1
                if deadline is not None and now >= deadline:
                    break
                if not self.drain_once():
                    ring.wait(0.1)
                if now >= next_housekeeping:
                    self.housekeeping()
                    next_housekeeping = now + self.housekeeping_interval_s
        finally:
            self.stopped.set()

    def stop(self, flush_timeout_s: float) -> None:
        """Detach the probes, process what the ring still holds, flush."""
        started = time.monotonic()
        self.capture.detach()
        self.drain_once()
        remaining = max(0.1, flush_timeout_s - (time.monotonic() - started))
        self.exporter.shutdown(remaining)
        self.capture.close()


class ProcessFilter:
    """Narrows tracing to processes by executable name: the matching pids go
    into the kernel's pid filter, rescanned so that new processes join."""

    def __init__(self, exe_names: set[str], pids: set[int]):
        self.exe_names = exe_names
        self.pids = set(pids)
        self.known: set[int] = set()

    def matching_pids(self) -> set[int]:
        found = set(self.pids)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                exe = os.path.basename(os.readlink(f"/proc/{entry.name}/exe"))
            except OSError:
                continue
            if exe.removesuffix(" (deleted)") in self.exe_names:
                found.add(int(entry.name))
        return found

    def refresh(self, capture: LoadedCapture) -> None:
        current = self.matching_pids() if self.exe_names else set(self.pids)
        for pid in current - self.known:
            capture.allow_pid(pid)
        for pid in self.known - current - self.pids:
            capture.disallow_pid(pid)
        self.known = current
