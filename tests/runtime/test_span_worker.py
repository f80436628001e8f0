"""The span stage's split between the main process and its forked workers
(agent/runtime/span_worker.py), on exchanges matched from a real recording, exported
over OTLP/HTTP to a local receiver.  No privileges."""
from __future__ import annotations

import pytest

from agent.protocols.router import ProtocolRouter
from agent.export import create_sink
from agent.capture.recording import read_records
from agent.spans.redact import Redactor
from agent.spans.routes import RouteNamer
from agent.spans.sampling import Sampler
from agent.spans.builder import RESOURCE_MARKER, ExchangeLinker
from agent.runtime.span_worker import SPILL_EXCHANGES, LocalSpanStage, SpanWorkerPool
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

    def make_stage():
        return LocalSpanStage(create_sink("otlp", environ=env), Redactor(),
                              Sampler.from_environment({}), RouteNamer(),
                              exporter_options={"environ": env})
    return SpanWorkerPool(make_stage, workers)


def test_batches_the_loop_keeps_up_with_stay_in_the_main_process(receiver):
    resources, exchanges = recorded_exchanges()
    pool = make_pool(receiver)
    try:
        pool.submit(resources + exchanges)
        pool.submit(exchanges)
        assert receiver.wait_for(lambda spans: len(spans) >= 2 * len(exchanges), timeout=10)
    finally:
        pool.shutdown(5.0)
    assert pool.local.snapshot()["spans_exported"] == 2 * len(exchanges)
    assert pool.workers[0].snapshot.get("spans_exported") == 0
    assert pool.snapshot()["spans_exported"] == 2 * len(exchanges)
    assert all(s.resource["service.name"].startswith("recorded-") for s in receiver.spans)


def test_a_batch_larger_than_a_poll_keeps_up_with_goes_to_the_workers(receiver):
    resources, exchanges = recorded_exchanges()
    big = exchanges * (SPILL_EXCHANGES // len(exchanges) + 1)
    assert len(big) > SPILL_EXCHANGES
    pool = make_pool(receiver, workers=2)
    try:
        pool.submit(resources + exchanges)      # resources reach every stage
        pool.submit(big)
        total = len(exchanges) + len(big)
        assert receiver.wait_for(lambda spans: len(spans) >= total, timeout=10)
    finally:
        pool.shutdown(5.0)
    assert pool.local.snapshot()["spans_exported"] == len(exchanges)
    by_worker = [w.snapshot.get("spans_exported") for w in pool.workers]
    assert sum(by_worker) == len(big) and all(by_worker)
    snapshot = pool.snapshot()
    assert snapshot["spans_exported"] == total and snapshot["exchanges_dropped"] == 0
    # Every stage holds every process's resource: the gauge counts them once.
    assert snapshot["processes"] == len(resources)
    # Spans the workers built carry the resources too.
    assert len(receiver.spans) == total
    assert all(s.resource["service.name"].startswith("recorded-") for s in receiver.spans)


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
    worker = pool.workers[0]
    try:
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
