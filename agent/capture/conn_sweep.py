"""Removes the kernel's per-descriptor entries (the `conns` map, keyed by
tgid << 32 | fd) of processes that have exited.

The kernel deletes an entry on close(); a process that exits closes its
descriptors without calling close(), so its entries would stay until the
LRU pushes them out, live connections' entries with them.  A BPF program
cannot find a tgid's entries without walking the whole map, so userspace
does it, after exits (docs/decisions/conns-cleanup.md says why here).
"""
from __future__ import annotations

import os

from agent.capture import libbpf

_NO_KEY = 0xFFFFFFFFFFFFFFFF


class ExitedConnSweep:
    """Walks `conns` once per sweep: one key read per entry, one /proc check
    per distinct process, one delete per stale entry."""

    def __init__(self, map_fd: int, proc_root: str = "/proc"):
        self._fd = map_fd
        self._proc = proc_root
        self.removed = 0   # entries removed since start

    def keys(self) -> list[int]:
        lib = libbpf.lib()
        ffi = libbpf.ffi
        key = ffi.new("uint64_t *")
        next_key = ffi.new("uint64_t *")
        out = []
        previous = ffi.NULL
        while lib.bpf_map_get_next_key(self._fd, previous, next_key) == 0:
            out.append(next_key[0])
            key[0] = next_key[0]
            previous = key
        return out

    def sweep(self) -> int:
        """Delete the entries of processes without a /proc entry; returns
        how many went."""
        lib = libbpf.lib()
        key = libbpf.ffi.new("uint64_t *")
        alive: dict[int, bool] = {}
        removed = 0
        for k in self.keys():
            tgid = k >> 32
            live = alive.get(tgid)
            if live is None:
                live = alive[tgid] = os.path.exists(f"{self._proc}/{tgid}")
            if not live:
                key[0] = k
                if lib.bpf_map_delete_elem(self._fd, key) == 0:
                    removed += 1
        self.removed += removed
        return removed
