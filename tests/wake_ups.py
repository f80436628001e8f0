"""How often a thread of this process has gone to sleep and been woken
(its voluntary context switches): what an idle thread must not do."""
from __future__ import annotations

import threading
import time


def wake_ups(thread: threading.Thread) -> int:
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        return int(f.read().split("voluntary_ctxt_switches:")[1].split()[0])


def _state(thread: threading.Thread) -> str:
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def wake_ups_once_asleep(thread: threading.Thread, timeout: float = 5.0) -> int:
    """wake_ups once the thread has gone back to sleep: one that has just
    done some work (answered a request) may still be on its way to its
    wait on a busy machine, and its going to sleep would count as a wake-up."""
    deadline = time.monotonic() + timeout
    last = wake_ups(thread)
    while True:
        time.sleep(0.05)
        now = wake_ups(thread)
        if now == last and _state(thread) == "S":
            return now
        assert time.monotonic() < deadline, "the thread did not go back to sleep"
        last = now
