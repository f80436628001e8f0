"""Kernel maps a test (or benchmark) creates itself, through the agent's own
bpf() binding: no object file, no loader.  Needs root."""
from __future__ import annotations

import os

from agent.capture.libbpf import bpf_syscall, ffi

BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
HASH, PERCPU_HASH, LRU_HASH, SOCKHASH, RINGBUF = 1, 5, 9, 18, 27


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """A new map's fd (a ring buffer: key and value size 0, max_entries its bytes)."""
    attr = ffi.new("uint32_t[30]", [map_type, key_size, value_size, max_entries])
    fd = bpf_syscall(BPF_MAP_CREATE, attr, ffi.sizeof(attr))
    assert fd >= 0, os.strerror(ffi.errno)
    return fd


def insert(fd: int, key: bytes, value: bytes) -> None:
    k, v = ffi.new("char[]", key), ffi.new("char[]", value)
    attr = ffi.new("uint64_t[4]", [fd, int(ffi.cast("uintptr_t", k)),
                                   int(ffi.cast("uintptr_t", v)), 0])
    assert bpf_syscall(BPF_MAP_UPDATE_ELEM, attr, ffi.sizeof(attr)) == 0, os.strerror(ffi.errno)
