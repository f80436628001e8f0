"""Time the kernel spends in BPF programs, by its own count.

With kernel.bpf_stats_enabled on, the kernel adds up each program's run
time and runs (two clock reads per run, so it is on only while measuring).
A process holding a program's fd sees both in /proc/PID/fdinfo.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

STATS_SWITCH = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextlib.contextmanager
def stats_enabled():
    previous = STATS_SWITCH.read_text().strip()
    STATS_SWITCH.write_text("1")
    try:
        yield
    finally:
        STATS_SWITCH.write_text(previous)


def program_time_ns(pids: list[int | str]) -> int:
    """run_time_ns summed over the programs these processes hold open, each
    program counted once (a forked process shares its parent's fds)."""
    seen: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except (OSError, ValueError):
                continue
            if "prog_id" in fields and "run_time_ns" in fields:
                seen[int(fields["prog_id"])] = int(fields["run_time_ns"])
    return sum(seen.values())
