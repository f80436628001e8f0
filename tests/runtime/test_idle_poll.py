"""The capture loop's poll: as long as gathers a batch at the rate records
come, between the usual interval and the longest, and a second when a turn
had nothing to do (agent/runtime/pipeline.py).  No privileges."""
from __future__ import annotations

from agent.capture.ringbuf import POLL_INTERVAL_S
from agent.capture.bcc_loader import BccObject
from agent.capture.loader import CoreObject
from agent.runtime.pipeline import (BATCH_TARGET_RECORDS, IDLE_POLL_S, LONGEST_POLL_S, Pipeline,
                                    idle_poll_s)
from agent.runtime.span_stage import LocalSpanStage
from agent.export import create_sink
from agent.spans.redact import Redactor
from agent.spans.routes import RouteNamer
from agent.spans.sampling import Sampler


class ScansDue:
    def __init__(self, at: float):
        self.at = at

    def next_due(self) -> float:
        return self.at


def make_pipeline(tls=None) -> Pipeline:
    sampler = Sampler.from_environment({})
    stage = LocalSpanStage(create_sink("none"), Redactor(), sampler, RouteNamer())
    return Pipeline(None, stage, sampler, tls=tls)


def waits(pipeline: Pipeline, turns: list[tuple[float, int]]) -> list[float]:
    """The wait after each turn, given when it started and what it drained."""
    return [pipeline._ring_wait_s(drained, now) for now, drained in turns]


def test_an_idle_agent_polls_once_a_second():
    pipeline = make_pipeline()
    assert IDLE_POLL_S == 1.0
    assert waits(pipeline, [(100.0, 0), (101.0, 0)]) == [IDLE_POLL_S, IDLE_POLL_S]
    # Records again: back to the rate rule at once.
    assert waits(pipeline, [(102.0, 10)]) == [LONGEST_POLL_S]


def test_the_wait_gathers_a_batch_at_the_rate_records_come():
    pipeline = make_pipeline()
    heavy = BATCH_TARGET_RECORDS * 4            # records in the 50 ms since the last turn
    assert waits(pipeline, [(100.0, 0), (100.05, heavy)])[-1] == POLL_INTERVAL_S
    pipeline = make_pipeline()
    half = BATCH_TARGET_RECORDS // 2            # half a batch in 50 ms: wait 100 ms
    assert abs(waits(pipeline, [(100.0, 0), (100.05, half)])[-1] - 0.1) < 1e-9
    pipeline = make_pipeline()
    light = 50                                  # 250 records/s: the longest poll
    assert waits(pipeline, [(100.0, 0), (100.2, light)])[-1] == LONGEST_POLL_S
    # The rate going up brings the usual poll back at the next turn.
    assert waits(pipeline, [(100.4, 2 * heavy)]) == [POLL_INTERVAL_S]


def test_without_a_wake_up_at_the_fill_mark_the_idle_wait_stays_short():
    # BCC's rings wake nobody as they fill: a burst after the quiet must
    # not wait a second in the ring.
    assert idle_poll_s(BccObject) == LONGEST_POLL_S
    assert idle_poll_s(CoreObject) == IDLE_POLL_S


def test_held_exchanges_keep_the_wait_at_the_longest_poll():
    # They leave at most LONGEST_POLL_S after their deadline, not a second.
    pipeline = make_pipeline()
    assert pipeline.linker.client_wait.hold((), None, ("127.0.0.1", 40000), now=100.0)
    assert waits(pipeline, [(100.0, 0), (100.2, 0)]) == [LONGEST_POLL_S, LONGEST_POLL_S]


def test_a_tls_scan_due_sooner_shortens_the_wait():
    pipeline = make_pipeline(tls=ScansDue(at=100.12))
    assert abs(waits(pipeline, [(100.0, 0)])[-1] - 0.12) < 1e-9
    pipeline = make_pipeline(tls=ScansDue(at=99.0))   # overdue: the usual poll, never less
    assert waits(pipeline, [(100.0, 0)])[-1] == POLL_INTERVAL_S
