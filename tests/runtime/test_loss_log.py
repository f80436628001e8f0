"""The rate-limited loss log (agent/loss_log.py): a loss is logged at once,
then at most once per interval with the count since the previous line, and
an episode ends with a line whose total is everything lost in it."""
from __future__ import annotations

import logging
import re

import pytest

from agent.loss_log import LossLog


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def loss_log(clock, **kwargs) -> LossLog:
    return LossLog("widgets lost", "widgets recovered: none lost", {"full": "queue full",
                                                                     "failed": "send failed"},
                   interval_s=5.0, clock=clock, wall_clock=lambda: 0.0, **kwargs)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.loss_log"]


def test_first_loss_at_once_then_one_line_per_interval_then_recovery(clock, caplog):
    caplog.set_level(logging.WARNING)
    log = loss_log(clock)
    log.lost("full", 3)
    assert len(lines(caplog)) == 1
    assert lines(caplog)[0].startswith("widgets lost: 3 (queue full); 3 lost since")
    for _ in range(4):
        clock.now += 1.0
        log.lost("full", 10)
        log.tick()
    assert len(lines(caplog)) == 1            # within the interval: counted, not logged
    clock.now += 1.5
    log.lost("failed", 2)
    assert lines(caplog)[1].startswith("widgets lost: 2 (send failed); 40 (queue full); 45 lost since")
    # No recovery while nothing was delivered, however long it is quiet.
    clock.now += 60
    log.tick()
    assert len(lines(caplog)) == 2 and log.losing
    log.delivered()
    log.tick()
    assert lines(caplog)[2].startswith("widgets recovered: none lost for 60 s; 45 lost since")
    assert not log.losing
    # A new episode counts from zero (its first line an interval after the
    # last line at the earliest).
    clock.now += 5
    log.lost("full", 1)
    assert lines(caplog)[3].startswith("widgets lost: 1 (queue full); 1 lost since")


def test_delivery_soon_after_a_loss_is_not_a_recovery(clock, caplog):
    caplog.set_level(logging.WARNING)
    log = loss_log(clock)
    log.lost("full", 1)
    clock.now += 1
    log.delivered()
    log.tick()
    assert len(lines(caplog)) == 1
    clock.now += 5
    log.tick()
    assert re.match(r"widgets recovered: none lost for 6 s; 1 lost since", lines(caplog)[1])


def test_detail_goes_with_its_reasons_only(clock, caplog):
    caplog.set_level(logging.WARNING)
    log = loss_log(clock, detail_reasons=("failed",))
    log.detail = "503: unavailable"
    log.lost("full", 1)
    clock.now += 5
    log.lost("failed", 1)
    assert "[503: unavailable]" not in lines(caplog)[0]
    assert "(send failed) [503: unavailable]" in lines(caplog)[1]
