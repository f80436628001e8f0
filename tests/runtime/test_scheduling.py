"""The agent yields the CPU (SCHED_IDLE) while it keeps up and takes its
normal weight back when its ring fills or its loop runs late."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.runtime.cpu_guard import (CAUGHT_UP_HOLD_S, LOOP_LATE_S, RING_FILL_BEHIND, YieldPolicy,
                                     agent_processes, set_policy)

ROOT = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="leaving SCHED_IDLE needs CAP_SYS_NICE (run as root)")


@pytest.fixture
def threaded_process():
    """A real process with three threads, as the agent's processes have."""
    code = ("import threading, time\n"
            "for _ in range(2): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc.pid
    proc.kill()
    proc.wait()


def policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@needs_root
def test_set_policy_reaches_every_thread(threaded_process):
    assert set_policy([threaded_process], os.SCHED_IDLE) == 3
    assert policies(threaded_process) == {os.SCHED_IDLE}
    assert set_policy([threaded_process, 2 ** 22 + 12345], os.SCHED_OTHER) == 3
    assert policies(threaded_process) == {os.SCHED_OTHER}


def test_the_agents_processes_are_its_main_process_and_its_children_but_the_guard():
    """Span workers start when the load first needs them, from whichever
    thread: the guard finds them as the main process's children when it
    switches the policy, and leaves itself out."""
    started = []
    worker = threading.Thread(target=lambda: started.append(
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])))
    worker.start()
    worker.join()
    guard = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        processes = agent_processes(os.getpid(), other_than=guard.pid)
        assert processes[0] == os.getpid()
        assert started[0].pid in processes and guard.pid not in processes
        started[0].kill()
        started[0].wait()
        assert started[0].pid not in agent_processes(os.getpid(), other_than=guard.pid)
    finally:
        for p in (*started, guard):
            p.kill()
            p.wait()


def turns(policy: YieldPolicy, start: float, seconds: float, fill: float) -> float:
    """The guard looking every 20 ms for `seconds` at a loop that turns
    every 50 ms; returns the clock after."""
    now = start
    for _ in range(round(seconds / 0.02)):
        now += 0.02
        policy.decide(now, fill, now - (now % 0.05))
    return now


def test_yields_while_caught_up_and_takes_weight_back_when_behind():
    policy = YieldPolicy()
    assert policy.decide(100.0, 0.0, 100.0)
    now = turns(policy, 100.0, 1.0, RING_FILL_BEHIND / 2)
    assert policy.yielding
    # The ring fills: normal weight, counted once however long it lasts.
    now = turns(policy, now, 1.0, RING_FILL_BEHIND * 2)
    assert not policy.yielding and policy.switches_to_normal == 1
    # Caught up, but not for long enough yet.
    now = turns(policy, now, CAUGHT_UP_HOLD_S - 0.5, 0.0)
    assert not policy.yielding
    now = turns(policy, now, 1.0, 0.0)
    assert policy.yielding
    # The loop has not come round for a while (starved): behind too.
    assert not policy.decide(now, 0.0, now - LOOP_LATE_S - 0.01)
    assert policy.switches_to_normal == 2


@needs_root
def test_a_thread_started_while_yielding_yields_too():
    # Threads inherit their creator's policy: the metrics server's request
    # threads and the exporter's threads follow the switch.
    assert set_policy([os.getpid()], os.SCHED_IDLE) >= 1
    try:
        seen = []
        thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
        thread.start()
        thread.join()
        assert seen == [os.SCHED_IDLE]
    finally:
        set_policy([os.getpid()], os.SCHED_OTHER)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_without_cap_sys_nice_the_agent_does_not_yield():
    # A container without CAP_SYS_NICE could enter SCHED_IDLE but never leave
    # it: the agent must see that and not yield at all.
    probe = "from agent.runtime.scheduling import can_leave_idle; print(can_leave_idle())"
    with_cap = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, cwd=ROOT)
    without = subprocess.run(["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice",
                              sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True, cwd=ROOT)
    assert (with_cap.stdout.strip(), without.stdout.strip()) == ("True", "False")


def test_the_guard_looks_when_the_loop_would_be_late_and_no_sooner():
    from agent.runtime.cpu_guard import (GUARD_INTERVAL_S, GUARD_MAX_WAIT_S, LOOP_LATE_S,
                                         RING_FILL_BEHIND, next_look_s)
    # The loop just turned: the next look is when it would be late.
    assert LOOP_LATE_S < next_look_s(10.0, 10.0) < LOOP_LATE_S + 0.02
    # A turn marked ahead (the loop's longer idle poll) moves the look with it.
    assert next_look_s(10.0, 10.15) > LOOP_LATE_S + 0.15
    # Already late: every GUARD_INTERVAL_S, as before; and never idle for long.
    assert next_look_s(10.0, 9.0) == GUARD_INTERVAL_S
    assert next_look_s(10.0, 50.0) == GUARD_MAX_WAIT_S
    # A ring filling up (no fill-mark wake-up under BCC): the 0.1 s clock.
    assert next_look_s(10.0, 10.0, ring_fill=RING_FILL_BEHIND / 2) == GUARD_INTERVAL_S
