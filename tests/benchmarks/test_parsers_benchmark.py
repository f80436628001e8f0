"""benchmarks/parsers.py runs, and its traffic decodes to what it encoded
(the benchmark asserts every event and every answer).  No privileges."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_parser_benchmark_reports_both_parsers_from_the_tree_it_names():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/parsers.py"), "--runs", "1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"agent from {ROOT / 'agent'}" in result.stdout
    for parser in ("mysql", "http2"):
        match = re.search(rf"{parser}:\s+([0-9.]+) µs", result.stdout)
        assert match and float(match.group(1)) > 0, result.stdout
