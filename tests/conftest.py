"""Test-wide set-up: the shared helpers in tests/ (OTLP receiver, loopback
ports, fuzzing budgets, event records) import by their bare names from
every test folder."""
from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
