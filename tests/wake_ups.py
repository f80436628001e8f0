"""How often a thread of this process has gone to sleep and been woken
(its voluntary context switches): what an idle thread must not do."""
from __future__ import annotations

import threading


def wake_ups(thread: threading.Thread) -> int:
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        return int(f.read().split("voluntary_ctxt_switches:")[1].split()[0])
