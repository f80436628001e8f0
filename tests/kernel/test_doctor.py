"""`otel-ebpf doctor` as a user runs it, on this kernel."""
from __future__ import annotations

import subprocess

import pytest

from agent.capture.kernel_features import detect
from conftest import AGENT, BCC_KERNEL_HEADERS, ROOT, skip_reason


def test_doctor_reports_the_kernel_and_the_hooks_a_trial_load_picks():
    result = subprocess.run(AGENT + ["doctor"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for item in ("BTF", "tracefs", "kprobes", "uprobes", "capabilities", "RLIMIT_MEMLOCK",
                 "BPF ring buffer: yes", "bpf_loop helper: yes"):
        assert item in out, item
    assert "The agent will use: " in out
    chosen = out.split("The agent will use: ", 1)[1].split()[0]
    assert chosen in ("fentry", "kprobe", "raw_tracepoint", "tracepoint")
    assert "Loader: core (kernel BTF and bpf_loop present)" in out
    assert "loader core (CO-RE, libbpf)" in out
    # Every family preferred over the chosen one is listed as skipped, with why.
    order = ["fentry", "kprobe", "tracepoint", "raw_tracepoint"]
    for family in order[:order.index(chosen)]:
        assert f"skipped {family}: " in out, family
    if not detect().kprobes:
        assert "skipped kprobe: this kernel offers no kprobes" in out
    # The system's libssl, which Debian's python, curl and nginx use.
    tls = out.split("\nTLS: ", 1)[1]
    assert int(tls.split()[0]) >= 1, tls
    assert "libssl.so" in tls


@pytest.mark.skipif(skip_reason("bcc") is not None, reason=str(skip_reason("bcc")))
def test_doctor_with_the_bcc_loader_compiles_against_the_headers_it_finds():
    """The headers are found without being named: /lib/modules, else /usr/src."""
    result = subprocess.run(AGENT + ["doctor", "--loader", "bcc"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Loader: bcc" in out
    assert f"Kernel headers for the BCC loader: {BCC_KERNEL_HEADERS}" in out
    # Enter and exit of the 13 syscalls, process exit and exec, the
    # socket-state tracepoint the BCC build learns addresses from, and the
    # fork, exit and execve-entry tracepoints that give a process's start
    # time and executable to its exec record, tcp_rcv_space_adjust, which
    # places connections accepted with no peer address, and the two openat
    # tracepoints that watch for libssl files being opened.
    assert "The agent will use: tracepoint hooks (35 programs" in out, out
    assert "skipped fentry: not in the BCC build" in out


def test_doctor_with_the_bcc_loader_says_what_headers_are_missing(tmp_path):
    result = subprocess.run(AGENT + ["doctor", "--loader", "bcc", "--kernel-headers",
                                     str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert f"kernel headers at {tmp_path} lack include/generated/autoconf.h" in result.stdout
