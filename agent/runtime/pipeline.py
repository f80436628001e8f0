"""The agent's main loop: drain -> reassemble and match -> link trace
context -> span stage (build spans, sample, export: agent/runtime/span_stage.py).

One thread runs the first three stages back to back on each batch drained
from the ring buffer (the batch list is the bounded queue between them, at
most `batch_records` long); the span stage runs in this process, and for
the batches of a heavy load behind a socket to its worker processes, and its
exporter behind its own bounded queue.  Every stage counts what it drops.
"""
from __future__ import annotations

import os
import threading
import time

from agent.capture.conn_sweep import ExitedConnSweep
from agent.capture.exec_record import parse_exec_record
from agent.capture.loss_watch import KernelLossWatch
from agent.protocols.router import ProtocolRouter
from agent.capture.loader import LoadedCapture
from agent.spans.sampling import Sampler
from agent.spans.resources import ResourceCache
from agent.spans.builder import RESOURCE_MARKER, ExchangeLinker
from agent.runtime.span_worker import SPILL_EXCHANGES, SpanWorkerPool
from agent.capture.ringbuf import POLL_INTERVAL_S

MAX_AWAITING_POD = 4096
SWEEP_EVERY = 15

# How long a server exchange may wait for its client's request record on
# this node (agent/spans/client_wait.py): the client's TLS write can reach
# the ring after the server's answer.
LINK_WAIT_S = 0.25

# Each turn of the loop has a fixed cost, whatever it drains: the wake-up
# itself (most of it on a VM) and a pass through every stage.  At 20 turns a
# second that made most of the agent's CPU at light load.  So the loop waits
# as long as gathers about BATCH_TARGET_RECORDS at the rate records came
# during the last turn, between the usual poll (POLL_INTERVAL_S) and
# LONGEST_POLL_S, and the longest while the ring is empty.  The target is
# half of SPILL_EXCHANGES, so that what a slow poll gathers is still built in
# this process rather than pickled for the span workers.  The kernel
# wakes the loop at once for what cannot wait (a ring past its fill mark,
# an exec, a new process); a due TLS scan shortens the wait.  Held server
# exchanges (the link wait) leave at most LONGEST_POLL_S after their
# deadline; at the rates that poll this slowly that is a few thousand
# exchanges at most, within the held table's bound.  A turn that drained
# nothing, with nothing held, waits IDLE_POLL_S: an idle node's agent wakes
# once a second, and a first record waits at most that long.  A burst
# after the quiet wakes the loop at the ring's fill mark; where nothing
# does (BCC), the idle wait stays LONGEST_POLL_S.
BATCH_TARGET_RECORDS = SPILL_EXCHANGES // 2
LONGEST_POLL_S = 0.2
IDLE_POLL_S = 1.0


def idle_poll_s(front_end) -> float:
    """The wait after a turn with nothing to do, for this front end (None:
    no capture, in tests)."""
    return IDLE_POLL_S if front_end is None or front_end.wakes_reader_at_fill else LONGEST_POLL_S


class Pipeline:
    """Drain, reassemble and match, link trace context; hand the exchanges
    to the span stage (in this process or in span workers)."""

    def __init__(self, capture: LoadedCapture, span_stage, sampler: Sampler,
                 batch_records: int = 4096, housekeeping_interval_s: float = 2.0,
                 selection=None, tls=None, k8s=None, cpu_yield=None, nat=None):
        self.capture = capture
        self.span_stage = span_stage
        self.protocols = ProtocolRouter()
        # A ConntrackResolver (agent/capture/conntrack.py), or None: the
        # router then keeps no list of new client connections.
        self.nat = nat
        if nat is not None:
            self.protocols.new_clients = []
        self.linker = ExchangeLinker(sampler, link_wait_s=LINK_WAIT_S)
        # Batches this large go to span worker processes, pickled: as plain
        # tuples, which pickle three times faster than the exchanges'
        # NamedTuple classes (the span factory reads both alike).
        self._pickled_above = SPILL_EXCHANGES if isinstance(span_stage, SpanWorkerPool) \
            else None
        # Reads resources only: the span stage keeps them, in its own process.
        self.resources = ResourceCache(
            k8s=k8s, exited_name=capture.process_name if capture is not None else None)
        # Containerised processes whose pod the k8s index did not know yet:
        # their resource is sent again once it does.  Beyond the bound they
        # are counted instead, and keep a resource without the pod.
        self._awaiting_pod: dict[int, None] = {}
        self.pod_waits_dropped = 0
        self.batch_records = batch_records
        self.housekeeping_interval_s = housekeeping_interval_s
        self.selection = selection
        self.tls = tls
        self.cpu_yield = cpu_yield
        self.records_drained = 0
        # Exited processes' kernel descriptor entries: swept after exits, and
        # every SWEEP_EVERY housekeepings for processes never traced far
        # enough to report their exit.
        self.conn_sweep = ExitedConnSweep(capture.front_end.map_fd("conns")) \
            if capture is not None else None
        self._housekeepings = 0
        # Records the probes could not write, exchanges they shed: logged
        # (rate-limited) at housekeeping, as /metrics counts them.
        self.kernel_losses = KernelLossWatch(capture) if capture is not None else None
        self._idle_poll_s = idle_poll_s(capture.front_end if capture is not None else None)
        self.last_loop_monotonic = time.monotonic()
        self._last_turn = None

    def drain_once(self) -> int:
        """Process what the ring holds, batch after full batch, until a batch
        comes out short: the ring was then caught up with.  Records written
        while that batch was processed wait for the next poll, and make part
        of a full-sized batch there instead of a small one now.  Returns
        records handled."""
        ring = self.capture.ring
        limit = self.batch_records
        handled = 0
        while True:
            records = ring.read_batch(limit)
            if not records:
                return handled
            handled += len(records)
            self.records_drained += len(records)
            protocols = self.protocols
            items = protocols.process(records)
            if protocols.tls_library_opens:
                if self.tls is not None:
                    self.tls.libraries_opened(protocols.tls_library_opens)
                protocols.tls_library_opens.clear()
            if protocols.new_clients:
                self._translate(protocols.new_clients)
            exchanges = self.linker.exchanges(items) if items else []
            if self._pickled_above is not None and len(exchanges) > self._pickled_above:
                exchanges = list(map(tuple, exchanges))
            if protocols.exec_records:
                self.resources.exec_recorded(map(parse_exec_record, protocols.exec_records))
                protocols.exec_records.clear()
            if protocols.new_pids:
                exchanges[:0] = [self._resource(pid) for pid in protocols.new_pids]
                protocols.new_pids.clear()
            if exchanges:
                self.span_stage.submit(exchanges)
            if len(records) < limit:
                return handled

    def _translate(self, connections: list) -> None:
        """One batched conntrack look-up for the client connections this
        batch opened, before their requests are linked: a connection to a
        Service address then links under the pod's tuple."""
        answers = self.nat.lookup([(c.conn_id, c.local_addr, c.local_port, c.remote_addr,
                                    c.remote_port) for c in connections])
        for conn, answer in zip(connections, answers):
            if answer is not None:
                conn.translated(*answer)
        connections.clear()

    def _resource(self, pid: int) -> tuple:
        attributes = self.resources.attributes_of(pid)
        if self.resources.k8s is not None:
            keys = {key for key, _ in attributes}
            if "container.id" in keys and "k8s.pod.name" not in keys:
                if len(self._awaiting_pod) < MAX_AWAITING_POD:
                    self._awaiting_pod[pid] = None
                else:
                    self.pod_waits_dropped += 1
        return (RESOURCE_MARKER, pid, attributes)

    def _resend_resources_with_pods(self) -> None:
        waiting, self._awaiting_pod = self._awaiting_pod, {}
        found = []
        for pid in waiting:
            resource = self._resource(pid)
            if pid not in self._awaiting_pod:
                found.append(resource)
            elif not os.path.exists(f"/proc/{pid}"):
                del self._awaiting_pod[pid]
        if found:
            self.span_stage.submit(found)

    def housekeeping(self) -> None:
        if self._awaiting_pod:
            self._resend_resources_with_pods()
        exited = self.protocols.exited
        self._housekeepings += 1
        if self.conn_sweep is not None and (exited or self._housekeepings % SWEEP_EVERY == 0):
            self.conn_sweep.sweep()
        if exited:
            # Their resources were read when their last records were drained.
            for pid in exited:
                self.resources.exited(pid)
                if self.capture is not None:
                    self.capture.forget_process(pid)
            exited.clear()
        self.protocols.expire(time.monotonic_ns())
        if self.kernel_losses is not None:
            self.kernel_losses.check()
        if self.nat is not None:
            self.nat.expire(time.monotonic())
        self.span_stage.housekeeping()
        if self.cpu_yield is not None:
            self.cpu_yield.check_guard()
        if self.selection is not None:
            self.selection.refresh(self.capture)

    def run(self, stop: threading.Event, deadline: float | None = None) -> None:
        next_housekeeping = time.monotonic() + self.housekeeping_interval_s
        cpu_yield = self.cpu_yield
        if cpu_yield is not None:
            cpu_yield.start()
        while not stop.is_set():
            now = time.monotonic()
            self.last_loop_monotonic = now
            if deadline is not None and now >= deadline:
                break
            if cpu_yield is not None:
                cpu_yield.turn(now)
            drained = self.drain_once()
            if drained < self.batch_records:
                wait_s = self._ring_wait_s(drained, now)
                if deadline is not None:
                    wait_s = max(0.0, min(wait_s, deadline - now))
                if cpu_yield is not None and wait_s > POLL_INTERVAL_S:
                    # The CPU guard judges the loop late from its usual poll.
                    cpu_yield.turn(now + wait_s - POLL_INTERVAL_S)
                self.capture.ring.wait(wait_s)
            execs = self.protocols.execs
            if execs:
                selection = self.selection
                if selection is not None and selection.exes:
                    # Every process's execs are reported: keep the selected ones.
                    selection.exec_seen(execs, self.capture)
                    execs[:] = [pid for pid in execs if pid in selection.known_pids]
                self.resources.exec_seen(execs)
                if self.tls is not None:
                    self.tls.exec_seen(execs)
                execs.clear()
            if self.tls is not None:
                self.tls.poll(now)
            held = self.linker.release_held()
            if held:
                self.span_stage.submit(held)
            if now >= next_housekeeping:
                self.housekeeping()
                next_housekeeping = now + self.housekeeping_interval_s

    def wake(self) -> None:
        """End the loop's wait for the ring at once (it may be in a poll of
        up to a second): safe in a signal handler."""
        capture = self.capture
        if capture is not None and capture.ring is not None:
            capture.ring.wake()

    def _ring_wait_s(self, drained: int, now: float) -> float:
        """How long to wait for the ring: long enough to gather a batch at
        the rate of the turn that just drained, within the poll's bounds;
        IDLE_POLL_S after a turn with nothing to do."""
        since = now - self._last_turn if self._last_turn is not None else POLL_INTERVAL_S
        self._last_turn = now
        if drained:
            wait_s = min(LONGEST_POLL_S, BATCH_TARGET_RECORDS * since / drained)
        else:
            wait_s = LONGEST_POLL_S if self.linker.holding() else self._idle_poll_s
        if self.tls is not None:
            wait_s = min(wait_s, self.tls.next_due() - now)
        return max(POLL_INTERVAL_S, wait_s)

    def stop(self, flush_timeout_s: float) -> None:
        """Detach the probes, process what the ring still holds, flush."""
        started = time.monotonic()
        if self.cpu_yield is not None:
            self.cpu_yield.stop()
        self.capture.detach()
        self.drain_once()
        if self.kernel_losses is not None:
            self.kernel_losses.check()   # what the last housekeeping did not see
        held = self.linker.release_held(flush=True)
        if held:
            self.span_stage.submit(held)
        self.span_stage.shutdown(max(0.1, flush_timeout_s - (time.monotonic() - started)))
        self.capture.close()
