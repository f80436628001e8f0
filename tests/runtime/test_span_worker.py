"""The span stage's split between the main process and its worker processes
(agent/runtime/span_worker.py), on exchanges matched from a real recording, exported
over OTLP/HTTP to a local receiver.  No privileges."""
from __future__ import annotations

import logging
import os
import re
import signal

import pytest

from agent.protocols.router import ProtocolRouter
from agent.capture.recording import read_records
from agent.spans.sampling import Sampler
from agent.spans.builder import RESOURCE_MARKER, ExchangeLinker
from agent.runtime.span_stage import StageSettings
from agent.runtime.span_worker import SPILL_EXCHANGES, SpanWorkerPool
from otlp_receiver import OtlpReceiver
from test_pipeline_replay import RECORDING


@pytest.fixture
def receiver():
    r = OtlpReceiver().start("http")
    yield r
    r.stop()


def recorded_exchanges() -> tuple[list, list]:
    """The recording's resources, as the pipeline announces them, and its
    exchanges."""
    tracker = ProtocolRouter()
    linker = ExchangeLinker(Sampler.from_environment({}))
    exchanges = linker.exchanges(tracker.process(read_records(RECORDING)))
    resources = [(RESOURCE_MARKER, pid, [("service.name", f"recorded-{pid}")])
                 for pid in sorted(tracker.new_pids)]
    assert exchanges and resources
    return resources, exchanges


def make_pool(receiver, workers: int = 1) -> SpanWorkerPool:
    env = {**receiver.env, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    return SpanWorkerPool(StageSettings(exporter="otlp", environ=env,
                                        exporter_options={"environ": env}), workers)


def wait_ready(pool: SpanWorkerPool, timeout: float = 10.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not all(w.ready for w in pool.workers):
        assert time.monotonic() < deadline, "span workers not ready"
        assert all(w.alive() for w in pool.workers), "a span worker exited"
        time.sleep(0.02)


def load_starts_the_workers(pool: SpanWorkerPool, batch: list) -> None:
    """One batch over SPILL_EXCHANGES is one late poll: built here, no
    worker started.  A second within a second is a load: the workers start
    (that batch is built here too, while they do), and a third goes to them."""
    import psutil
    pool.submit(batch)
    assert pool.workers == []
    pool.submit(batch)
    assert len(pool.workers) == pool.count
    assert {p.pid for p in psutil.Process().children()} >= {w.pid for w in pool.workers}
    wait_ready(pool)
    pool.submit(batch)


def test_batches_the_loop_keeps_up_with_stay_in_the_main_process_and_start_no_worker(receiver):
    resources, exchanges = recorded_exchanges()
    pool = make_pool(receiver)
    try:
        pool.submit(resources + exchanges)
        pool.submit(exchanges)
        assert receiver.wait_for(lambda spans: len(spans) >= 2 * len(exchanges), timeout=10)
        # An agent that keeps up holds no worker's memory.
        assert pool.workers == []
    finally:
        pool.shutdown(5.0)
    assert pool.local.snapshot()["spans_exported"] == 2 * len(exchanges)
    assert pool.snapshot()["spans_exported"] == 2 * len(exchanges)
    assert all(s.resource["service.name"].startswith("recorded-") for s in receiver.spans)


def test_a_batch_larger_than_a_poll_keeps_up_with_starts_the_workers_and_goes_to_them(receiver):
    resources, exchanges = recorded_exchanges()
    big = exchanges * (SPILL_EXCHANGES // len(exchanges) + 1)
    assert len(big) > SPILL_EXCHANGES
    pool = make_pool(receiver, workers=2)
    try:
        # Resources announced before the workers exist reach them too.
        pool.submit(resources + exchanges)
        load_starts_the_workers(pool, big)
        total = len(exchanges) + 3 * len(big)
        assert receiver.wait_for(lambda spans: len(spans) >= total, timeout=10)
    finally:
        pool.shutdown(5.0)
    # The batch that started the workers was built here, while they started.
    assert pool.local.snapshot()["spans_exported"] == len(exchanges) + 2 * len(big)
    by_worker = [w.snapshot.get("spans_exported") for w in pool.workers]
    assert sum(by_worker) == len(big) and all(by_worker)
    snapshot = pool.snapshot()
    assert snapshot["spans_exported"] == total and snapshot["exchanges_dropped"] == 0
    # Every stage holds every process's resource: the gauge counts them once.
    assert snapshot["processes"] == len(resources)
    # Spans the workers built carry the resources too.
    assert len(receiver.spans) == total
    assert all(s.resource["service.name"].startswith("recorded-") for s in receiver.spans)
    assert not any(w.alive() for w in pool.workers)


def test_batches_a_stopped_worker_cannot_take_are_dropped_counted_and_logged(receiver, caplog):
    """A worker that takes nothing (stopped here; on a node, one starved of
    CPU) fills its socket; then each batch waits SEND_TIMEOUT_S and is
    dropped, counted, and logged (rate-limited: here every loss gets its
    line, so that the lines add up to the counter)."""
    resources, exchanges = recorded_exchanges()
    big = exchanges * (SPILL_EXCHANGES // len(exchanges) + 1)
    pool = make_pool(receiver)
    pool.loss_log.interval_s = 0.0
    stopped = None
    try:
        pool.submit(resources + exchanges)
        load_starts_the_workers(pool, big)
        stopped = pool.workers[0].pid
        os.kill(stopped, signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger="agent.loss_log"):
            # The socket holds hundreds of batches (pickled, the recording's
            # exchanges repeated are small).
            for _ in range(20000):
                pool.submit(big)
                if pool.exchanges_dropped:
                    break
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        pool.shutdown(5.0)
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("spans lost at a busy span worker")]
    assert pool.exchanges_dropped > 0 and lines, pool.snapshot()
    assert "CPU is short" in lines[0]
    assert int(re.search(r"; (\d+) lost since", lines[-1]).group(1)) == pool.exchanges_dropped
    assert pool.snapshot()["exchanges_dropped"] == pool.exchanges_dropped


def test_readyz_and_shutdown_reaping_the_same_worker_at_once_both_succeed(receiver, monkeypatch):
    """/readyz asks alive() on the metrics thread while shutdown joins the
    workers: both end in waitpid on the same pid.  A waitpid that pauses after
    reaping (as a preempted thread would) widens the window in which the other
    thread would ask the kernel about a pid it no longer has."""
    import os
    import threading
    import time

    real_waitpid = os.waitpid

    def preempted_after_reaping(pid, options):
        result = real_waitpid(pid, options)
        if result[0]:
            time.sleep(0.1)
        return result

    pool = make_pool(receiver)
    pool.start_workers()
    wait_ready(pool)
    monkeypatch.setattr(os, "waitpid", preempted_after_reaping)
    stop = threading.Event()
    readyz_errors = []

    def readyz():
        # The worker's own check: pool.alive() stops asking the workers once
        # shutdown has stopped the main process's stage.
        while not stop.is_set():
            try:
                pool.workers[0].alive()
            except Exception as exc:      # noqa: BLE001 - the test reports it
                readyz_errors.append(exc)
                return

    probe = threading.Thread(target=readyz)
    probe.start()
    try:
        pool.shutdown(5.0)
    finally:
        stop.set()
        probe.join(5)
    assert readyz_errors == []
    assert not pool.workers[0].alive()
    assert pool.workers[0].exited


def test_an_idle_worker_reports_once_then_again_as_soon_as_it_has_exported(receiver, monkeypatch):
    """Each wake-up of an idle agent costs CPU: a worker with nothing to do
    sends its stats once, not twice a second, and the main process still
    sees every export the moment the worker has done it."""
    import os
    import pickle
    import time
    main = os.getpid()
    stats_received = []
    real_loads = pickle.loads

    def counting_loads(data):
        message = real_loads(data)
        if os.getpid() == main and message[0] == "stats":
            stats_received.append(time.monotonic())
        return message
    monkeypatch.setattr("agent.runtime.span_worker.pickle.loads", counting_loads)
    resources, exchanges = recorded_exchanges()
    big = exchanges * (SPILL_EXCHANGES // len(exchanges) + 1)
    pool = make_pool(receiver)
    pool.start_workers()
    worker = pool.workers[0]
    try:
        wait_ready(pool)
        time.sleep(2.5)
        assert len(stats_received) == 1 and worker.snapshot["spans_exported"] == 0
        pool.submit(resources + big)
        assert receiver.wait_for(lambda spans: len(spans) >= len(big), timeout=10)
        deadline = time.monotonic() + 2.0
        while worker.snapshot["spans_exported"] < len(big) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.snapshot["spans_exported"] == len(big)
    finally:
        pool.shutdown(5.0)


def test_workers_stop_after_a_quiet_spell_their_counts_stay_and_a_new_load_starts_them_again(
        receiver, monkeypatch):
    import time
    import agent.runtime.span_worker as span_worker
    monkeypatch.setattr(span_worker, "WORKER_IDLE_STOP_S", 0.5)
    resources, exchanges = recorded_exchanges()
    big = exchanges * (SPILL_EXCHANGES // len(exchanges) + 1)
    pool = make_pool(receiver)
    try:
        pool.submit(resources + exchanges)
        pool.start_workers()
        first = pool.workers[0]
        wait_ready(pool)
        pool.submit(big)
        assert receiver.wait_for(lambda spans: len(spans) >= len(exchanges) + len(big), 10)
        deadline = time.monotonic() + 5
        while first.snapshot.get("spans_exported") != len(big):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = pool.snapshot()
        time.sleep(0.6)
        pool.housekeeping()
        assert pool.workers == [] and pool.stopping == [first]
        deadline = time.monotonic() + 5
        while pool.stopping:
            assert time.monotonic() < deadline, "the idle worker did not stop"
            time.sleep(0.05)
            pool.housekeeping()
        assert pool.processes() == [] and not first.alive()
        # Its spans stay counted: /metrics' counters do not go back.
        after = pool.snapshot()
        for key in ("spans_exported", "spans_server", "spans_client"):
            assert after[key] == before[key], key
        assert after["queue_depth"] == 0
        # A new load starts a new worker, which gets the resources too (the
        # recording's processes are gone: announced again, as new ones are).
        pool.submit(resources)
        load_starts_the_workers(pool, big)
        assert pool.workers[0] is not first
        total = len(exchanges) + 4 * len(big)
        assert receiver.wait_for(lambda spans: len(spans) >= total, timeout=10)
    finally:
        pool.shutdown(5.0)
    assert pool.snapshot()["spans_exported"] == total
    assert all(s.resource["service.name"].startswith("recorded-") for s in receiver.spans)
