"""Kernel headers compiled for the host with cffi, so that the C the probes
run can be checked against userspace's parsers in unit tests."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

BPF = Path(__file__).resolve().parents[1] / "bpf"


def build_host_module(tmp_path_factory, name: str, cdefs: list[str], header: str,
                      warnings: tuple = ()):
    """The cffi module `name` built from `#include "<header>"` under bpf/,
    with OTEL_EBPF_HOST defined and every warning an error; skips the test
    where the host has no C compiler or no cffi."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip(f"no C compiler for the host build of {header}")
    cffi = pytest.importorskip("cffi")
    builder = cffi.FFI()
    for cdef in cdefs:
        builder.cdef(cdef)
    builder.set_source(name, f'#include "{header}"', include_dirs=[str(BPF)],
                       define_macros=[("OTEL_EBPF_HOST", "1")],
                       extra_compile_args=["-Wall", "-Werror", "-Wno-unused-function", *warnings])
    build_dir = tmp_path_factory.mktemp(name)
    module_path = builder.compile(tmpdir=str(build_dir), verbose=False)
    sys.path.insert(0, str(build_dir))
    try:
        return __import__(Path(module_path).name.split(".")[0])
    finally:
        sys.path.remove(str(build_dir))
