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
process on that core.  The guard is agent/runtime/cpu_guard.py.
"""
from __future__ import annotations

import logging
import mmap
import os
import subprocess
import sys
import threading
import time

from agent.runtime.child_process import child_environment
from agent.runtime.cpu_guard import SharedPage, agent_processes, set_policy


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


class CpuYield:
    """The capture loop's side: it marks each turn of the loop on a page it
    shares with the guard process (agent/runtime/cpu_guard.py), which
    switches the agent's threads between SCHED_IDLE and SCHED_OTHER and
    writes its state back on the same page."""

    def __init__(self, main_pid: int, ring, enabled: bool = True):
        self.main_pid = main_pid
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
        self._shared = SharedPage(self._page)
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
        # go when the agent does) and none of the agent's memory.  Without
        # site packages (-S), it imports only what it uses.
        self._guard = subprocess.Popen(
            [sys.executable, "-S", "-m", "agent.runtime.cpu_guard", str(os.getpid()), str(ring_fd),
             str(self._ring.size), str(self._fd)],
            env=child_environment(),
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
            set_policy(agent_processes(self.main_pid), os.SCHED_OTHER)
            self._shared.yielding.value = 0


