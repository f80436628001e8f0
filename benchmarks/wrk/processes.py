"""What /proc says about the processes a row measures (CPU time, memory,
children) and about the host's CPUs; stopping a process."""
from __future__ import annotations

import os
import signal
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_seconds(pid: int) -> float:
    """On-CPU time (user + kernel, which includes the BPF programs run in the
    process's syscalls) of a process's live threads, in ns resolution from
    /proc/PID/task/*/schedstat; falls back to the tick-based utime+stime."""
    total = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"{task.path}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return 0.0
    return total / 1e9 if total else cpu_seconds(pid)


def _proc_kb_field(path: str, key: str) -> int:
    """A `Key:   123 kB` line of a /proc file, in bytes (0 when gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def vm_hwm_bytes(pid: int) -> int:
    return _proc_kb_field(f"/proc/{pid}/status", "VmHWM:")


def pss_bytes(pid: int) -> int:
    """Proportional set size: a page shared by n processes counts 1/n in
    each, so the agent's processes sum to the memory they hold together
    (summed RSS counts the pages a forked worker shares with its parent
    in both)."""
    return _proc_kb_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry.name))
    return out


def host_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs, from /proc/stat.  Steal is
    time the hypervisor ran something else while a vCPU had work."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, values[7], sum(values)


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
