"""Process churn: 1,500 short curl processes, as a CI runner or cron makes
them.  Every client span keeps its process's complete resource although curl
has exited before the agent reads /proc, and the kernel's per-descriptor
map keeps no entry of a process that has exited."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from agent.spans.model import KIND_CLIENT
from conftest import LOADER_ARGS, TIME_SCALE

CURLS = 1500


@pytest.fixture(params=list(LOADER_ARGS))
def agent_loader(request) -> str:
    """Both front ends: the BCC build learns starts and filenames its own way."""
    return request.param


def agent_conns_map(agent_pid: int) -> int:
    """The id of the `conns` map the agent at agent_pid holds (other agents
    may run on the machine: theirs are not looked at)."""
    ids = set()
    fdinfo = f"/proc/{agent_pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            with open(f"{fdinfo}/{fd}") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if "map_id" in fields:
            ids.add(int(fields["map_id"]))
    maps = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], check=True,
                                     capture_output=True, text=True).stdout)
    found = [m["id"] for m in maps if m.get("name") == "conns" and m["id"] in ids]
    assert len(found) == 1, found
    return found[0]


def conns_tgids(map_id: int) -> set[int]:
    entries = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                                        check=True, capture_output=True, text=True).stdout)
    tgids = set()
    for entry in entries:
        key = bytes(int(b, 16) for b in entry["key"])
        tgids.add(int.from_bytes(key, "little") >> 32)
    return tgids


def run_curls(backend: int) -> None:
    # Bodies go to curl's stdout, as in a script: a descriptor it never closes.
    subprocess.run(f"seq {CURLS} | xargs -P4 -I{{}} curl -s http://127.0.0.1:{backend}/churn",
                   shell=True, check=True, stdout=subprocess.DEVNULL, timeout=180 * TIME_SCALE)


def client_spans(receiver, backend: int) -> list:
    def clients(spans):
        return [s for s in spans if s.kind == KIND_CLIENT
                and s.attributes.get("server.port") == backend]
    assert receiver.wait_for(lambda spans: len(clients(spans)) >= CURLS, 30 * TIME_SCALE), \
        len(clients(receiver.spans))
    spans = clients(receiver.spans)
    assert len(spans) == CURLS
    return spans


def test_short_processes_keep_their_complete_resource(receiver, start_agent, backend):
    start_agent("--port", str(backend))
    run_curls(backend)
    spans = client_spans(receiver, backend)
    incomplete = [s.resource for s in spans
                  if not s.resource.get("process.creation.time")
                  or s.resource.get("process.executable.path") != "/usr/bin/curl"
                  or s.resource.get("process.executable.name") != "curl"]
    assert incomplete == [], (len(incomplete), incomplete[:3])
    # Each process's own start, not one clock reading for all.
    assert len({s.resource["process.creation.time"] for s in spans}) > CURLS // 2


def test_exited_processes_leave_no_descriptor_entries(receiver, start_agent, backend):
    agent = start_agent("--port", str(backend))
    run_curls(backend)
    curl_pids = {s.resource["process.pid"] for s in client_spans(receiver, backend)}
    map_id = agent_conns_map(agent.proc.pid)
    deadline = time.monotonic() + 10 * TIME_SCALE
    while True:
        # A pid the kernel has given to a new process since is not curl's.
        stale = {t for t in conns_tgids(map_id) & curl_pids if not os.path.exists(f"/proc/{t}")}
        if not stale or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert stale == set(), f"{len(stale)} exited curls still have entries"
