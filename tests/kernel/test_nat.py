"""Clients behind a Service address (DNAT), traced on one node: the agent
asks the node's connection tracker where each new client connection really
went, so the client span names the pod it reached and links to the pod's
server span, as it does without NAT.  With the resolution off the link is
missing: these tests prove the feature, not the network."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

import conftest
from agent.capture.conntrack import CACHE_TTL_S, ConntrackResolver
from agent.spans.model import KIND_CLIENT, KIND_SERVER
from conftest import AGENT, ROOT, free_port
from helpers import wait_quiet, value
from nat_network import LoopbackService, PodNetwork

pytestmark = pytest.mark.skipif(not shutil.which("nft"),
                                reason="nft is missing (make setup installs nftables)")


@pytest.fixture
def pod_network():
    with PodNetwork() as network:
        yield network


def spans_of(receiver, path: str, timeout: float = 10.0):
    """(client span, server span) of the one request to `path`."""
    def of_path(spans):
        return [s for s in spans if s.attributes.get("url.path") == path
                or s.attributes.get("url.full", "").endswith(path)]
    assert receiver.wait_for(
        lambda spans: {KIND_CLIENT, KIND_SERVER} <= {s.kind for s in of_path(spans)},
        timeout), receiver.spans
    ours = of_path(receiver.spans)
    client = [s for s in ours if s.kind == KIND_CLIENT]
    server = [s for s in ours if s.kind == KIND_SERVER]
    assert len(client) == 1 and len(server) == 1, ours
    return client[0], server[0]


def assert_linked_behind_service(client, server, service, pod):
    assert client.attributes["server.address"] == service[0]
    assert client.attributes["server.port"] == service[1]
    assert client.attributes["network.peer.address"] == pod[0]
    assert client.attributes["network.peer.port"] == pod[1]
    assert client.attributes["http.response.status_code"] == 200
    assert server.trace_id == client.trace_id
    assert server.parent_span_id == client.span_id


def test_client_pod_to_service_links_to_the_server_pod(receiver, start_agent, pod_network):
    """kube-proxy's shape: the client pod calls the Service address, the root
    namespace DNATs it (nat PREROUTING) to the server pod."""
    agent = start_agent("--port", str(PodNetwork.SERVICE[1]), "--port", str(PodNetwork.POD[1]))
    sent = pod_network.request("/nat/pods")
    assert sent["status"] == 200
    client, server = spans_of(receiver, "/nat/pods")
    assert_linked_behind_service(client, server, PodNetwork.SERVICE, PodNetwork.POD)
    # The server pod sees the client pod itself (no SNAT on this path).
    assert server.attributes["client.address"] == PodNetwork.CLIENT_IP
    assert server.attributes["network.peer.port"] == sent["local_port"]
    samples = wait_quiet(agent)
    assert value(samples, "otel_ebpf_conntrack_available") == 1
    assert value(samples, "otel_ebpf_conntrack_lookups_total", result="translated") >= 1
    assert value(samples, "otel_ebpf_conntrack_lookups_total", result="error") == 0
    assert value(samples, "otel_ebpf_conntrack_cache_entries") >= 1


def test_loopback_service_links_on_the_node_itself(receiver, start_agent):
    """A node process calls a Service address that nat OUTPUT sends to a
    server on 127.0.0.1 of the same namespace."""
    port = free_port()
    with LoopbackService(port) as service:
        start_agent("--port", str(service.SERVICE[1]), "--port", str(port))
        sent = service.request("/nat/loopback")
        assert sent["status"] == 200
        client, server = spans_of(receiver, "/nat/loopback")
    assert_linked_behind_service(client, server, LoopbackService.SERVICE, ("127.0.0.1", port))
    assert server.attributes["network.peer.port"] == sent["local_port"]


def test_without_resolution_the_link_is_missing(receiver, start_agent, pod_network):
    """The same request with --no-conntrack: the server span starts its own
    trace, and the client span knows only the Service address."""
    agent = start_agent("--no-conntrack", "--port", str(PodNetwork.SERVICE[1]),
                        "--port", str(PodNetwork.POD[1]))
    assert pod_network.request("/nat/unresolved")["status"] == 200
    client, server = spans_of(receiver, "/nat/unresolved")
    assert client.attributes["server.address"] == PodNetwork.SERVICE[0]
    assert client.attributes["network.peer.address"] == PodNetwork.SERVICE[0]
    assert client.attributes["network.peer.port"] == PodNetwork.SERVICE[1]
    assert server.trace_id != client.trace_id
    assert server.parent_span_id == ""
    assert "otel_ebpf_conntrack" not in agent.metrics()


WITHOUT_NET_ADMIN = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]


def test_without_net_admin_the_agent_says_so_once_and_traces_on(receiver, start_agent,
                                                                pod_network, monkeypatch):
    monkeypatch.setattr(conftest, "AGENT", WITHOUT_NET_ADMIN + conftest.AGENT)
    agent = start_agent("--port", str(PodNetwork.SERVICE[1]), "--port", str(PodNetwork.POD[1]))
    assert pod_network.request("/nat/refused")["status"] == 200
    client, server = spans_of(receiver, "/nat/refused")
    assert client.attributes["network.peer.address"] == PodNetwork.SERVICE[0]
    assert server.trace_id != client.trace_id
    samples = wait_quiet(agent)
    assert value(samples, "otel_ebpf_conntrack_available") == 0
    assert value(samples, "otel_ebpf_conntrack_lookups_total", result="translated") == 0
    log = agent.stderr()
    assert log.count("NAT resolution off: conntrack look-up refused: permission denied") == 1, log


@pytest.mark.parametrize("prefix, expected", [
    ([], "NAT resolution (conntrack): available"),
    (WITHOUT_NET_ADMIN, "NAT resolution (conntrack): unavailable, conntrack look-up refused: "
                        "permission denied (the agent needs CAP_NET_ADMIN"),
])
def test_doctor_says_whether_nat_resolution_works(prefix, expected):
    result = subprocess.run(prefix + AGENT + ["doctor"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout


def test_resolver_answers_a_batch_caches_it_and_stays_bounded():
    """The resolver alone against the node's tracker: connections through the
    Service are translated, a direct one is not, a second look-up of a
    connection is served from the cache, and the cache keeps its bound and
    empties with time."""
    port = free_port()
    with LoopbackService(port) as service:
        clients = [socket.create_connection(service.SERVICE, timeout=5) for _ in range(100)]
        direct = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            keys = [(n,) + c.getsockname() + service.SERVICE for n, c in enumerate(clients)]
            resolver = ConntrackResolver(max_entries=80)
            assert resolver.open(), resolver.unavailable_reason
            answers = resolver.lookup(keys + [(100,) + direct.getsockname() + ("127.0.0.1", port)])
            assert all(a is not None and a[:2] == ("127.0.0.1", port) for a in answers[:100])
            # As the server's socket names the client.
            accepted_peer_ports = {a[3] for a in answers[:100]}
            assert accepted_peer_ports == {k[2] for k in keys}
            assert answers[100] is None
            assert resolver.counts == {"hits": 100, "misses": 1, "errors": 0}
            assert len(resolver) == 80
            # The last 80 asked are cached: asked again, no request goes out.
            assert resolver.lookup(keys[-79:]) == answers[21:100]
            assert resolver.counts["hits"] == 100
            # Another connection on the same 4-tuple is asked about again.
            assert resolver.lookup([(1000,) + keys[99][1:]]) == [answers[99]]
            assert resolver.counts["hits"] == 101
            resolver.expire(time.monotonic() + CACHE_TTL_S + 1)
            assert len(resolver) == 0
            resolver.close()
            assert not resolver.available
        finally:
            for c in clients + [direct]:
                c.close()
