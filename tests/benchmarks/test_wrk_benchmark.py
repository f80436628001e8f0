"""The overhead benchmark's statistics (benchmarks/wrk/run.py: its table.py
and load.py), without a load generator: what its table says about a p99
ratio's uncertainty."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

WRK = Path(__file__).resolve().parents[2] / "benchmarks" / "wrk"


def loaded(name: str):
    spec = importlib.util.spec_from_file_location(f"wrk_{name}", WRK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def table():
    yield from loaded("table")


@pytest.fixture(scope="module")
def load():
    yield from loaded("load")


def test_a_constant_ratio_has_no_spread(table):
    base = [200.0, 250.0, 180.0, 300.0, 220.0]
    assert table.p99_ratio_interval(base, base) == (1.0, 1.0)
    low, high = table.p99_ratio_interval([p * 1.2 for p in base], base)
    assert low == pytest.approx(1.2) and high == pytest.approx(1.2)


def test_rounds_that_drift_together_stay_paired(table):
    # The machine slows down round after round; the traced runs cost 10% more
    # than the untraced run of the same round.  Pairs keep the drift out.
    base = [100.0 * 1.3 ** k for k in range(10)]
    low, high = table.p99_ratio_interval([p * 1.1 for p in base], base)
    assert low == pytest.approx(1.1) and high == pytest.approx(1.1)


def test_noisy_rounds_give_an_interval_around_the_medians_ratio(table):
    base = [241, 234, 247, 300, 239, 259, 480, 257, 216, 213]
    traced = [254, 245, 240, 252, 562, 280, 328, 244, 294, 416]
    low, high = table.p99_ratio_interval(traced, base)
    median_ratio = sorted(traced)[5] / sorted(base)[5]
    assert low < median_ratio < high
    assert high - low > 0.1


def test_too_few_rounds_or_failed_rounds_give_no_interval(table):
    assert table.p99_ratio_interval([250.0, 260.0], [240.0, 230.0]) is None
    nan = math.nan
    assert table.p99_ratio_interval([250.0, nan, 260.0, 270.0], [240.0, 230.0, nan, 235.0]) is None
    assert table.p99_ratio_interval([250.0, nan, 260.0, 270.0, 255.0],
                                    [240.0, 230.0, 245.0, 235.0, 250.0]) is not None


def test_the_start_up_of_a_run_counts_but_is_left_out_of_its_percentiles(load, tmp_path):
    start = 1_796_200_674_000_000
    first = tmp_path / "h2load.log.0"
    # Opening connections: three slow requests within the first 0.2 s.
    first.write_text(f"{start}\t200\t1900\n{start + 1_000}\t200\t1800\n{start + 150_000}\t200\t900\n"
                     + "".join(f"{start + 200_000 + k * 1_000}\t200\t{70 + k}\n" for k in range(100)))
    second = tmp_path / "h2load.log.1"
    second.write_text(f"{start + 5_000}\t200\t1700\n{start + 300_000}\t503\t40\n"
                      f"{start + 301_000}\t200\t60\n{start + 302_000}\t2")   # cut short
    ok, failed, latencies = load.read_request_logs([first, second, tmp_path / "missing"])
    assert (ok, failed) == (105, 1)
    assert latencies == sorted([60] + [70 + k for k in range(100)])
    assert load.percentile(latencies, 0.99) < 200
    ok, failed, everything = load.read_request_logs([first, second], steady_after_s=0)
    assert ok == len(everything) == 105 and max(everything) == 1900


def test_the_table_shows_kernel_time_per_request_and_the_hosts_steal(table, capsys):
    """Kernel time in the tracer's programs per completed request
    (--program-time), and the share of CPU time the hypervisor took: a run
    whose vCPUs were waiting for the host says so next to its latencies."""
    base = table.Row("nginx", "baseline", 5000, completed=50_000, p99_us=200.0, host_steal=0.02)
    hooks = table.Row("nginx", "hooks", 5000, completed=50_000, p99_us=210.0, host_steal=0.414,
                      programs_s=0.25)
    table.print_table(*table.median_rounds([base, hooks]))
    header, _, base_line, hooks_line = capsys.readouterr().out.splitlines()
    columns = [c.strip() for c in header.split("  ") if c.strip()]
    assert columns[-1] == "steal%" and "kernel us/req" in columns

    def cell(line, name):
        return line.split()[columns.index(name) - len(columns)]

    assert cell(hooks_line, "kernel us/req") == "5.00"
    assert cell(base_line, "kernel us/req") == "-"
    assert cell(hooks_line, "steal%") == "41.4"
    assert cell(base_line, "steal%") == "2.0"
