"""Cost of one sweep of exited processes' `conns` entries at a full map
(docs/decisions/conns-cleanup.md).  Root; fills a pinned hash map of the
`conns` layout with bpftool (65,536 entries, 8 descriptors each of 8,192
pids above pid_max, so none alive) and times ExitedConnSweep on it.

    sudo .venv/bin/python benchmarks/conns_sweep.py
"""
from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import time

import cffi

from agent.capture.conn_sweep import ExitedConnSweep

ENTRIES = 65536
PIN = "/sys/fs/bpf/otel_ebpf_conns_sweep_bench"


def main() -> None:
    if os.path.exists(PIN):
        os.unlink(PIN)
    subprocess.run(["bpftool", "map", "create", PIN, "type", "hash", "key", "8", "value", "56",
                    "entries", str(ENTRIES), "name", "sweep_bench"], check=True)
    value = " ".join(["0"] * 56)
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        for i in range(ENTRIES):
            key = struct.pack("<Q", ((4_000_000 + i // 8) << 32) | (i % 8))
            batch.write(f"map update pinned {PIN} key {' '.join(map(str, key))} value {value}\n")
        batch.flush()
        subprocess.run(["bpftool", "batch", "file", batch.name], check=True,
                       stdout=subprocess.DEVNULL)
    ffi = cffi.FFI()
    ffi.cdef("int bpf_obj_get(const char *pathname);")
    fd = ffi.dlopen("libbpf.so.1").bpf_obj_get(PIN.encode())
    try:
        sweep = ExitedConnSweep(fd)
        started = time.perf_counter()
        keys = len(sweep.keys())
        walked = time.perf_counter()
        removed = sweep.sweep()
        swept = time.perf_counter()
        sweep.sweep()
        print(f"keys {keys} in {walked - started:.3f}s; sweep removed {removed} in "
              f"{swept - walked:.3f}s; empty map sweep {time.perf_counter() - swept:.4f}s")
    finally:
        os.close(fd)
        os.unlink(PIN)


if __name__ == "__main__":
    main()
