"""The fallback hook family under both loaders, and the BCC loader's refusals.
(The spine's end-to-end tests run under both loaders: test_http1_e2e.py.)"""
from __future__ import annotations

import subprocess

import pytest

from agent.spans.model import KIND_SERVER
from conftest import AGENT, ROOT, curl
from test_http1_e2e import PARENT_ID, TRACE_ID, TRACEPARENT, wait_spans


@pytest.fixture(params=["core", "bcc"])
def agent_loader(request) -> str:
    """A parameter, so that each loader's skip reasons apply here."""
    return request.param


def test_raw_syscall_tracepoints_trace_a_request(receiver, start_agent, backend, agent_loader):
    """The family after the per-syscall tracepoints (the spine's default
    here): two raw tracepoints, which need no tracefs on the CO-RE build."""
    agent = start_agent("--hooks", "raw_tracepoint", "--port", str(backend))
    assert "hooks=raw_tracepoint (" in agent.stderr()
    assert curl(f"http://127.0.0.1:{backend}/raw-syscall", TRACEPARENT)["status"] == 200
    server = wait_spans(receiver, lambda s: s.kind == KIND_SERVER
                        and s.attributes.get("url.path") == "/raw-syscall", 1)[0]
    assert server.trace_id == TRACE_ID and server.parent_span_id == PARENT_ID
    assert server.attributes["server.port"] == backend


@pytest.mark.parametrize("agent_loader", ["bcc"], indirect=True)
def test_bcc_loader_refuses_hooks_it_does_not_build(agent_loader):
    result = subprocess.run(AGENT + ["run", "--loader", "bcc", "--hooks", "kprobe",
                                     "--metrics-address", "", "--duration", "1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode != 0
    assert "--hooks kprobe: the BCC loader has tracepoint and raw_tracepoint hooks" in result.stderr


@pytest.mark.parametrize("agent_loader", ["bcc"], indirect=True)
def test_bcc_loader_asked_for_exchange_records_traces_http_on_the_payload_path(
        receiver, start_agent, backend, agent_loader):
    """BCC's programs have no bpf_loop to parse heads with: asked to pair
    HTTP/1.x in the probes, the agent says it will not, traces the request
    all the same, and exports no exchange-record counters that would read 0
    as if the probes were pairing."""
    agent = start_agent("--http-exchanges", "--port", str(backend))
    stderr = agent.stderr()
    assert "loader=bcc" in stderr and "HTTP/1.x=payload path" in stderr
    assert "--http-exchanges: the bcc loader's programs cannot parse HTTP/1.x heads" in stderr
    assert curl(f"http://127.0.0.1:{backend}/bcc-records", TRACEPARENT)["status"] == 200
    server = wait_spans(receiver, lambda s: s.kind == KIND_SERVER
                        and s.attributes.get("url.path") == "/bcc-records", 1)[0]
    assert server.trace_id == TRACE_ID and server.parent_span_id == PARENT_ID
    metrics = agent.metrics()
    assert "otel_ebpf_kernel_events_total" in metrics
    assert "otel_ebpf_kernel_http_fallbacks" not in metrics
    assert "otel_ebpf_kernel_http_exchanges_shed" not in metrics


@pytest.mark.parametrize("agent_loader", ["core"], indirect=True)
def test_core_loader_pairs_http_exchanges_when_asked(receiver, start_agent, backend,
                                                     agent_loader):
    agent = start_agent("--http-exchanges", "--port", str(backend))
    assert "HTTP/1.x=exchange records" in agent.stderr()
    assert "span workers=up to 1, while the load needs them" in agent.stderr()
    assert curl(f"http://127.0.0.1:{backend}/core-records", TRACEPARENT)["status"] == 200
    server = wait_spans(receiver, lambda s: s.kind == KIND_SERVER
                        and s.attributes.get("url.path") == "/core-records", 1)[0]
    assert server.trace_id == TRACE_ID
    assert "otel_ebpf_kernel_http_fallbacks" in agent.metrics()
