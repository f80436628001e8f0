#!/usr/bin/env python3
"""Load the capture the way the agent does and print what the kernel says
about each loaded program: instructions the verifier processed, translated
and JIT-compiled sizes, and the wall time of the load.

    sudo .venv/bin/python scripts/capture-load-figures.py --loader core --hooks tracepoint
    sudo .venv/bin/python scripts/capture-load-figures.py --loader bcc
    sudo .venv/bin/python scripts/capture-load-figures.py --object /tmp/old.bpf.o
    sudo .venv/bin/python scripts/capture-load-figures.py --http-exchanges

Figures for docs/decisions/kernel-units.md.  Needs root and `bpftool`.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.loader import CaptureSettings, load_capture  # noqa: E402


def own_programs() -> list[dict]:
    """bpftool's view of the programs this process holds open (their ids
    from /proc/self/fdinfo)."""
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        ids.update(int(m) for m in re.findall(r"^prog_id:\s+(\d+)", info, re.MULTILINE))
    shown = json.loads(subprocess.run(["bpftool", "--json", "prog", "show"], check=True,
                                      capture_output=True, text=True).stdout)
    programs = [p for p in shown if p["id"] in ids]
    for prog in programs:
        prog.setdefault("verified_insns", verified_insns(prog["id"]))
    return programs


# struct bpf_prog_info (uapi linux/bpf.h, Linux 5.16+): verified_insns's offset, the size.
_VERIFIED_INSNS_OFFSET, _PROG_INFO_SIZE = 216, 232


def verified_insns(prog_id: int) -> int:
    """Instructions the verifier processed for a program (bpftool before
    v7.2 does not print them)."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd < 0:
        return 0
    try:
        info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
        size = ctypes.c_uint32(_PROG_INFO_SIZE)
        if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)):
            return 0
        return int.from_bytes(info.raw[_VERIFIED_INSNS_OFFSET:_VERIFIED_INSNS_OFFSET + 4],
                              sys.byteorder)
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loader", default="core", choices=("core", "bcc"))
    parser.add_argument("--hooks", default="auto")
    parser.add_argument("--object", type=Path, help="a CO-RE object other than build/'s")
    parser.add_argument("--runs", type=int, default=3, help="loads timed (default: %(default)s)")
    parser.add_argument("--http-exchanges", action="store_true",
                        help="load with HTTP/1.x exchange records on (bpf/http_exchange.h)")
    args = parser.parse_args()
    times, programs, family = [], [], None
    for _ in range(args.runs):
        settings = CaptureSettings(loader=args.loader, hooks=args.hooks, tls=True,
                                   http_exchanges=args.http_exchanges)
        start = time.monotonic()
        capture = load_capture(settings, args.object)
        times.append(time.monotonic() - start)
        family = capture.hook_family.name
        programs = own_programs()
        capture.close()
    print(f"loader {args.loader}, hooks {family}, load+attach seconds over {args.runs} runs: "
          f"median {statistics.median(times):.3f} (min {min(times):.3f}, max {max(times):.3f})")
    print(f"{'program':<22}{'verified':>10}{'xlated':>9}{'jited':>9}")
    total = [0, 0, 0]
    for prog in sorted(programs, key=lambda p: p["name"]):
        row = (prog.get("verified_insns", 0), prog.get("bytes_xlated", 0),
               prog.get("bytes_jited", 0))
        total = [a + b for a, b in zip(total, row)]
        print(f"{prog['name']:<22}{row[0]:>10}{row[1]:>9}{row[2]:>9}")
    print(f"{'total':<22}{total[0]:>10}{total[1]:>9}{total[2]:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
