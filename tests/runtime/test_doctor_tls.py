"""The doctor's TLS runtime lines (agent/runtime/doctor_tls.py), read from
the real files of this machine and from real processes started here."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from agent.capture.tls import system_libssl_paths
from agent.runtime.doctor_tls import tls_runtime_lines


def line_about(lines: list[str], start: str) -> str:
    found = [line for line in lines if line.startswith("  " + start)]
    assert len(found) == 1, lines
    return found[0]


@pytest.fixture
def running(tmp_path):
    """Start a process that stays up until the test ends, once it says "up"
    (what it loads is mapped by then); returns it and a /proc that shows
    only the processes started so (links to their real /proc entries), so
    that the other processes of this busy machine do not crowd the lines."""
    procs = []

    def start(args: list[str]) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "up"
        (tmp_path / str(proc.pid)).symlink_to(f"/proc/{proc.pid}")
        return proc, str(tmp_path)
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_one_line_per_runtime_with_what_is_covered():
    lines = tls_runtime_lines()
    assert lines[0] == "OpenSSL runtimes on this node:"
    starts = ["OpenSSL, socket BIO", "OpenSSL, memory BIO (Python asyncio",
              "OpenSSL, memory BIO (Node.js"]
    assert [line_about(lines, start) for start in starts] == lines[1:]


def test_system_libssl_covers_socket_and_memory_bios():
    libssl = sorted({os.path.realpath(p) for p in system_libssl_paths()})
    if not libssl:
        pytest.skip("no libssl in the dynamic linker's cache")
    lines = tls_runtime_lines()
    for start in ("OpenSSL, socket BIO", "OpenSSL, memory BIO (Python asyncio"):
        line = line_about(lines, start)
        assert ": traced," in line and libssl[0] in line, line


def test_node_with_its_own_openssl_is_traced(running):
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.skip("Debian's nodejs is not installed (make setup installs it)")
    _, proc = running([node, "-e", "console.log('up'); setTimeout(() => {}, 60000)"])
    line = line_about(tls_runtime_lines(proc), "OpenSSL, memory BIO (Node.js")
    assert line.endswith(f"by its TLS records; {os.path.realpath(node)}"), line


def test_a_process_gone_while_scanned_is_skipped(tmp_path):
    """A /proc entry without exe or maps (a kernel thread, an exited
    process) is skipped; the lines still come, from PATH and ldconfig."""
    (tmp_path / "12345").mkdir()
    lines = tls_runtime_lines(proc=str(tmp_path))
    node = shutil.which("node") or shutil.which("nodejs")
    line = line_about(lines, "OpenSSL, memory BIO (Node.js")
    if node:
        assert os.path.realpath(node) in line, line
    else:
        assert line.endswith("no node executable found"), line
