"""The kernel maps' fill on /metrics (agent/capture/bpf_stats.py), counted
on real maps this process creates: in batches where the kernel has them,
key by key where it has not, the same count either way."""
from __future__ import annotations

import os
import socket

import pytest

from agent.capture import bpf_stats
from bpf_maps import HASH, LRU_HASH, PERCPU_HASH, SOCKHASH, create_map, insert

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating BPF maps needs root")


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
