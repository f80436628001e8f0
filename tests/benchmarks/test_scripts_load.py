"""Every benchmark script loads: its imports resolve against today's tree
(a module moved or a name renamed breaks a script nobody runs that day).
Each is run as a module (not as __main__) in an interpreter of its own, so
that nothing is measured and no script's set-up meets another's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p for p in [*BENCHMARKS.glob("*.py"), *BENCHMARKS.glob("*/*.py")])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(BENCHMARKS)))
def test_a_benchmark_script_loads(script: Path):
    loaded = subprocess.run(
        [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(script.parent)!r}); "
         f"runpy.run_path({str(script)!r}, run_name='loaded_by_test')"],
        capture_output=True, text=True, timeout=60, cwd=script.parent)
    assert loaded.returncode == 0, loaded.stderr[-2000:]


def test_the_scripts_are_found():
    assert {"pipeline.py", "ring_drain.py", "run.py"} <= {p.name for p in SCRIPTS}
