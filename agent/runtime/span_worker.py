"""The span stage: exchange tuples -> spans -> sampling -> export.

It runs in the agent's main process (LocalSpanStage), and under heavy load
also in worker processes of its own (SpanWorkerPool).  Python runs one
thread at a time per process: with the stage in a worker, reassembly in the
main process and span building plus export use separate cores.  That pays
only when one core is not enough.  While the capture loop keeps up, a second
busy process is a second core the traced processes find taken, and handing
exchanges over costs pickling (docs/decisions/span-worker-spill.md; figures
in docs/performance.md).  So the pool builds a
drained batch in the main process, and hands it to the workers only when it
holds more than SPILL_EXCHANGES exchanges: the ring held more than a poll's
worth, so the loop is behind or the load is heavy.

Main -> worker messages (pickled, one per SOCK_SEQPACKET datagram):
  ("exchanges", [tuple, ...])   ("stop", None)
Worker -> main: ("stats", snapshot) at most twice a second, when it changed,
and once more at the end.
The main process blocks at most SEND_TIMEOUT_S on a busy worker (its
backlog then stays in the ring buffer, where the kernel counts overflow);
batches it still cannot hand over are dropped and counted.
"""
from __future__ import annotations

import bisect
import logging
import os
import pickle
import signal
import socket
import threading
import time

from agent.export.batch import BatchExporter
from agent.metrics.red import DEFAULT_SERIES_LIMIT, RedAggregator, merge_red
from agent.runtime.heap import freeze_heap, settle_heap
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from agent.spans.routes import RouteNamer
from agent.spans.sampling import Sampler
from agent.spans.builder import RESOURCE_MARKER, SpanFactory

log = logging.getLogger("otel_ebpf")

EXPORT_SECONDS_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
# A batch of more exchanges than this goes to the workers: a 50 ms poll
# gathers it from 20k exchanges/s on (the drain reads at most 4,096 records
# a batch, about 2,000 HTTP/1 exchanges), where the main process would spend
# about a quarter of a core building spans beside its own work.
SPILL_EXCHANGES = 1024
MESSAGE_EXCHANGES = 512          # exchanges per datagram: ~150 KB pickled...
MESSAGE_MAX_BYTES = 1 << 20      # ...and never more than this (long URLs): split
SOCKET_BUFFER_BYTES = 8 << 20
SEND_TIMEOUT_S = 1.0
STATS_INTERVAL_S = 0.5
HOUSEKEEPING_INTERVAL_S = 2.0


class ExportLatency:
    """Histogram counts kept as plain numbers so that they can cross processes."""

    def __init__(self):
        self.buckets = [0] * (len(EXPORT_SECONDS_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(EXPORT_SECONDS_BUCKETS, seconds)] += 1
        self.sum += seconds


class LocalSpanStage:
    """Factory, sampler and batch exporter in the calling process."""

    def __init__(self, sink, redactor: Redactor, sampler: Sampler, routes: RouteNamer,
                 exporter_options: dict | None = None, red_metrics: bool = True,
                 series_limit: int = DEFAULT_SERIES_LIMIT):
        self.resources = ResourceCache()
        # Request metrics see every span, before sampling (agent/metrics/red.py).
        self.red = RedAggregator(series_limit) if red_metrics else None
        self.factory = SpanFactory(self.resources, redactor, routes=routes)
        self.redactor = redactor
        self.sampler = sampler
        self.latency = ExportLatency()
        self.exporter = BatchExporter(sink, observe_export_seconds=self.latency.observe,
                                      **(exporter_options or {}))

    def submit(self, exchanges: list) -> None:
        spans = self.factory.spans(exchanges)
        if self.red is not None:
            self.red.observe(spans)
        self.exporter.submit(self.sampler.filter(spans))

    def housekeeping(self) -> None:
        self.factory.refresh_clock()
        self.resources.forget_gone()

    def alive(self) -> bool:
        return self.exporter.is_alive()

    def export_idle(self) -> bool:
        """Whether the exporter holds no span, queued or in flight."""
        return self.exporter.idle()

    def snapshot(self) -> dict:
        exporter = self.exporter
        sink = exporter.sink
        return {
            "spans_server": self.factory.spans_server,
            "spans_client": self.factory.spans_client,
            "sampled_out": self.sampler.sampled_out,
            "redactions": dict(self.redactor.counts),
            "spans_exported": exporter.spans_exported,
            "spans_failed": exporter.spans_failed,
            "spans_dropped_queue_full": exporter.spans_dropped_queue_full,
            "bytes_sent": getattr(sink, "bytes_sent", 0),
            "queue_depth": exporter.queue_depth(),
            "processes": len(self.resources),
            "export_seconds_buckets": list(self.latency.buckets),
            "export_seconds_sum": self.latency.sum,
            "alive": int(self.alive()),
            "red": self.red.snapshot() if self.red is not None else {},
        }

    def shutdown(self, timeout_s: float) -> None:
        self.exporter.shutdown(timeout_s)


def merge_snapshots(snapshots: list[dict]) -> dict:
    total: dict = {}
    reds = [snap["red"] for snap in snapshots if snap.get("red")]
    for snap in snapshots:
        for key, value in snap.items():
            if key == "red":
                continue
            if isinstance(value, dict):
                bucket = total.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
            elif isinstance(value, list):
                current = total.setdefault(key, [0] * len(value))
                total[key] = [a + b for a, b in zip(current, value)]
            elif key == "alive":
                total[key] = min(total.get(key, 1), value)
            elif key == "processes":
                # Every stage holds every process's resource.
                total[key] = max(total.get(key, 0), value)
            else:
                total[key] = total.get(key, 0) + value
    if reds:
        total["red"] = merge_red(reds, max(r.get("limit", DEFAULT_SERIES_LIMIT) for r in reds))
    return total


def _worker_main(sock: socket.socket, make_stage) -> None:
    # The main process owns signals: it stops the workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stage = make_stage()
    settle_heap()
    sock.settimeout(STATS_INTERVAL_S)
    # One receive buffer for the worker's life: recv(n) would allocate n
    # bytes per message, and glibc serves such large, short-lived blocks
    # from the heap once it has freed one, which fragments it.
    buffer = bytearray(MESSAGE_MAX_BYTES)
    view = memoryview(buffer)
    next_stats = next_housekeeping = time.monotonic()
    stop_timeout = 1.0
    last_sent = None
    received = False
    try:
        while True:
            try:
                size = sock.recv_into(buffer)
            except socket.timeout:
                size = None
            if size == 0:
                break   # the main process is gone: flush and leave
            if size:
                received = True
                kind, payload = pickle.loads(view[:size])
                if kind == "exchanges":
                    stage.submit(payload)
                elif kind == "stop":
                    stop_timeout = payload
                    break
            now = time.monotonic()
            if now >= next_stats:
                snapshot = stage.snapshot()
                # An unchanged snapshot is not sent: the main process's
                # reader thread then stays asleep too.
                if snapshot != last_sent:
                    sock.sendall(pickle.dumps(("stats", snapshot)))
                    last_sent = snapshot
                next_stats = now + STATS_INTERVAL_S
                # Nothing received and nothing left to export: no counter can
                # move before the next message, which ends the wait at once.
                # Each wake-up costs CPU (a VM's timer and the GIL), so an
                # idle worker wakes for housekeeping only.
                idle = not received and stage.export_idle()
                sock.settimeout(HOUSEKEEPING_INTERVAL_S if idle else STATS_INTERVAL_S)
                received = False
            if now >= next_housekeeping:
                stage.housekeeping()
                next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
    finally:
        stage.shutdown(stop_timeout)
        try:
            sock.settimeout(1.0)
            sock.sendall(pickle.dumps(("stats", stage.snapshot())))
        except OSError:
            pass
    os._exit(0)


class _Worker:
    def __init__(self, make_stage):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (parent, child):
            for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
                    break
                except OSError:
                    continue
        pid = os.fork()
        if pid == 0:
            parent.close()
            try:
                _worker_main(child, make_stage)
            finally:
                os._exit(1)
        child.close()
        parent.settimeout(SEND_TIMEOUT_S)
        self.pid = pid
        self.sock = parent
        self.snapshot: dict = {}
        self.exited = False
        # alive() runs on the /readyz thread and join() on the shutdown path:
        # one lock makes a single reaper, so that neither waits on a pid the
        # other has reaped (ECHILD) nor signals one the kernel has reused.
        self._reap_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_stats, name=f"span-worker-{pid}",
                                        daemon=True)
        self._reader.start()

    def _read_stats(self) -> None:
        # A second descriptor, so that the send timeout does not apply here.
        reader = socket.socket(fileno=os.dup(self.sock.fileno()))
        reader.settimeout(None)
        buffer = bytearray(8 << 20)   # stats: a few KB, up to MBs of request-metric series
        view = memoryview(buffer)
        try:
            while True:
                size = reader.recv_into(buffer)
                if not size:
                    return
                kind, payload = pickle.loads(view[:size])
                if kind == "stats":
                    self.snapshot = payload
        except OSError:
            return
        finally:
            reader.close()

    def _reap(self, block: bool) -> bool:
        """Whether the worker has exited; reaps it at most once."""
        with self._reap_lock:
            if not self.exited:
                try:
                    pid, _ = os.waitpid(self.pid, 0 if block else os.WNOHANG)
                except ChildProcessError:
                    pid = self.pid   # reaped outside this object: gone all the same
                self.exited = bool(pid)
            return self.exited

    def alive(self) -> bool:
        return not self._reap(block=False)

    def stop(self, timeout_s: float) -> None:
        try:
            self.sock.sendall(pickle.dumps(("stop", max(0.1, timeout_s - 0.3))))
        except OSError:
            pass

    def join(self, deadline: float) -> None:
        while not self._reap(block=False) and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._reap_lock:
            if not self.exited:
                os.kill(self.pid, signal.SIGKILL)
        self._reap(block=True)
        self._reader.join(max(0.0, deadline - time.monotonic()) + 0.2)
        self.sock.close()


class SpanWorkerPool:
    """A span stage in this process for the batches the capture loop drains
    while it keeps up, and span stages in `count` forked processes, round
    robin, for the larger ones.  Create it before anything starts threads or
    opens BPF objects."""

    def __init__(self, make_stage, count: int):
        # What exists now (modules, mostly) moves out of the collector's
        # reach before the forks: a worker's own collections would otherwise
        # write to every object's header, and so copy every page the worker
        # shares with this process.
        freeze_heap()
        self.workers = [_Worker(make_stage) for _ in range(count)]
        # After the forks: its exporter's thread belongs to this process only.
        self.local = make_stage()
        self._next = 0
        self.exchanges_dropped = 0

    def submit(self, exchanges: list) -> None:
        # Resources lead the list (agent/runtime/pipeline.py); every stage needs them.
        leading = 0
        while leading < len(exchanges) and exchanges[leading][0] == RESOURCE_MARKER:
            leading += 1
        if leading:
            resources = exchanges[:leading]
            self.local.submit(resources)
            for worker in self.workers:
                self._send(resources, worker)
            exchanges = exchanges[leading:]
        if len(exchanges) <= SPILL_EXCHANGES:
            if exchanges:
                self.local.submit(exchanges)
            return
        for i in range(0, len(exchanges), MESSAGE_EXCHANGES):
            self._send(exchanges[i:i + MESSAGE_EXCHANGES])

    def _send(self, chunk: list, worker=None) -> None:
        message = pickle.dumps(("exchanges", chunk), pickle.HIGHEST_PROTOCOL)
        if len(message) > MESSAGE_MAX_BYTES and len(chunk) > 1:
            half = len(chunk) // 2
            self._send(chunk[:half], worker)
            self._send(chunk[half:], worker)
            return
        if worker is None:
            worker = self.workers[self._next]
            self._next = (self._next + 1) % len(self.workers)
        try:
            if len(message) > MESSAGE_MAX_BYTES:
                raise OSError("exchange larger than a message")
            worker.sock.sendall(message)
        except (socket.timeout, OSError):
            self.exchanges_dropped += len(chunk)

    def housekeeping(self) -> None:
        self.local.housekeeping()     # the workers keep house themselves

    def alive(self) -> bool:
        return self.local.alive() and all(w.alive() and w.snapshot.get("alive", 1)
                                          for w in self.workers)

    def snapshot(self) -> dict:
        merged = merge_snapshots([self.local.snapshot()]
                                 + [w.snapshot for w in self.workers if w.snapshot])
        merged["exchanges_dropped"] = merged.get("exchanges_dropped", 0) + self.exchanges_dropped
        return merged

    def shutdown(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for worker in self.workers:
            worker.stop(timeout_s)
        self.local.shutdown(timeout_s)
        for worker in self.workers:
            worker.join(deadline)
