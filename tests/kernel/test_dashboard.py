"""deploy/grafana-dashboard.json against a real Prometheus (Debian's
`prometheus`, on loopback) scraping a running agent under traffic: every
panel's query returns a non-empty, sensible result, and the dashboard names
only metrics the agent exports."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from loopback import free_port, wait_for_port
from test_red_metrics import send

DASHBOARD = ROOT / "deploy/grafana-dashboard.json"
PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "le", "without", "avg"}


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] != "row"
            for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """Identifiers that stand for series: outside label matchers and
    by (...) clauses, not PromQL's own words or numbers."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"by \([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return {w for w in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr) if w not in PROMQL_WORDS}


class Prometheus:
    def __init__(self, directory: Path, target: str):
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                          f"scrape_configs:\n  - job_name: otel-ebpf\n"
                          f"    static_configs: [{{targets: ['{target}']}}]\n")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={directory}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=30)

    def query(self, expr: str) -> list:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 503:       # listening, but its storage is not ready yet
                return []
            raise
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def test_every_dashboard_query_answers_under_traffic(tmp_path, start_agent, start_nginx, backend):
    if not shutil.which("prometheus"):
        pytest.skip("prometheus is not installed (scripts/install-system-deps.sh installs it)")
    nginx = start_nginx(backend)
    agent = start_agent("--port", str(nginx.port), "--port", str(backend),
                        "--route", "/api/status/{code}")
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{agent.metrics_port}")
    stop = threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            send(nginx.port, [f"/api/status/{(200, 200, 404, 500)[j % 4]}" for j in range(i, i + 20)])
            i += 20
            time.sleep(0.05)
    load = threading.Thread(target=traffic, daemon=True)
    load.start()
    try:
        queries = panel_queries()
        assert queries
        deadline = time.monotonic() + 60
        results: dict = {}
        while time.monotonic() < deadline:
            results = {title: prometheus.query(expr) for title, expr in queries}
            if all(results.values()) and all(
                    not math.isnan(float(s["value"][1])) for r in results.values() for s in r):
                break
            time.sleep(1)
        exposition = agent.metrics()
    finally:
        stop.set()
        load.join(10)
        prometheus.stop()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update([name] + [name + s for s in suffixes.get(kind, [])])
    for title, expr in queries:
        unknown = metric_names(expr) - names
        assert not unknown, f"{title}: {unknown} not exported by the agent"
    for title, result in results.items():
        assert result, f"{title}: no series"
        values = [float(s["value"][1]) for s in result]
        assert all(math.isfinite(v) and v >= 0 for v in values), (title, values)
        if "ratio" in title.lower() or "fill" in title.lower():
            assert all(v <= 1 for v in values), (title, values)
    rates = results["Request rate /s"]
    assert {s["metric"].get("http_route") for s in rates} >= {"/api/status/{code}"}
    assert any(float(s["value"][1]) > 1 for s in rates)
    errors = [float(s["value"][1]) for s in results["Error ratio"]
              if s["metric"].get("http_route") == "/api/status/{code}"]
    assert errors and all(0.15 < v < 0.35 for v in errors)       # 1 in 4 answers 500
    for quantile in ("Duration p50", "Duration p95", "Duration p99"):
        assert all(0 < float(s["value"][1]) <= 10 for s in results[quantile])
    assert sum(float(s["value"][1]) for s in results["Probe CPU (cores)"]) > 0
