"""The kernel sources' layout rules: headers include each other without a
cycle, and only bpf/frontend.h asks which front end builds the capture."""
from __future__ import annotations

import re
from pathlib import Path

BPF = Path(__file__).resolve().parents[2] / "bpf"
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def local_includes(name: str) -> list[str]:
    return [n for n in INCLUDE.findall((BPF / name).read_text()) if (BPF / n).exists()]


def test_no_include_cycle():
    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join(path + (name,))
        for included in local_includes(name):
            visit(included, path + (name,))
    for source in sorted(BPF.iterdir()):
        visit(source.name, ())


def test_only_frontend_h_tests_the_front_end():
    asking = [p.name for p in sorted(BPF.iterdir()) if "OTEL_EBPF_BCC" in p.read_text()]
    assert asking == ["frontend.h"]


def test_each_protocol_unit_is_part_of_the_one_capture_object():
    units = {p.name for p in BPF.glob("*.bpf.c")} - {"capture.bpf.c"}
    assert units == {"http.bpf.c", "grpc.bpf.c", "sql.bpf.c"}
    assert set(local_includes("protocols.h")) >= units
    assert "protocols.h" in local_includes("capture.bpf.c")
