"""Span worker processes: the span stage (agent/runtime/span_stage.py) in
processes of its own, for the batches the main process cannot build while
it keeps up with the ring.

Python runs one thread at a time per process: with the stage in a worker,
reassembly in the main process and span building plus export use separate
cores.  That pays only when one core is not enough.  While the capture loop
keeps up, a second busy process is a second core the traced processes find
taken, and handing exchanges over costs pickling
(docs/decisions/span-worker-spill.md; figures in docs/performance.md).  So
the pool builds a drained batch in the main process, and hands it to the
workers only when it holds more than SPILL_EXCHANGES exchanges: the ring
held more than a poll's worth, so the loop is behind or the load is heavy.

The workers start when two such batches come within a second (a single
late poll is not a load), each a fresh interpreter (`python -m
agent.runtime.span_worker FD`), not a fork: by then the main process runs
threads (exporter, /metrics) whose locks a fork would copy mid-use.  Until
a worker has made its stage, the main process builds the batches.  After a
minute without such a batch they stop, their counters kept: an agent that
keeps up holds no worker's memory.

Main -> worker messages (pickled, one per SOCK_SEQPACKET datagram):
  ("settings", (StageSettings, log level))   first, once
  ("exchanges", [tuple, ...])   ("stop", seconds)
Worker -> main: ("stats", snapshot) as soon as its stage is made (which
tells the main process it is ready), then at most twice a second when it
changed, and once more at the end.
The main process blocks at most SEND_TIMEOUT_S on a busy worker (its
backlog then stays in the ring buffer, where the kernel counts overflow);
batches it still cannot hand over are dropped and counted.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

from agent.loss_log import LossLog
from agent.runtime.child_process import LOG_FORMAT, child_environment
from agent.runtime.heap import settle_heap
from agent.runtime.span_stage import StageSettings, merge_snapshots
from agent.spans.builder import RESOURCE_MARKER

log = logging.getLogger("otel_ebpf")

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
# Workers start when a second batch spills within this long of the one
# before, and stop after this long without one: their memory goes back to
# the node once the load has passed.
WORKER_START_WINDOW_S = 1.0
WORKER_IDLE_STOP_S = 60.0
WORKER_STOP_S = 2.0
# A stopped worker's figures that are not counters.
_GAUGES = ("queue_depth", "alive", "processes")


def main(argv: list[str]) -> None:
    """A worker process: its socket's descriptor is its one argument."""
    # The main process owns signals: it stops the workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    buffer = bytearray(MESSAGE_MAX_BYTES)
    size = sock.recv_into(buffer)
    if not size:
        os._exit(0)
    kind, (settings, log_level) = pickle.loads(memoryview(buffer)[:size])
    if kind != "settings":
        raise SystemExit(f"span worker: expected its settings first, got {kind!r}")
    logging.basicConfig(level=log_level, stream=sys.stderr, format=LOG_FORMAT)
    _serve(sock, settings, buffer)


def _serve(sock: socket.socket, settings: StageSettings, buffer: bytearray) -> None:
    stage = settings.make()
    settle_heap()
    sock.settimeout(STATS_INTERVAL_S)
    # One receive buffer for the worker's life: recv(n) would allocate n
    # bytes per message, and glibc serves such large, short-lived blocks
    # from the heap once it has freed one, which fragments it.
    view = memoryview(buffer)
    # The first stats say the stage is made: the main process hands batches
    # over from then on.
    last_sent = stage.snapshot()
    sock.sendall(pickle.dumps(("stats", last_sent)))
    next_housekeeping = time.monotonic()
    next_stats = next_housekeeping + STATS_INTERVAL_S
    stop_timeout = 1.0
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
    """A worker process and the main process's end of its socket."""

    def __init__(self, settings: StageSettings, resources: list):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (parent, child):
            for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
                    break
                except OSError:
                    continue
        # A process group of its own: a terminal's Ctrl-C reaches the main
        # process, which stops its workers in order.  Not a session of its
        # own: with autogroup scheduling a session is a group the CPU is
        # shared between, and the worker's place is the agent's (as a fork's).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.runtime.span_worker", str(child.fileno())],
            env=child_environment(), pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL, process_group=0)
        child.close()
        self.started = time.monotonic()
        self.pid = self.process.pid
        self.sock = parent
        self.snapshot: dict = {}
        # Set by the reader thread at the worker's first stats: its stage is made.
        self.ready = False
        parent.settimeout(SEND_TIMEOUT_S)
        parent.sendall(pickle.dumps(("settings", (settings, logging.getLogger().level))))
        # The resources announced before it started: every stage needs them.
        if resources:
            parent.sendall(pickle.dumps(("exchanges", resources), pickle.HIGHEST_PROTOCOL))
        self._reader = threading.Thread(target=self._read_stats, name=f"span-worker-{self.pid}",
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
                    if not self.ready:
                        self.ready = True
                        log.info("span worker %d ready %.2f s after its start", self.pid,
                                 time.monotonic() - self.started)
        except OSError:
            return
        finally:
            reader.close()

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    def alive(self) -> bool:
        # Popen reaps under a lock of its own: /readyz's thread and the
        # shutdown path may ask at once.
        return self.process.poll() is None

    def stop(self, timeout_s: float) -> None:
        try:
            self.sock.sendall(pickle.dumps(("stop", max(0.1, timeout_s - 0.3))))
        except OSError:
            pass

    def join(self, deadline: float) -> None:
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(max(0.0, deadline - time.monotonic()) + 0.2)
        self.sock.close()


class SpanWorkerPool:
    """A span stage in this process for the batches the capture loop drains
    while it keeps up, and up to `count` worker processes, round robin, for
    the larger ones: started when such batches come twice within
    WORKER_START_WINDOW_S (one late poll is not a load), stopped after
    WORKER_IDLE_STOP_S without one."""

    def __init__(self, settings: StageSettings, count: int, console_stream=None):
        self.settings = settings
        self.count = count
        self.local = settings.make(console_stream)
        self.workers: list[_Worker] = []
        # Workers told to stop, until they have exited; then their counters
        # go on in `retired`, so that /metrics' totals never go back.
        self.stopping: list[_Worker] = []
        self.retired: dict = {}
        self.last_spill = float("-inf")
        self._next = 0
        self.exchanges_dropped = 0
        self.loss_log = LossLog(
            "spans lost at a busy span worker", "span workers caught up: no spans lost",
            {"worker_busy": f"a worker did not take its batch within {SEND_TIMEOUT_S:.0f} s: "
                            "the node's CPU is short of what the load needs"})

    def start_workers(self) -> None:
        """Start the workers, if not started yet; each is handed batches once
        its stage is made."""
        if self.workers:
            return
        resources = [(RESOURCE_MARKER, pid, attributes)
                     for pid, attributes in self.local.resources.announced()]
        for _ in range(self.count):
            try:
                self.workers.append(_Worker(self.settings, resources))
            except OSError as exc:
                log.warning("could not start a span worker (%s): spans are built in the "
                            "main process", exc)
                break

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
        if len(exchanges) > SPILL_EXCHANGES:
            now = time.monotonic()
            if not self.workers and now - self.last_spill <= WORKER_START_WINDOW_S:
                self.start_workers()
            self.last_spill = now
            ready = [w for w in self.workers if w.ready]
            if ready:
                for i in range(0, len(exchanges), MESSAGE_EXCHANGES):
                    self._send(exchanges[i:i + MESSAGE_EXCHANGES], ready=ready)
                return
        if exchanges:
            self.local.submit(exchanges)

    def _send(self, chunk: list, worker=None, ready=None) -> None:
        message = pickle.dumps(("exchanges", chunk), pickle.HIGHEST_PROTOCOL)
        if len(message) > MESSAGE_MAX_BYTES and len(chunk) > 1:
            half = len(chunk) // 2
            self._send(chunk[:half], worker, ready)
            self._send(chunk[half:], worker, ready)
            return
        if worker is None:
            worker = ready[self._next % len(ready)]
            self._next += 1
        try:
            if len(message) > MESSAGE_MAX_BYTES:
                raise OSError("exchange larger than a message")
            worker.sock.sendall(message)
        except (socket.timeout, OSError):
            self.exchanges_dropped += len(chunk)
            self.loss_log.lost("worker_busy", len(chunk))
        else:
            self.loss_log.delivered()

    def housekeeping(self) -> None:
        self.local.housekeeping()     # the workers keep house themselves
        self.loss_log.tick()
        now = time.monotonic()
        if self.workers and now - self.last_spill > WORKER_IDLE_STOP_S:
            for worker in self.workers:
                worker.stop(WORKER_STOP_S)
            self.stopping += self.workers
            self.workers = []
        for worker in [w for w in self.stopping if not w.alive()]:
            worker.join(now)
            self.stopping.remove(worker)
            final = {k: v for k, v in worker.snapshot.items() if k not in _GAUGES}
            self.retired = merge_snapshots([self.retired, final]) if self.retired else final

    def alive(self) -> bool:
        return self.local.alive() and all(w.alive() and w.snapshot.get("alive", 1)
                                          for w in self.workers)

    def processes(self) -> list[int]:
        """Pids of the worker processes that have not exited."""
        return [w.pid for w in self.workers + self.stopping if not w.exited]

    def snapshot(self) -> dict:
        merged = merge_snapshots([self.local.snapshot()]
                                 + [w.snapshot for w in self.workers + self.stopping
                                    if w.snapshot]
                                 + ([self.retired] if self.retired else []))
        merged["exchanges_dropped"] = merged.get("exchanges_dropped", 0) + self.exchanges_dropped
        return merged

    def shutdown(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        workers = self.workers + self.stopping
        for worker in self.workers:
            worker.stop(timeout_s)
        self.local.shutdown(timeout_s)
        for worker in workers:
            worker.join(deadline)


if __name__ == "__main__":
    main(sys.argv[1:])
