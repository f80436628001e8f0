"""Last pipeline stage: bounded queue, batching worker, retries, deadline-bound
shutdown.

The pipeline thread must never wait on the network, so submit() only appends
to a bounded deque (spans that do not fit are dropped and counted).  One
worker thread exports a batch when max_batch spans are queued or when
schedule_delay has passed, retrying RETRYABLE results with jittered
exponential backoff for a bounded time; meanwhile the queue keeps accepting
spans up to its bound, so memory stays bounded through a collector outage
and export resumes by itself when the collector is back.

Accounting: spans_submitted == spans_exported + spans_failed +
spans_dropped_queue_full + queue_depth() + (the batch in flight).
"""
from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time

from agent.export.otlp import RETRYABLE, SUCCESS
from agent.loss_log import LossLog

log = logging.getLogger(__name__)

# What the export loss log says of each reason spans are lost for.
LOSS_REASONS = {
    "queue_full": "export queue full: the collector is slower than the traffic, or unreachable",
    "export_failed": "export failed after retries",
}


def export_loss_log() -> LossLog:
    return LossLog("spans lost at export", "span export recovered: no spans lost", LOSS_REASONS,
                   detail_reasons=("export_failed",))


def _env_number(environ, name: str, default, minimum, kind=int):
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={text!r} is invalid; expected a {kind.__name__} >= {minimum}")
    return value


class BatchExporter:
    def __init__(self, sink, max_queue_size: int | None = None, max_batch: int | None = None,
                 schedule_delay_s: float | None = None, environ=os.environ,
                 retry_timeout_s: float | None = None, max_attempts: int = 6,
                 initial_backoff_s: float = 0.5, max_backoff_s: float = 5.0,
                 observe_export_seconds=None, loss_log: LossLog | None = None):
        self.sink = sink
        # A node agent sees many processes at once: a bigger default than the
        # SDK's 2048 absorbs a schedule_delay of bursts without drops.
        self.max_queue_size = max_queue_size or _env_number(
            environ, "OTEL_BSP_MAX_QUEUE_SIZE", 8192, 1)
        self.max_batch = max_batch or _env_number(
            environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1)
        self.max_batch = min(self.max_batch, self.max_queue_size)
        if schedule_delay_s is None:
            schedule_delay_s = _env_number(environ, "OTEL_BSP_SCHEDULE_DELAY", 1000, 0, float) / 1000
        self.schedule_delay_s = schedule_delay_s
        if retry_timeout_s is None:
            # How long one batch may keep retrying before it is given up.
            retry_timeout_s = _env_number(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000, 0, float) / 1000
        self.retry_timeout_s = retry_timeout_s
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.observe_export_seconds = observe_export_seconds

        self.spans_submitted = 0
        self.spans_exported = 0
        self.spans_failed = 0
        self.spans_dropped_queue_full = 0
        self.batches_exported = 0
        self.export_errors = 0

        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()        # queue bound and counters
        self._wake = threading.Event()       # batch full, or shutting down
        self._stopping = threading.Event()
        self._deadline = float("inf")        # monotonic; set by shutdown()
        self._in_flight = 0
        self._abandoned = False
        self._asleep = False                 # the thread waits for submit() alone
        self.loss_log = loss_log or export_loss_log()
        self._thread = threading.Thread(target=self._run, name="otel-ebpf-export", daemon=True)
        self._thread.start()

    # --- pipeline side ---------------------------------------------------

    def submit(self, spans: list) -> None:
        """Queue spans for export; never blocks on export."""
        if not spans:
            return
        with self._lock:
            self.spans_submitted += len(spans)
            if self._stopping.is_set():
                self.spans_failed += len(spans)
                return
            room = self.max_queue_size - len(self._queue)
            if room < len(spans):
                dropped = len(spans) - max(room, 0)
                self.spans_dropped_queue_full += dropped
                self.loss_log.lost("queue_full", dropped)
                spans = spans[:max(room, 0)]
            self._queue.extend(spans)
            wake = len(self._queue) >= self.max_batch or self._asleep
            self._asleep = False
        if wake and not self._wake.is_set():
            self._wake.set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def queue_depth(self) -> int:
        return len(self._queue)

    def idle(self) -> bool:
        """No span queued or being exported."""
        with self._lock:   # _take() moves spans from the queue to in flight under it
            return not self._queue and not self._in_flight

    # --- worker ----------------------------------------------------------

    def _take(self) -> list:
        with self._lock:
            queue = self._queue
            n = min(self.max_batch, len(queue))
            batch = [queue.popleft() for _ in range(n)]
            self._in_flight = n
        return batch

    def _run(self) -> None:
        next_flush = time.monotonic() + self.schedule_delay_s
        quiet = False       # the last scheduled flush found nothing queued
        while True:
            stopping = self._stopping.is_set()
            if not stopping:
                # Quiet since the last scheduled flush: sleep until submit()
                # brings spans (an idle agent's exporter does not wake on
                # the schedule); they leave at most schedule_delay_s later.
                with self._lock:
                    self._asleep = quiet and not self._queue and not self.loss_log.losing
                if self._asleep:
                    self._wake.wait()
                    next_flush = time.monotonic() + self.schedule_delay_s
                else:
                    self._wake.wait(max(0.0, next_flush - time.monotonic()))
                self._wake.clear()
                stopping = self._stopping.is_set()
            now = time.monotonic()
            if self.loss_log.losing:
                with self._lock:
                    self.loss_log.tick(now)
            due = now >= next_flush
            if due:
                next_flush = now + self.schedule_delay_s
                quiet = not self._queue
            # Drain full batches; a partial one only when the timer fired or
            # on shutdown.
            while self._queue and (due or stopping or len(self._queue) >= self.max_batch):
                if time.monotonic() >= self._deadline:
                    return
                self._export(self._take())
            if stopping:
                return

    def _export(self, batch: list) -> None:
        retry_until = time.monotonic() + self.retry_timeout_s
        attempt = 0
        while True:
            attempt += 1
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self._settle(len(batch), exported=False)
                return
            t0 = time.perf_counter()
            try:
                result = self.sink.export(
                    batch, timeout_s=None if remaining == float("inf") else remaining)
            except Exception:  # a sink bug must not kill the export thread
                log.exception("exporter raised; batch of %d spans dropped", len(batch))
                result = None
            if self.observe_export_seconds is not None:
                self.observe_export_seconds(time.perf_counter() - t0)
            if result == SUCCESS:
                self._settle(len(batch), exported=True)
                return
            self.export_errors += 1
            backoff = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
            backoff *= random.uniform(0.5, 1.0)   # jitter: agents must not retry in lockstep
            if (result != RETRYABLE or attempt >= self.max_attempts
                    or time.monotonic() + backoff > min(retry_until, self._deadline)):
                self.loss_log.detail = f"{result}: {getattr(self.sink, 'last_error', '') or 'no detail'}"
                self._settle(len(batch), exported=False)
                return
            if self._stopping.is_set():
                time.sleep(backoff)   # fits before the shutdown deadline (checked above)
            else:
                self._stopping.wait(backoff)   # shutdown() cuts the wait short

    def _settle(self, n: int, exported: bool) -> None:
        with self._lock:
            self._in_flight = 0
            if self._abandoned:   # shutdown() already counted these as failed
                return
            if exported:
                self.spans_exported += n
                self.batches_exported += 1
                self.loss_log.delivered()
            else:
                self.spans_failed += n
                self.loss_log.lost("export_failed", n)

    # --- lifecycle -------------------------------------------------------

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Flush what is queued within timeout_s, then stop; whatever could
        not be sent by then is counted in spans_failed."""
        self._deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._lock:
            self._abandoned = True
            self.spans_failed += len(self._queue) + self._in_flight
            self._queue.clear()
            self._in_flight = 0
        # Closing the sink also aborts a request still blocked in the worker.
        self.sink.shutdown()
