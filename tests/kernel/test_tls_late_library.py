"""An OpenSSL copy mapped by a process after its exec, and used at once,
is probed before its first SSL call (issue: a wheel's libssl in a process
shorter than the agent's exec rescans gave no spans)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PEERS
from databases import DB_SYSTEM_NAME, wait_sql_spans
from databases import postgres_fixture  # noqa: F401  (fixture)

STATEMENTS = 20
IMPORT_AFTER_S = 0.7


def private_psycopg_binary(directory: Path) -> Path:
    """A copy of psycopg's binary wheel (with its own libssl) under a new
    path, so the agent has never seen its libssl file."""
    psycopg_binary = pytest.importorskip("psycopg_binary")
    site = Path(psycopg_binary.__file__).resolve().parents[1]
    libs = site / "psycopg_binary.libs"
    if not any(p.name.startswith("libssl") for p in libs.glob("*.so*")):
        pytest.skip("this psycopg-binary wheel has no private libssl")
    shutil.copytree(site / "psycopg_binary", directory / "psycopg_binary")
    shutil.copytree(libs, directory / "psycopg_binary.libs")
    return directory


@pytest.mark.parametrize("agent_loader", ["core", "bcc"])
def test_short_process_with_a_new_wheel_libssl_gives_every_span(receiver, start_agent, postgres,
                                                                tmp_path, agent_loader):
    site = private_psycopg_binary(tmp_path)
    # The shell is selected by pid, then execs the client, which maps the
    # private libssl between the agent's rescans of a new image (0.05 and
    # 0.5 s after the exec: it imports at 0.7 s) and uses it at once.
    shell = subprocess.Popen(
        ["sh", "-c", f'read go; PYTHONPATH={site} exec {sys.executable} '
                     f'{PEERS / "psycopg_tls_burst.py"} "$0" {STATEMENTS} {IMPORT_AFTER_S}',
         postgres.dsn(sslmode="require")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        agent = start_agent("--pid", str(shell.pid))
        out, _ = shell.communicate("go\n", timeout=30)
        assert out.split() == [str(i + 1) for i in range(STATEMENTS)] + ["done"], out
        spans = wait_sql_spans(receiver, postgres.port, STATEMENTS,
                               where=lambda s: s.name.startswith("SELECT"), timeout=30)
    finally:
        shell.kill()
        shell.wait()
    assert len(spans) == STATEMENTS, [s.name for s in receiver.spans]
    # The private copy was probed on its opening, not by a rescan.
    assert agent.metric("otel_ebpf_kernel_events_total", probe="tls_library_open") >= 1
    assert f"probes on {site}" in agent.stderr(), agent.stderr()
    assert all(s.attributes[DB_SYSTEM_NAME] == "postgresql" for s in spans)
    assert all(s.resource.get("process.pid") == shell.pid for s in spans)
