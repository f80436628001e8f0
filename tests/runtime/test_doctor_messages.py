"""`otel-ebpf doctor`'s loader line states what was checked for the front end
it names, on kernels this machine is not: the feature probes are faked, and
the trial load is refused so that no program is loaded.  No privileges."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import agent.capture.hook_choice as hook_choice
from agent.capture.loader import CaptureLoadError
from agent.runtime import doctor


def fake_kernel(monkeypatch, btf: bool, bpf_loop: bool) -> None:
    features = SimpleNamespace(btf=btf, report=lambda: "kernel: faked")
    loop = (True, "yes") if bpf_loop else (False, "no: faked")
    monkeypatch.setattr(doctor, "detect", lambda: features)
    monkeypatch.setattr(doctor, "ensure_tracefs", lambda: (True, ""))
    monkeypatch.setattr(doctor, "ring_buffer_support", lambda: (True, "yes"))
    monkeypatch.setattr(doctor, "bpf_loop_support", lambda: loop)
    monkeypatch.setattr(hook_choice, "bpf_loop_support", lambda: loop)
    monkeypatch.setattr(doctor, "candidate_hooks", lambda choice, features: [])
    monkeypatch.setattr(doctor, "_kernel_headers_text", lambda configured: "faked")

    def refuse(settings):
        raise CaptureLoadError("trial load refused by the test")
    monkeypatch.setattr(doctor, "load_capture", refuse)


def loader_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("Loader: "))


@pytest.mark.parametrize("choice", ["auto", "bcc"])
def test_bcc_on_a_kernel_without_bpf_loop_does_not_claim_bpf_loop(monkeypatch, choice):
    fake_kernel(monkeypatch, btf=True, bpf_loop=False)
    text, _ = doctor.report(loader=choice)
    line = loader_line(text)
    assert line.startswith("Loader: bcc (")
    assert "bpf_loop present" not in line
    assert "no bpf_loop" in line or "bpf_loop absent" in line
    assert "BCC needs neither" in line or "neither needed by BCC" in line


def test_bcc_without_btf_says_btf_is_missing(monkeypatch):
    fake_kernel(monkeypatch, btf=False, bpf_loop=True)
    line = loader_line(doctor.report(loader="auto")[0])
    assert line.startswith("Loader: bcc (no kernel BTF")


def test_core_with_both_present(monkeypatch):
    fake_kernel(monkeypatch, btf=True, bpf_loop=True)
    assert loader_line(doctor.report(loader="auto")[0]) == \
        "Loader: core (kernel BTF and bpf_loop present)"


def test_core_forced_without_bpf_loop_names_what_is_missing_and_fails(monkeypatch):
    fake_kernel(monkeypatch, btf=True, bpf_loop=False)
    text, ok = doctor.report(loader="core")
    line = loader_line(text)
    assert "bpf_loop absent" in line and "cannot load" in line
    assert not ok


def exchange_records_line(text: str) -> str:
    return next(line for line in text.splitlines()
                if line.startswith("HTTP/1.x exchange records (--http-exchanges"))


@pytest.mark.parametrize("btf, bpf_loop, choice, says", [
    (True, True, "auto", "available: the probes pair requests with responses"),
    (True, True, "bcc", "not with the BCC loader"),
    (False, True, "auto", "not with the BCC loader"),
    (True, False, "core", "need the CO-RE loader, which cannot load here"),
])
def test_doctor_says_whether_the_probes_can_pair_http_exchanges(monkeypatch, btf, bpf_loop,
                                                                 choice, says):
    """The BCC build keeps HTTP/1.x on the payload path: a user who asks for
    exchange records learns it before running the agent."""
    fake_kernel(monkeypatch, btf=btf, bpf_loop=bpf_loop)
    line = exchange_records_line(doctor.report(loader=choice)[0])
    assert says in line
    if "BCC" in says:
        assert "payload path" in line
