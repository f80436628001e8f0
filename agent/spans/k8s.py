"""Kubernetes metadata for the resources of traced processes.

Inside a cluster (the DaemonSet), a process's container id (from its
cgroup, agent/spans/resources.py) leads to its pod: k8s.pod.name, k8s.pod.uid,
k8s.namespace.name and k8s.container.name.  The pods come from the API
server, for this node only (fieldSelector spec.nodeName), read with the
pod's service account token (ClusterRole otel-ebpf: pods get/list/watch).

A background thread keeps the index: a full list every REFRESH_S, sooner
(at most every MIN_REFRESH_S) when a container is not in it yet, as a pod
that just started.  The capture loop never waits on the API server: a
lookup reads the index it has.  The index holds this node's pods only, so
it stays small; failures are counted and retried at the next refresh.
"""
from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
import urllib.request

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REFRESH_S = 30.0
MIN_REFRESH_S = 2.0
_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


def container_index(pod_list: dict) -> dict[str, list[tuple[str, str]]]:
    """container id -> resource attributes, from a PodList; containers
    without an id yet (not started) are left out."""
    index = {}
    for pod in pod_list.get("items") or ():
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        pod_attrs = [("k8s.pod.name", meta.get("name")), ("k8s.pod.uid", meta.get("uid")),
                     ("k8s.namespace.name", meta.get("namespace"))]
        pod_attrs = [(k, v) for k, v in pod_attrs if isinstance(v, str) and v]
        for key in _STATUS_LISTS:
            for container in status.get(key) or ():
                raw = container.get("containerID") or ""
                cid = raw.partition("://")[2] or raw
                if cid:
                    attrs = list(pod_attrs)
                    if container.get("name"):
                        attrs.append(("k8s.container.name", container["name"]))
                    index[cid] = attrs
    return index


class PodMetadata:
    """This node's pods by container id, refreshed in the background."""

    def __init__(self, api_url: str, node_name: str, token_path: str | None,
                 ca_path: str | None, timeout_s: float = 5.0):
        query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node_name}"})
        self.url = f"{api_url.rstrip('/')}/api/v1/pods?{query}"
        self.token_path = token_path
        self.ca_path = ca_path
        self.context = None
        self.timeout_s = timeout_s
        self._index: dict[str, list] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_refresh = 0.0
        self._thread: threading.Thread | None = None
        self.counts = {"refreshes": 0, "refresh_failures": 0, "lookups_missed": 0}

    @classmethod
    def from_environment(cls, env=os.environ,
                         account_dir: str = SERVICE_ACCOUNT_DIR) -> "PodMetadata | None":
        """The in-cluster configuration, or None outside a cluster."""
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        node = env.get("NODE_NAME")
        token = os.path.join(account_dir, "token")
        if not (host and port and node and os.path.exists(token)):
            return None
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", node, token, os.path.join(account_dir, "ca.crt"))

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, container_id: str) -> list | None:
        attrs = self._index.get(container_id)
        if attrs is None:
            self.counts["lookups_missed"] += 1
            self._wake.set()
        return attrs

    def refresh(self) -> bool:
        self._last_refresh = time.monotonic()
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        try:
            if self.context is None and self.url.startswith("https"):
                self.context = ssl.create_default_context(cafile=self.ca_path)
            if self.token_path:
                # Projected tokens rotate: read it each time.
                with open(self.token_path) as f:
                    request.add_header("Authorization", f"Bearer {f.read().strip()}")
            with urllib.request.urlopen(request, timeout=self.timeout_s,
                                        context=self.context) as response:
                index = container_index(json.load(response))
        except (OSError, ValueError) as exc:
            self.counts["refresh_failures"] += 1
            log.warning("k8s: listing this node's pods failed: %s", exc)
            return False
        self._index = index
        self.counts["refreshes"] += 1
        return True

    def start(self, first_wait_s: float = 2.0) -> None:
        """Refresh in the background; wait up to first_wait_s for the first list."""
        first = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(first,), name="k8s-pods",
                                        daemon=True)
        self._thread.start()
        first.wait(first_wait_s)

    def _run(self, first: threading.Event) -> None:
        while not self._stop.is_set():
            self.refresh()
            first.set()
            self._wake.clear()
            self._wake.wait(REFRESH_S)
            # A miss wakes the thread early, but not more often than this.
            self._stop.wait(max(0.0, self._last_refresh + MIN_REFRESH_S - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
