"""The capture loop's poll: the usual interval while records come, a longer
one once the ring has stayed empty and nothing waits on the loop's clock
(agent/runtime/pipeline.py).  No privileges."""
from __future__ import annotations

from agent.capture.ringbuf import POLL_INTERVAL_S
from agent.runtime.pipeline import IDLE_AFTER_POLLS, IDLE_POLL_S, Pipeline
from agent.runtime.span_worker import LocalSpanStage
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


def waits(pipeline: Pipeline, drained: list[int], now: float = 100.0) -> list[float]:
    return [pipeline._ring_wait_s(n, now) for n in drained]


def test_the_loop_polls_longer_only_after_the_ring_stayed_empty():
    pipeline = make_pipeline()
    empty = [0] * IDLE_AFTER_POLLS
    assert waits(pipeline, empty) == [POLL_INTERVAL_S] * (IDLE_AFTER_POLLS - 1) + [IDLE_POLL_S]
    # The first records bring the usual poll back at once.
    assert waits(pipeline, [3, 0]) == [POLL_INTERVAL_S, POLL_INTERVAL_S]


def test_held_exchanges_keep_the_usual_poll():
    pipeline = make_pipeline()
    assert pipeline.linker.client_wait.hold((), None, ("127.0.0.1", 40000), now=100.0)
    assert waits(pipeline, [0] * (IDLE_AFTER_POLLS + 2)) == [POLL_INTERVAL_S] * (IDLE_AFTER_POLLS + 2)


def test_a_tls_scan_due_sooner_shortens_the_idle_poll():
    pipeline = make_pipeline(tls=ScansDue(at=100.12))
    assert abs(waits(pipeline, [0] * IDLE_AFTER_POLLS)[-1] - 0.12) < 1e-9
    pipeline = make_pipeline(tls=ScansDue(at=99.0))   # overdue: the usual poll, never less
    assert waits(pipeline, [0] * IDLE_AFTER_POLLS)[-1] == POLL_INTERVAL_S
