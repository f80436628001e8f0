"""The interleaved kernel-side benchmark's bookkeeping
(benchmarks/wrk/interleave.py), without a load generator: which window a
request counts in, and what its ratios say."""
from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

WRK = Path(__file__).resolve().parents[2] / "benchmarks" / "wrk"


@pytest.fixture(scope="module")
def interleave():
    sys.path.insert(0, str(WRK))
    spec = importlib.util.spec_from_file_location("wrk_interleave", WRK / "interleave.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(WRK))


def marks_for(cycles: list[list[str]], period: float = 2.0, switch: float = 0.5) -> list[dict]:
    """Switches as the switcher writes them: each takes `switch` seconds,
    then its phase runs for `period`."""
    marks, now = [], 1000.0
    for cycle, order in enumerate(cycles):
        for phase in order:
            marks.append({"phase": phase, "cycle": cycle, "switch_began": now, "from": now + switch})
            now += switch + period
    marks.append({"phase": "end", "switch_began": now})
    return marks


def requests_every(step_s: float, start: float, end: float, latency) -> list[tuple[int, int]]:
    out, t = [], start
    while t < end:
        out.append((int(t * 1e6), latency(t)))
        t += step_s
    return out


def test_requests_count_in_the_phase_they_started_in_after_the_guard(interleave):
    order = ["hooks", "off", "empty", "filtered"]
    marks = marks_for([order])
    latency_by_phase = {"off": 100, "empty": 110, "filtered": 120, "hooks": 150}

    def latency(t):
        for mark, following in zip(marks, marks[1:]):
            if mark["switch_began"] <= t < following["switch_began"]:
                # During a switch and its guard the latency is the switch's.
                return latency_by_phase[mark["phase"]] if t >= mark["from"] + 0.3 else 10_000
        return 10_000

    entries = requests_every(0.01, 999.0, marks[-1]["switch_began"] + 1, latency)
    cycles = interleave.phase_windows(entries, marks, guard_s=0.3)
    assert list(cycles) == [0]
    for phase, expected in latency_by_phase.items():
        window = cycles[0][phase]
        assert set(window) == {expected}
        assert len(window) == pytest.approx(170, abs=2)   # 2 s less the 0.3 s guard, every 10 ms


def test_a_cycle_cut_short_is_left_out(interleave):
    marks = marks_for([["off", "hooks", "empty", "filtered"], ["hooks", "off", "filtered", "empty"]])
    end_of_first = marks[4]["switch_began"]
    entries = requests_every(0.01, 1000.0, end_of_first + 3.0, lambda t: 100)
    assert list(interleave.phase_windows(entries, marks, guard_s=0.3)) == [0]


def test_ratios_hold_a_cost_that_rides_on_the_hosts_drift(interleave):
    # Every cycle the machine is slower; each phase costs a fixed share more
    # than off within the cycle.  Drawing whole cycles keeps the drift out.
    costs = {"off": 1.0, "empty": 1.05, "filtered": 1.08, "hooks": 1.2}
    cycles = {c: {phase: [int(100 * 1.5 ** c * share * (1 + k / 1000)) for k in range(1000)]
                  for phase, share in costs.items()} for c in range(8)}
    intervals = interleave.ratio_intervals(cycles, [p for p in costs if p != "off"], resamples=100)
    for phase, share in costs.items():
        if phase == "off":
            continue
        for low, high in intervals[phase]:
            assert share - 0.02 <= low <= high <= share + 0.02


def test_a_weighted_percentile_is_the_percentile_of_the_repeated_lists(interleave):
    import load
    draw = random.Random(3)
    lists = [sorted(draw.randrange(50, 5000) for _ in range(draw.randrange(1, 300))) for _ in range(6)]
    weights = [2, 0, 1, 3, 1, 0]
    repeated = sorted(v for values, w in zip(lists, weights) for _ in range(w) for v in values)
    for q in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert interleave.weighted_percentile(lists, weights, q) == load.percentile(repeated, q)


def test_the_table_lists_every_phase_against_off(interleave, capsys):
    cycles = {c: {"off": [100] * 50, "empty": [105] * 50, "filtered": [110] * 50,
                  "hooks": [120] * 50} for c in range(3)}
    interleave.print_table(cycles, 5000)
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"off", "empty", "filtered", "hooks"}
    assert "x1.200 (1.20-1.20)" in rows["hooks"]
    assert rows["off"].split()[1] == "150"
