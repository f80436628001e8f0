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
Entries are counted for hash maps by walking their keys at scrape time.
"""
from __future__ import annotations

import os
import struct

from agent.capture.libbpf import bpf_syscall, ffi

BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
# Map types whose entries come and go (hash, percpu hash, LRU hash, LRU
# percpu hash, hash of maps, sockhash); arrays are always full.
HASH_MAP_TYPES = frozenset((1, 5, 9, 10, 13, 18))
PROG_INFO_SIZE = 208        # up to run_cnt
MAP_INFO_SIZE = 40          # up to name


def enable_stats() -> int | None:
    """An fd keeping the kernel's BPF run-time stats on while open; None
    when the kernel refuses (before 5.8, or without CAP_SYS_ADMIN)."""
    attr = ffi.new("uint32_t[4]", [BPF_STATS_RUN_TIME, 0, 0, 0])
    fd = bpf_syscall(BPF_ENABLE_STATS, attr, ffi.sizeof(attr))
    return fd if fd >= 0 else None


def _bpf_fds(kind: str) -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == f"anon_inode:bpf-{kind}":
                fds.append(int(name))
        except OSError:
            continue
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


def program_stats() -> dict[str, tuple[int, int]]:
    """{program name: (run_time_ns, run_cnt)}, each program once (an fd may
    be duplicated), names shared by several programs summed."""
    by_id: dict = {}
    for fd in _bpf_fds("prog"):
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


def map_fill() -> dict[str, tuple[int, int]]:
    """{map name: (entries, max_entries)} of the hash maps this process holds."""
    by_id: dict = {}
    for fd in _bpf_fds("map"):
        raw = _info(fd, MAP_INFO_SIZE)
        if raw is None:
            continue
        map_type, map_id, key_size, _, max_entries = struct.unpack_from("<5I", raw, 0)
        if map_type in HASH_MAP_TYPES and map_id not in by_id:
            by_id[map_id] = (_name(raw[24:40]), fd, key_size, max_entries)
    return {name: (_count_keys(fd, key_size, max_entries), max_entries)
            for name, fd, key_size, max_entries in by_id.values()}
