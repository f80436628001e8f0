"""Kernel time of the probes' HTTP/1.x head parser alone (bpf/http_head.h),
per head: benchmarks/head_parse_cost.bpf.c parses one head N times inside
the kernel (BPF_PROG_TEST_RUN of a syscall program, timed there), so the
figure holds no syscall, ring buffer or map lookup and hardly moves with
the machine's load, unlike benchmarks/exchange_cost.py's.  Heads: the
request and response of exchange_cost.py's loop, and captured curl and
nginx heads.

    .venv/bin/python benchmarks/head_parse_cost.py [--iters 100000] [--ref main]

--ref REF also times the parser of a git revision (its bpf/ headers), in
turn with this tree's.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from exchange_cost import REQUEST, response  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "http1"
HEADS = [("benchmark request", REQUEST, False), ("benchmark response", response(5), True),
         ("curl request, traceparent", (FIXTURES / "curl_get_traceparent.bin").read_bytes(), False),
         ("nginx response", (FIXTURES / "nginx_static.bin").read_bytes(), True)]
BPF_ARCH = {"x86_64": "x86", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

# struct bench (head_parse_cost.bpf.c): the head's bytes, then 24 bytes of
# len, iters, ns, steps, response, verdict and padding at the value's end.
HEAD_BYTES = 4096
TAIL_BYTES = 24
# struct bpf_prog_info (uapi linux/bpf.h, 5.16+): verified_insns's offset, the size.
VERIFIED_INSNS_OFFSET, PROG_INFO_SIZE = 216, 232


class TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


def libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    for name, res, args in [
            ("bpf_object__open_file", ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
            ("bpf_object__load", ctypes.c_int, [ctypes.c_void_p]),
            ("bpf_object__close", None, [ctypes.c_void_p]),
            ("bpf_object__find_program_by_name", ctypes.c_void_p,
             [ctypes.c_void_p, ctypes.c_char_p]),
            ("bpf_object__find_map_by_name", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
            ("bpf_program__fd", ctypes.c_int, [ctypes.c_void_p]),
            ("bpf_map__fd", ctypes.c_int, [ctypes.c_void_p]),
            ("bpf_map__value_size", ctypes.c_uint32, [ctypes.c_void_p])]:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def build(headers: Path, out: Path) -> None:
    clang = os.environ.get("CLANG", "clang-19")
    subprocess.run([clang, "-target", "bpf", "-g", "-O2", "-Wall", "-Wno-unused-function",
                    "-Wno-macro-redefined", f"-D__TARGET_ARCH_{BPF_ARCH}",
                    "-I", str(ROOT / "build"), "-I", str(headers),
                    "-I", f"/usr/include/{platform.machine()}-linux-gnu",
                    "-c", str(ROOT / "benchmarks" / "head_parse_cost.bpf.c"), "-o", str(out)],
                   check=True)


def measure(obj_path: Path, iters: int) -> tuple[int, list[tuple]]:
    """(verified instructions, [(name, bytes, verdict, steps, ns per parse)])."""
    lib = libbpf()
    obj = lib.bpf_object__open_file(str(obj_path).encode(), None)
    if not obj or lib.bpf_object__load(obj):
        raise OSError(ctypes.get_errno(), f"load {obj_path}")
    try:
        prog_fd = lib.bpf_program__fd(lib.bpf_object__find_program_by_name(obj, b"run"))
        bench = lib.bpf_object__find_map_by_name(obj, b"bench")
        map_fd, size = lib.bpf_map__fd(bench), lib.bpf_map__value_size(bench)
        info = ctypes.create_string_buffer(PROG_INFO_SIZE)
        info_size = ctypes.c_uint32(PROG_INFO_SIZE)
        lib.bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(info_size))
        verified = int.from_bytes(info.raw[VERIFIED_INSNS_OFFSET:VERIFIED_INSNS_OFFSET + 4],
                                  sys.byteorder)
        head_at = size - TAIL_BYTES - HEAD_BYTES
        rows = []
        for name, data, response in HEADS:
            rows.append((name, len(data)) + run_head(lib, prog_fd, map_fd, size, head_at, data,
                                                     response, iters))
        return verified, rows
    finally:
        lib.bpf_object__close(obj)


def run_head(lib, prog_fd, map_fd, size, head_at, data, response, iters):
    tail = head_at + HEAD_BYTES      # len, iters, ns, steps, response, verdict
    value = bytearray(size)
    value[head_at:head_at + len(data)] = data
    value[tail:tail + 8] = len(data).to_bytes(4, "little") + iters.to_bytes(4, "little")
    value[tail + 20] = int(response)
    key = ctypes.c_uint32(0)
    buf = (ctypes.c_char * size).from_buffer(value)
    if lib.bpf_map_update_elem(map_fd, ctypes.byref(key), buf, 0):
        raise OSError(ctypes.get_errno(), "bench map update")
    best = None
    for _ in range(5):
        opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
        if lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)):
            raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN")
        out = (ctypes.c_char * size)()
        lib.bpf_map_lookup_elem(map_fd, ctypes.byref(key), out)
        raw = bytes(out)
        ns = int.from_bytes(raw[tail + 8:tail + 16], "little")
        best = ns if best is None else min(best, ns)
    steps = int.from_bytes(raw[tail + 16:tail + 20], "little")
    return raw[tail + 21], steps, best / iters


def headers_of(ref: str, into: Path) -> Path:
    """The revision's bpf/*.h, written into a folder of their own."""
    into.mkdir(parents=True, exist_ok=True)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", ref, "bpf/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for path in (n for n in names if n.endswith(".h")):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{path}"],
                              check=True, capture_output=True).stdout
        (into / Path(path).name).write_bytes(text)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=100_000)
    parser.add_argument("--ref", help="also time this git revision's parser")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="head_parse_cost."))
    try:
        trees = [("this tree", ROOT / "bpf")]
        if args.ref:
            trees.append((args.ref, headers_of(args.ref, tmp / "ref")))
        for label, headers in trees:
            obj = tmp / f"{len(label)}.o"
            build(headers, obj)
            verified, rows = measure(obj, args.iters)
            print(f"{label}: verifier processed {verified} instructions")
            for name, size, verdict, steps, ns in rows:
                print(f"  {name:28} {size:5} bytes  verdict {verdict}  {steps:3} steps  "
                      f"{ns:7.1f} ns per parse")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
