"""Go executables: build info, the probed functions' entries and RETs, the
socket layout from DWARF, and what a binary without symbols or DWARF loses.
The peer is built here with the system's Go; no privilege needed."""
from __future__ import annotations

import os

import pytest

from agent.capture import go_binaries
from agent.capture.go_binaries import inspect, is_go_executable, return_offsets
from agent.capture.go_tls import SOCKET_FROM_DWARF, SOCKET_FROM_THREAD, GoTlsProbes
from go_peer import go_build, require_go


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    require_go()
    out = tmp_path_factory.mktemp("go")
    return {"full": go_build(out, "peer"), "no_dwarf": go_build(out, "peer_w", "-w"),
            "no_symbols": go_build(out, "peer_s", "-s -w")}


def test_returns_are_decoded_instructions_not_bytes():
    # mov eax, 0xc3c3c3c3; ret: only the last byte is a RET.
    assert return_offsets(b"\xb8\xc3\xc3\xc3\xc3\xc3", 100) == [105]
    # A truncated instruction: undecodable, so no answer rather than a guess.
    assert return_offsets(b"\xc3\x48", 0) is None


def test_go_binary_with_dwarf(builds):
    path = builds["full"]
    assert is_go_executable(path)
    found = inspect(path)
    assert found.skip_reason == "" and found.go_version.startswith("go1.")
    targets = found.targets
    assert targets.layout is not None
    # A fixed-address executable: the type check of the Conn's net.Conn is on.
    assert targets.tcp_conn_itab != 0
    with open(path, "rb") as f:
        data = f.read()
    for offset in targets.read_returns + targets.write_returns:
        assert data[offset] == 0xC3
    # Each entry is the function's start, not one of its returns.
    assert targets.read_entry < min(targets.read_returns)
    assert targets.write_entry < min(targets.write_returns)


def test_binaries_without_dwarf_or_symbols(builds):
    no_dwarf = inspect(builds["no_dwarf"])
    assert no_dwarf.targets is not None and no_dwarf.targets.layout is None
    no_symbols = inspect(builds["no_symbols"])
    assert no_symbols.targets is None and no_symbols.skip_reason == go_binaries.SKIP_NO_SYMBOLS


def test_not_go():
    assert not is_go_executable("/bin/sh")
    assert inspect("/nonexistent").skip_reason == go_binaries.SKIP_UNREADABLE


class FakeFrontEnd:
    name = "core"

    def program_fd(self, name):
        return 3


class FakeMaps:
    def __init__(self):
        self.layouts = {}

    def set_binary(self, index, layout):
        self.layouts[index] = layout


class FakeCapture:
    front_end = FakeFrontEnd()

    def __init__(self):
        self.attached = []

    def attach_uprobes(self, program, path, targets, retprobe):
        assert not retprobe   # never a uretprobe on Go
        # Through the probing agent's own fd: a /proc/PID/exe path dies
        # with its process, which may exit while the DWARF is read.
        assert path.startswith("/proc/self/fd/") and os.path.exists(path)
        self.attached.append((program, targets))
        return len(targets)


def test_probes_count_per_binary(builds):
    capture, maps = FakeCapture(), FakeMaps()
    probes = GoTlsProbes(capture, maps)
    assert probes.probe(builds["full"]) and probes.probe(builds["no_dwarf"])
    assert not probes.probe(builds["no_symbols"])
    assert probes.outcomes == {SOCKET_FROM_DWARF: 1, SOCKET_FROM_THREAD: 1,
                               go_binaries.SKIP_NO_SYMBOLS: 1}
    assert probes.skipped == [(os.path.realpath(builds["no_symbols"]), go_binaries.SKIP_NO_SYMBOLS)]
    # The second binary's cookies carry its index.
    entries = [targets for program, targets in capture.attached if program == "tls_go_enter"]
    assert {cookie >> 8 for _, cookie in entries[1]} == {1}
    assert set(maps.layouts) == {0, 1}
