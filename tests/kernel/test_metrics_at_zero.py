"""A fresh agent's /metrics already lists the counters whose label values
are known in advance, at 0: `otel_ebpf_parse_errors_total` for every
protocol and reason its handlers declare, so that rate() and alerts work
before the first error.  The exposition stays clean for promtool."""
from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from agent.protocols.router import HANDLERS


def test_fresh_agent_lists_every_declared_parse_error_at_zero(start_agent):
    agent = start_agent("--port", "1")         # nothing to trace: no traffic at all
    text = agent.metrics()
    samples = {}
    for family in text_string_to_metric_families(text):
        if family.name == "otel_ebpf_parse_errors":
            for sample in family.samples:
                samples[(sample.labels["protocol"], sample.labels["reason"])] = sample.value
    declared = {(h.NAME, reason) for h in HANDLERS for reason in h.PARSE_ERRORS.reasons}
    assert ("http2", "resync") in declared and ("postgresql", "bad_parse") in declared
    assert set(samples) == declared, sorted(set(samples) ^ declared)
    assert set(samples.values()) == {0.0}
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=text,
                               capture_output=True, text=True)
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), \
            check.stdout + check.stderr
