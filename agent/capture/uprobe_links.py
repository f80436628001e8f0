"""Uprobe links at file offsets of an ELF file, for every process that maps
it, each with its BPF cookie: one uprobe_multi link where the kernel has
them, else a perf event and a BPF link per offset."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from agent.capture import libbpf
from agent.capture.libbpf import ffi


def uprobe_multi_link(prog_fd: int, path: str, targets: list[tuple[int, int]],
                      retprobe: bool) -> int:
    """BPF_LINK_CREATE of a uprobe_multi link: its fd, or -1."""
    count = len(targets)
    attr = ffi.new("struct uprobe_multi_link_attr *")
    c_path = ffi.new("char[]", path.encode())
    offsets = ffi.new("uint64_t[]", [offset for offset, _ in targets])
    cookies = ffi.new("uint64_t[]", [cookie for _, cookie in targets])
    attr.prog_fd = prog_fd
    attr.attach_type = libbpf.BPF_TRACE_UPROBE_MULTI
    attr.path = int(ffi.cast("uintptr_t", c_path))
    attr.offsets = int(ffi.cast("uintptr_t", offsets))
    attr.cookies = int(ffi.cast("uintptr_t", cookies))
    attr.cnt = count
    attr.multi_flags = libbpf.BPF_F_UPROBE_MULTI_RETURN if retprobe else 0
    return libbpf.bpf_syscall(libbpf.BPF_LINK_CREATE, attr,
                              ffi.sizeof("struct uprobe_multi_link_attr"))


@functools.cache
def _uprobe_pmu() -> tuple[int, int] | None:
    """The uprobe PMU's type and its retprobe config bit, or None."""
    base = Path("/sys/bus/event_source/devices/uprobe")
    try:
        pmu_type = int((base / "type").read_text())
        bit = (base / "format" / "retprobe").read_text().strip()   # "config:0"
        return pmu_type, int(bit.split(":", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


def perf_event_uprobe_link(prog_fd: int, path: str, offset: int, cookie: int,
                           retprobe: bool) -> list[int] | None:
    """A uprobe perf event at a file offset, every process, and a BPF link
    carrying its cookie: [link fd, event fd] (closed in that order), or None."""
    pmu = _uprobe_pmu()
    if pmu is None:
        return None
    pmu_type, retprobe_bit = pmu
    c_path = ffi.new("char[]", path.encode())
    attr = ffi.new("struct perf_event_attr_probe *")
    attr.type = pmu_type
    attr.size = ffi.sizeof("struct perf_event_attr_probe")
    attr.config = (1 << retprobe_bit) if retprobe else 0
    attr.probe_path = int(ffi.cast("uintptr_t", c_path))
    attr.probe_offset = offset
    event_fd = libbpf.perf_event_open(attr, pid=-1, cpu=0)
    if event_fd < 0:
        return None
    link = ffi.new("struct perf_event_link_attr *")
    link.prog_fd = prog_fd
    link.target_fd = event_fd
    link.attach_type = libbpf.BPF_PERF_EVENT
    link.bpf_cookie = cookie
    link_fd = libbpf.bpf_syscall(libbpf.BPF_LINK_CREATE, link,
                                 ffi.sizeof("struct perf_event_link_attr"))
    if link_fd < 0:
        os.close(event_fd)
        return None
    return [link_fd, event_fd]
