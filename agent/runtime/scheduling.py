"""The agent yields the CPU to the processes it traces, as long as it keeps up.

Its work comes in bursts (a ring buffer's worth every poll, spans to encode
every export), and a burst that holds a core delays whatever traced process
wakes on that core, which shows in the traced service's tail latency.  Under
SCHED_IDLE a waking process that is not itself SCHED_IDLE preempts the agent
at once, wherever the cgroups put them (the kernel checks this before
weighing groups), and a core that runs only the agent counts as idle when
the scheduler places a wake-up.  docs/decisions/cpu-yield.md has the why in
full, and docs/performance.md the figures.

SCHED_IDLE also means a tiny weight within the agent's own cgroup.  Where the
agent shares a cgroup with a busy workload (`sudo otel-ebpf run` in a login
session) it would starve, and an agent that falls behind loses records.  A
starved agent cannot notice that it is starved in time: beside a few busy
loops a SCHED_IDLE thread can wait longer for a turn than a flat-out load
takes to fill the ring.  So a small guard process, at normal weight and
doing nothing else, gives the agent its normal weight back when
the ring fills past 1/8 (the kernel wakes it as the mark is crossed) or the
capture loop has not come round for 0.25 s (it looks when the loop would
be late, and every 0.1 s while it is late or the ring fills).  The
agent yields again once it has been caught up for a while.  The guard wakes
rarely because each of its turns, at normal weight, may delay a traced
process on that core.
"""
from __future__ import annotations

import ctypes
import mmap
import logging
import os
import signal
import subprocess
import sys
import threading
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


def can_leave_idle() -> bool:
    """Whether this process may take a thread out of SCHED_IDLE again (that
    needs CAP_SYS_NICE, or an RLIMIT_NICE that allows nice 0).  Tried on a
    thread of its own, which is thrown away whatever the answer."""
    result = []

    def trial():
        param = os.sched_param(0)
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, param)
            os.sched_setscheduler(0, os.SCHED_OTHER, param)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=trial, name="otel-ebpf-sched-trial")
    thread.start()
    thread.join()
    return result[0]


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


class CpuYield:
    """The capture loop's side: it marks each turn of the loop on a page it
    shares with the guard process (`python -m agent.runtime.scheduling`), which
    switches the agent's threads between SCHED_IDLE and SCHED_OTHER and
    writes its state back on the same page."""

    def __init__(self, pids: list[int], ring, enabled: bool = True):
        self.pids = pids
        if enabled and not can_leave_idle():
            # Yielding with no way back would leave a busy node's agent starved.
            logging.getLogger("otel_ebpf").warning(
                "not yielding the CPU: leaving SCHED_IDLE needs CAP_SYS_NICE (see --yield-cpu)")
            enabled = False
        self.enabled = enabled
        self._ring = ring
        self._fd = os.memfd_create("otel-ebpf-cpu-yield")
        os.ftruncate(self._fd, mmap.PAGESIZE)
        self._page = mmap.mmap(self._fd, mmap.PAGESIZE)
        self._shared = _Shared(self._page)
        self._guard = None

    @property
    def yielding(self) -> bool:
        return bool(self._shared.yielding.value)

    @property
    def switches_to_normal(self) -> int:
        return self._shared.switches.value

    @property
    def guard_pid(self) -> int | None:
        return self._guard.pid if self._guard is not None else None

    def start(self) -> None:
        self._shared.last_turn.value = time.monotonic()
        if not self.enabled:
            return
        ring_fd = self._ring.map_fd
        # A process of its own, not a fork: it holds no BPF link (the probes
        # go when the agent does) and none of the agent's memory.
        self._guard = subprocess.Popen(
            [sys.executable, "-m", "agent.runtime.scheduling", str(os.getpid()), str(ring_fd),
             str(self._ring.size), str(self._fd), *map(str, self.pids)],
            pass_fds=(ring_fd, self._fd), stdin=subprocess.DEVNULL, start_new_session=True)

    def turn(self, now: float) -> None:
        self._shared.last_turn.value = now

    def check_guard(self) -> None:
        """A guard that died alone (the OOM killer, a stray kill) leaves
        nobody to give a starved agent its weight back: stop yielding."""
        if self._guard is None or self._guard.poll() is None:
            return
        logging.getLogger("otel_ebpf").warning(
            "the CPU guard exited (status %s): the agent no longer yields the CPU",
            self._guard.returncode)
        self._guard = None
        self.enabled = False
        self._normal_weight()

    def stop(self) -> None:
        """Normal weight for the last flush: a stop must not wait on a busy node."""
        if self._guard is not None:
            self._guard.kill()
            self._guard.wait()
            self._guard = None
            self._normal_weight()

    def _normal_weight(self) -> None:
        if self.yielding:
            set_policy(self.pids, os.SCHED_OTHER)
            self._shared.yielding.value = 0


class _Shared:
    def __init__(self, page):
        self.last_turn = ctypes.c_double.from_buffer(page, 0)
        self.yielding = ctypes.c_uint64.from_buffer(page, 8)
        self.switches = ctypes.c_uint64.from_buffer(page, 16)


def guard(parent: int, ring, shared: _Shared, pids: list[int]) -> None:
    policy = YieldPolicy()
    while os.getppid() == parent:
        yielding = policy.decide(time.monotonic(), ring.fill_ratio(), shared.last_turn.value)
        if yielding != bool(shared.yielding.value):
            set_policy(pids, os.SCHED_IDLE if yielding else os.SCHED_OTHER)
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


def _main(argv: list[str]) -> None:
    parent, ring_fd, ring_size, page_fd, *pids = map(int, argv)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    guard(parent, RingFill(ring_fd, ring_size), _Shared(mmap.mmap(page_fd, mmap.PAGESIZE)),
          pids)


_PR_SET_PDEATHSIG = 1

if __name__ == "__main__":
    _main(sys.argv[1:])
