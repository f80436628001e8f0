"""deploy/grafana-dashboard.json imports as is: valid JSON, a Prometheus
datasource variable, one query per panel naming only metric families the
agent declares (the kernel test tests/kernel/test_dashboard.py runs them)."""
from __future__ import annotations

import json
from pathlib import Path

from agent.metrics.prometheus import prometheus_name
from agent.metrics.red import METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana-dashboard.json"


def test_dashboard_is_importable_json_with_a_query_per_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        [target] = panel["targets"]
        expr = target["expr"]
        assert expr.count("(") == expr.count(")"), panel["title"]
        assert "otel_ebpf_" in expr or any(prometheus_name(m.name) in expr for m in METRICS)
