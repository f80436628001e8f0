"""What the test_fuzz_*.py property tests share: the example budget, the
captured fixtures they mutate, and the byte edits they mutate them with."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from agent.parsers import INVALID, NEED_MORE, PARSED

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
STATUSES = (PARSED, NEED_MORE, INVALID)
# Fixed so the suite's time stays flat.
BUDGET = settings(max_examples=300, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fixture_files(sub: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every tests/fixtures/SUB/*.bin, sorted by name."""
    out = []
    for name in sorted(os.listdir(os.path.join(FIXTURES, sub))):
        if name.endswith(".bin"):
            with open(os.path.join(FIXTURES, sub, name), "rb") as f:
                out.append((name, f.read()))
    return out


def edit(draw, data: bytearray, interesting: st.SearchStrategy[bytes], *,
         max_delete: int = 8, max_insert: int = 16) -> bytearray:
    """Up to six random edits of data in place: a deletion, an insertion
    of an interesting token or of random bytes, or one byte replaced."""
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 3))
        if op == 0 and pos < len(data):
            del data[pos:pos + draw(st.integers(1, max_delete))]
        elif op == 1:
            data[pos:pos] = draw(interesting)
        elif op == 2 and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        else:
            data[pos:pos] = draw(st.binary(max_size=max_insert))
    return data
