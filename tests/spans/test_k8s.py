"""Kubernetes metadata: this node's pods, indexed by container id, from an
API server that answers like the real one (a real cluster cannot run here)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.spans import resources
from agent.spans.k8s import PodMetadata, container_index

CID = "3f1c7a9be1d2c4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9"
SIDECAR = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
INIT = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
TOKEN = "token-value-for-the-test"

# The shape of `GET /api/v1/pods?fieldSelector=spec.nodeName=node-a` (fields
# the agent does not read trimmed).
POD_LIST = {
    "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "8312"},
    "items": [
        {"metadata": {"name": "checkout-7d9f8b6c5-x2k4p", "namespace": "shop",
                      "uid": "5b1f0c3e-9a2d-4e7b-8c6f-1d2e3f4a5b6c"},
         "spec": {"nodeName": "node-a"},
         "status": {"phase": "Running",
                    "initContainerStatuses": [{"name": "migrate", "containerID": f"containerd://{INIT}"}],
                    "containerStatuses": [
                        {"name": "app", "containerID": f"containerd://{CID}", "ready": True},
                        {"name": "envoy", "containerID": f"cri-o://{SIDECAR}", "ready": True}]}},
        {"metadata": {"name": "starting-0", "namespace": "shop", "uid": "u2"},
         "status": {"phase": "Pending", "containerStatuses": [{"name": "app"}]}},
        {"metadata": {"name": "broken"}, "status": None},
    ],
}


def test_index_by_container_id():
    index = container_index(POD_LIST)
    assert set(index) == {CID, SIDECAR, INIT}
    assert index[CID] == [("k8s.pod.name", "checkout-7d9f8b6c5-x2k4p"),
                          ("k8s.pod.uid", "5b1f0c3e-9a2d-4e7b-8c6f-1d2e3f4a5b6c"),
                          ("k8s.namespace.name", "shop"), ("k8s.container.name", "app")]
    assert dict(index[SIDECAR])["k8s.container.name"] == "envoy"
    assert container_index({}) == {} and container_index({"items": None}) == {}


class FakeApiServer:
    """Serves POD_LIST to requests with the right token and node selector."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.fail = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Authorization", "")))
                if outer.fail or self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(403 if not outer.fail else 500)
                    self.end_headers()
                    return
                body = json.dumps(POD_LIST).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api(tmp_path):
    server = FakeApiServer()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    yield server, str(token)
    server.close()


def test_refresh_lists_this_nodes_pods_with_the_token(api):
    server, token = api
    pods = PodMetadata(server.url, "node-a", token, None)
    assert pods.refresh()
    path, auth = server.requests[-1]
    assert path == "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a"
    assert auth == f"Bearer {TOKEN}"
    assert dict(pods.lookup(CID))["k8s.pod.name"] == "checkout-7d9f8b6c5-x2k4p"
    assert pods.lookup("unknown") is None and pods.counts["lookups_missed"] == 1


def test_failures_are_counted_and_keep_the_last_index(api):
    server, token = api
    pods = PodMetadata(server.url, "node-a", token, None)
    assert pods.refresh()
    server.fail = True
    assert not pods.refresh()
    assert pods.counts == {"refreshes": 1, "refresh_failures": 1, "lookups_missed": 0}
    assert pods.lookup(CID) is not None
    assert not PodMetadata("http://127.0.0.1:9", "node-a", token, None, timeout_s=1).refresh()


def test_background_refresh_and_stop(api):
    server, token = api
    pods = PodMetadata(server.url, "node-a", token, None)
    pods.start(first_wait_s=5)
    try:
        assert len(pods) == 3
    finally:
        pods.stop()


def test_in_cluster_configuration_from_the_environment(tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
           "NODE_NAME": "node-a"}
    pods = PodMetadata.from_environment(env, str(tmp_path))
    assert pods.url.startswith("https://10.96.0.1:443/api/v1/pods?")
    assert PodMetadata.from_environment({**env, "NODE_NAME": ""}, str(tmp_path)) is None
    assert PodMetadata.from_environment(env, str(tmp_path / "missing")) is None
    assert PodMetadata.from_environment({}, str(tmp_path)) is None


def test_resources_carry_the_pod_of_their_container(api, monkeypatch):
    server, token = api
    pods = PodMetadata(server.url, "node-a", token, None)
    pods.refresh()
    monkeypatch.setattr(resources, "container_id", lambda pid: CID)
    attrs = dict(resources.ResourceCache(host_attributes=[], k8s=pods).attributes_of(1))
    assert attrs["container.id"] == CID
    assert attrs["k8s.pod.name"] == "checkout-7d9f8b6c5-x2k4p"
    assert attrs["k8s.namespace.name"] == "shop" and attrs["k8s.container.name"] == "app"
    monkeypatch.setattr(resources, "container_id", lambda pid: "not-a-pod")
    attrs = dict(resources.ResourceCache(host_attributes=[], k8s=pods).attributes_of(1))
    assert "k8s.pod.name" not in attrs


def test_a_pod_learnt_later_reaches_the_span_stage(api, monkeypatch):
    """A process whose pod the index did not know when the process was first
    seen gets its resource sent again once the index knows it."""
    import os

    from agent.runtime.pipeline import Pipeline
    from agent.spans.sampling import Sampler
    from agent.spans.builder import RESOURCE_MARKER

    class Stage:
        def __init__(self):
            self.submitted = []

        def submit(self, exchanges):
            self.submitted += exchanges

        def housekeeping(self):
            pass

    server, token = api
    pods = PodMetadata(server.url, "node-a", token, None)   # not refreshed: empty index
    stage = Stage()
    pipeline = Pipeline(None, stage, Sampler(), k8s=pods)
    monkeypatch.setattr(resources, "container_id", lambda pid: CID)
    first = pipeline._resource(os.getpid())
    assert "k8s.pod.name" not in dict(first[2])
    pipeline.housekeeping()
    assert stage.submitted == []           # still unknown: nothing to resend
    pods.refresh()
    pipeline.housekeeping()
    [(marker, pid, attributes)] = stage.submitted
    assert (marker, pid) == (RESOURCE_MARKER, os.getpid())
    assert dict(attributes)["k8s.pod.name"] == "checkout-7d9f8b6c5-x2k4p"
    pipeline.housekeeping()
    assert len(stage.submitted) == 1       # sent once


def test_processes_beyond_the_wait_bound_are_counted(api, monkeypatch):
    """Waiting for pods is bounded; a process past the bound keeps its
    pod-less resource, and is counted."""
    from agent.runtime import pipeline as pipeline_module
    from agent.runtime.pipeline import Pipeline
    from agent.spans.sampling import Sampler

    server, token = api
    pods = PodMetadata(server.url, "node-a", token, None)   # not refreshed: empty index
    pipeline = Pipeline(None, None, Sampler(), k8s=pods)
    monkeypatch.setattr(resources, "container_id", lambda pid: CID)
    monkeypatch.setattr(pipeline_module, "MAX_AWAITING_POD", 2)
    for pid in (1, 2, 3, 4):
        assert "k8s.pod.name" not in dict(pipeline._resource(pid)[2])
    assert len(pipeline._awaiting_pod) == 2
    assert pipeline.pod_waits_dropped == 2
