"""The probes' own cost and the kernel maps' fill, for /metrics.

Run time and run count per BPF program come from the kernel's BPF stats,
which cost two clock reads per program run and are off by default: the
agent turns them on with BPF_ENABLE_STATS, whose file descriptor keeps them
on only while it is open (the kernel restores the previous state when the
agent exits, however it exits), rather than writing
kernel.bpf_stats_enabled, which a crash would leave on.

Programs and maps are the ones this process holds open (its own, whichever
front end loaded them), found in /proc/self/fd; names and counters come from
BPF_OBJ_GET_INFO_BY_FD (the UAPI's bpf_prog_info / bpf_map_info layout).
Entries are counted for hash maps at scrape time: a thousand a call with
BPF_MAP_LOOKUP_BATCH (5.6+), where one BPF_MAP_GET_NEXT_KEY per entry would
cost a busy node's 50,000-entry connection table as many system calls each
scrape; key by key where the kernel or the map type has no batch look-up.
"""
from __future__ import annotations

import errno
import os
import struct

from agent.capture.libbpf import bpf_syscall, ffi, lib

BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_BATCH = 24
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
# Map types whose entries come and go (hash, percpu hash, LRU hash, LRU
# percpu hash, hash of maps, sockhash); arrays are always full.
HASH_MAP_TYPES = frozenset((1, 5, 9, 10, 13, 18))
PER_CPU_MAP_TYPES = frozenset((5, 10))
BATCH_ENTRIES = 1024
PROG_INFO_SIZE = 208        # up to run_cnt
MAP_INFO_SIZE = 40          # up to name


def enable_stats() -> int | None:
    """An fd keeping the kernel's BPF run-time stats on while open; None
    when the kernel refuses (before 5.8, or without CAP_SYS_ADMIN)."""
    attr = ffi.new("uint32_t[4]", [BPF_STATS_RUN_TIME, 0, 0, 0])
    fd = bpf_syscall(BPF_ENABLE_STATS, attr, ffi.sizeof(attr))
    return fd if fd >= 0 else None


def bpf_fds() -> dict[str, list[int]]:
    """This process's BPF programs and maps ("prog", "map"), from one pass
    over /proc/self/fd."""
    fds: dict[str, list[int]] = {"prog": [], "map": []}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("anon_inode:bpf"):
            kind = fds.get(target[len("anon_inode:bpf-"):])
            if kind is not None:
                kind.append(int(name))
    return fds


def _info(fd: int, size: int) -> bytes | None:
    info = ffi.new(f"char[{size}]")
    attr = ffi.new("uint32_t[4]")
    attr[0], attr[1] = fd, size
    ffi.cast("uint64_t *", attr + 2)[0] = int(ffi.cast("uintptr_t", info))
    if bpf_syscall(BPF_OBJ_GET_INFO_BY_FD, attr, ffi.sizeof(attr)) < 0:
        return None
    return bytes(ffi.buffer(info))


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def program_stats(fds: dict | None = None) -> dict[str, tuple[int, int]]:
    """{program name: (run_time_ns, run_cnt)}, each program once (an fd may
    be duplicated), names shared by several programs summed."""
    by_id: dict = {}
    for fd in (fds or bpf_fds())["prog"]:
        raw = _info(fd, PROG_INFO_SIZE)
        if raw is None:
            continue
        prog_id = struct.unpack_from("<I", raw, 4)[0]
        run_time_ns, run_cnt = struct.unpack_from("<QQ", raw, 192)
        by_id[prog_id] = (_name(raw[64:80]), run_time_ns, run_cnt)
    out: dict = {}
    for name, run_time_ns, run_cnt in by_id.values():
        t, c = out.get(name, (0, 0))
        out[name] = (t + run_time_ns, c + run_cnt)
    return out


def _count_keys(fd: int, key_size: int, limit: int) -> int:
    key = ffi.new(f"char[{key_size}]")
    next_key = ffi.new(f"char[{key_size}]")
    attr = ffi.new("uint64_t[3]")
    attr[0] = fd
    attr[2] = int(ffi.cast("uintptr_t", next_key))
    attr[1] = 0                       # NULL key: the first one
    count = 0
    while count <= limit and bpf_syscall(BPF_MAP_GET_NEXT_KEY, attr, ffi.sizeof(attr)) == 0:
        count += 1
        ffi.memmove(key, next_key, key_size)
        attr[1] = int(ffi.cast("uintptr_t", key))
    return count


def _count_batched(fd: int, key_size: int, value_size: int, per_cpu: bool,
                   limit: int) -> int | None:
    """Entries counted BATCH_ENTRIES a call; None where the kernel has no
    batch look-up for this map (before 5.6, a sockhash) or a hash bucket
    holds more than a call takes (ENOSPC)."""
    if per_cpu:
        value_size = (value_size + 7) // 8 * 8 * lib().libbpf_num_possible_cpus()
    keys = ffi.new(f"char[{key_size * BATCH_ENTRIES}]")
    values = ffi.new(f"char[{value_size * BATCH_ENTRIES}]")
    cursors = ffi.new("uint64_t[2]")            # in_batch, out_batch (a bucket index)
    # union bpf_attr's batch: in_batch, out_batch, keys, values (pointers),
    # count and map_fd (u32 each), elem_flags, flags.
    attr = ffi.new("uint64_t[7]")
    attr[1] = int(ffi.cast("uintptr_t", cursors + 1))
    attr[2] = int(ffi.cast("uintptr_t", keys))
    attr[3] = int(ffi.cast("uintptr_t", values))
    count_and_fd = ffi.cast("uint32_t *", attr + 4)
    total = 0
    while total <= limit:
        count_and_fd[0], count_and_fd[1] = BATCH_ENTRIES, fd
        result = bpf_syscall(BPF_MAP_LOOKUP_BATCH, attr, ffi.sizeof(attr))
        if result < 0:
            if ffi.errno == errno.ENOENT:     # the last entries came with it
                return total + count_and_fd[0]
            return None
        total += count_and_fd[0]
        cursors[0] = cursors[1]
        attr[0] = int(ffi.cast("uintptr_t", cursors))
    return total


def map_fill(fds: dict | None = None) -> dict[str, tuple[int, int]]:
    """{map name: (entries, max_entries)} of the hash maps this process holds."""
    by_id: dict = {}
    for fd in (fds or bpf_fds())["map"]:
        raw = _info(fd, MAP_INFO_SIZE)
        if raw is None:
            continue
        map_type, map_id, key_size, value_size, max_entries = struct.unpack_from("<5I", raw, 0)
        if map_type in HASH_MAP_TYPES and map_id not in by_id:
            by_id[map_id] = (_name(raw[24:40]), fd, map_type, key_size, value_size, max_entries)
    fill = {}
    for name, fd, map_type, key_size, value_size, max_entries in by_id.values():
        entries = _count_batched(fd, key_size, value_size, map_type in PER_CPU_MAP_TYPES,
                                 max_entries)
        if entries is None:
            entries = _count_keys(fd, key_size, max_entries)
        fill[name] = (entries, max_entries)
    return fill
