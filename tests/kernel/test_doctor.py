"""`otel-ebpf doctor` as a user runs it, on this kernel."""
from __future__ import annotations

import subprocess

from agent.kernel_features import detect
from conftest import AGENT, ROOT


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
    # Every family preferred over the chosen one is listed as skipped, with why.
    order = ["fentry", "kprobe", "raw_tracepoint", "tracepoint"]
    for family in order[:order.index(chosen)]:
        assert f"skipped {family}: " in out, family
    if not detect().kprobes:
        assert "skipped kprobe: this kernel offers no kprobes" in out
    # The system's libssl, which Debian's python, curl and nginx use.
    tls = out.split("\nTLS: ", 1)[1]
    assert int(tls.split()[0]) >= 1, tls
    assert "libssl.so" in tls
