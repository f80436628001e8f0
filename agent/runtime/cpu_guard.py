"""The CPU guard: a process of its own, at normal weight, that gives the
agent's threads their normal weight back (SCHED_OTHER) when its ring fills
past a mark or its capture loop runs late, and lets them yield again
(SCHED_IDLE) once the agent has been caught up for a while.  Why a guard is
needed is in agent/runtime/scheduling.py, which starts it.

It runs as `python -S -m agent.runtime.cpu_guard`: no site packages, and
nothing imported beyond what it needs (the ring's two position pages and
the page it shares with the agent), since it lives as long as the agent.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import signal
import sys
import time

from agent.capture.ringbuf import WAKE_AT_FILL, RingFill

# Unread records past 1/8 of the ring: more than a 50 ms poll leaves at any
# load the agent keeps up with.  The kernel wakes
# the guard when the ring crosses this mark.
RING_FILL_BEHIND = WAKE_AT_FILL
LOOP_LATE_S = 0.25           # five poll intervals since the loop last came round
CAUGHT_UP_HOLD_S = 10.0      # back to yielding only after this long caught up
GUARD_INTERVAL_S = 0.1       # when no wake-up comes: to see a late loop in time
GUARD_MAX_WAIT_S = 1.0


def _tasks(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def agent_processes(main_pid: int, other_than: int | None = None) -> list[int]:
    """The agent's main process and its children (span workers start when
    the load first needs them), but `other_than` (the guard itself)."""
    children: list[int] = []
    for tid in _tasks(main_pid):
        try:
            with open(f"/proc/{main_pid}/task/{tid}/children") as f:
                children += map(int, f.read().split())
        except OSError:
            continue
    return [main_pid] + [pid for pid in children if pid != other_than]


def set_policy(pids, policy: int) -> int:
    """Put every thread of these processes under `policy`; returns how many
    threads were set (threads that exited meanwhile are skipped)."""
    param = os.sched_param(0)
    done = 0
    for pid in pids:
        for tid in _tasks(pid):
            try:
                os.sched_setscheduler(tid, policy, param)
                done += 1
            except OSError:
                pass
    return done


class YieldPolicy:
    """When to yield: the decision alone, on the guard's clock."""

    def __init__(self):
        self.yielding = False
        self.switches_to_normal = 0
        self._behind_until = 0.0

    def decide(self, now: float, ring_fill: float, last_turn: float) -> bool:
        """Whether the agent should yield now; counts each return to normal."""
        if ring_fill > RING_FILL_BEHIND or now - last_turn > LOOP_LATE_S:
            self._behind_until = now + CAUGHT_UP_HOLD_S
            if self.yielding:
                self.switches_to_normal += 1
            self.yielding = False
        elif now >= self._behind_until:
            self.yielding = True
        return self.yielding


class SharedPage:
    """The page the agent shares with its guard: the loop's last turn, the guard's state."""

    def __init__(self, page):
        self.last_turn = ctypes.c_double.from_buffer(page, 0)
        self.yielding = ctypes.c_uint64.from_buffer(page, 8)
        self.switches = ctypes.c_uint64.from_buffer(page, 16)


def guard(parent: int, ring, shared: SharedPage) -> None:
    policy = YieldPolicy()
    me = os.getpid()
    while os.getppid() == parent:
        yielding = policy.decide(time.monotonic(), ring.fill_ratio(), shared.last_turn.value)
        if yielding != bool(shared.yielding.value):
            set_policy(agent_processes(parent, me), os.SCHED_IDLE if yielding else os.SCHED_OTHER)
            shared.switches.value = policy.switches_to_normal
            shared.yielding.value = int(yielding)
        ring.wait(next_look_s(time.monotonic(), shared.last_turn.value, ring.fill_ratio()))


def next_look_s(now: float, last_turn: float, ring_fill: float = 0.0) -> float:
    """Until the moment the loop is late if it has not turned by then (each
    look is a wake-up, which costs CPU), but every GUARD_INTERVAL_S once it
    is late or the ring holds more than a few polls' worth: where the fill
    mark wakes nobody (BCC) the guard's clock sees a filling ring."""
    if ring_fill > RING_FILL_BEHIND / 4:
        return GUARD_INTERVAL_S
    return min(GUARD_MAX_WAIT_S, max(GUARD_INTERVAL_S, last_turn + LOOP_LATE_S - now + 0.01))


def main(argv: list[str]) -> None:
    parent, ring_fd, ring_size, page_fd = map(int, argv)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    guard(parent, RingFill(ring_fd, ring_size), SharedPage(mmap.mmap(page_fd, mmap.PAGESIZE)))


_PR_SET_PDEATHSIG = 1

if __name__ == "__main__":
    main(sys.argv[1:])
