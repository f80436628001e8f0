"""The kernel maps' fill on /metrics (agent/capture/bpf_stats.py), counted
on real maps this process creates: in batches where the kernel has them,
key by key where it has not, the same count either way."""
from __future__ import annotations

import os
import socket

import pytest

from agent.capture import bpf_stats
from agent.capture.libbpf import bpf_syscall, ffi

BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
HASH, PERCPU_HASH, LRU_HASH, SOCKHASH = 1, 5, 9, 18

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating BPF maps needs root")


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    attr = ffi.new("uint32_t[30]", [map_type, key_size, value_size, max_entries])
    fd = bpf_syscall(BPF_MAP_CREATE, attr, ffi.sizeof(attr))
    assert fd >= 0, os.strerror(ffi.errno)
    return fd


def insert(fd: int, key: bytes, value: bytes) -> None:
    k, v = ffi.new("char[]", key), ffi.new("char[]", value)
    attr = ffi.new("uint64_t[4]", [fd, int(ffi.cast("uintptr_t", k)),
                                   int(ffi.cast("uintptr_t", v)), 0])
    assert bpf_syscall(BPF_MAP_UPDATE_ELEM, attr, ffi.sizeof(attr)) == 0, os.strerror(ffi.errno)


@pytest.mark.parametrize("map_type", [HASH, PERCPU_HASH, LRU_HASH])
def test_hash_maps_are_counted_in_batches(map_type):
    # More entries than one batch, and a value size that is no multiple of 8
    # (per-CPU values are padded to 8 bytes per CPU).
    fd = create_map(map_type, 12, 20, 8192)
    try:
        entries = bpf_stats.BATCH_ENTRIES * 3 + 17
        for i in range(entries):
            insert(fd, i.to_bytes(12, "little"), b"v" * 20)
        per_cpu = map_type == PERCPU_HASH
        assert bpf_stats._count_batched(fd, 12, 20, per_cpu, 8192) == entries
        assert bpf_stats._count_keys(fd, 12, 8192) == entries
        empty = create_map(map_type, 12, 20, 8192)
        assert bpf_stats._count_batched(empty, 12, 20, per_cpu, 8192) == 0
        os.close(empty)
    finally:
        os.close(fd)


def test_a_map_without_batch_look_up_is_counted_key_by_key():
    fd = create_map(SOCKHASH, 4, 4, 64)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        for n, sock in enumerate((client, server)):
            insert(fd, n.to_bytes(4, "little"), sock.fileno().to_bytes(4, "little"))
        assert bpf_stats._count_batched(fd, 4, 4, False, 64) is None
        fill = bpf_stats.map_fill({"map": [fd]})
        assert list(fill.values()) == [(2, 64)]
    finally:
        for sock in (client, server, listener):
            sock.close()
        os.close(fd)


def test_one_pass_over_the_descriptors_finds_programs_and_maps():
    fd = create_map(HASH, 4, 4, 16)
    try:
        fds = bpf_stats.bpf_fds()
        assert fd in fds["map"] and fd not in fds["prog"]
    finally:
        os.close(fd)
