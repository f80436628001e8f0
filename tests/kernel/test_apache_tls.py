"""Apache with mod_ssl (and mod_http2) traced through the OpenSSL probes:
every request gives its server span, and with no traceparent sent the
server span is the child of curl's client span on the same node.

mod_ssl writes through its own BIO into Apache's output filters, so the
answer is often sent after SSL_write returns, and curl's request record
(written by a uretprobe once curl is back in user space) can reach the ring
after Apache's whole exchange: the server span waits for it
(agent/spans/client_wait.py)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.spans.model import KIND_CLIENT, KIND_SERVER
from apache import FILES
from apache import apache_tls_fixture  # noqa: F401  (fixture `apache_tls`)

TRACE_ID = "5b8efff798038103d269b633813fc60c"


def on_port(port: int, kind: int):
    return lambda s: s.kind == kind and s.attributes.get("server.port") == port


def curl(url: str, http: str, traceparent: str | None = None) -> str:
    args = ["curl", "-sk", f"--http{http}", url, "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]
    if traceparent:
        args += ["-H", f"traceparent: {traceparent}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_apache_mod_ssl_gives_every_server_span_linked_to_curl(receiver, start_agent, apache_tls,
                                                             http):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    port = apache_tls.port
    agent = start_agent("--port", str(port))
    linked_requests = FILES // 2
    for i in range(1, FILES + 1):
        traceparent = None if i <= linked_requests else f"00-{TRACE_ID}-{i:016x}-01"
        assert curl(apache_tls.url(i), http, traceparent) == f"{http} 200"
    servers, clients = on_port(port, KIND_SERVER), on_port(port, KIND_CLIENT)
    receiver.wait_for(lambda spans: sum(map(servers, spans)) >= FILES
                      and sum(map(clients, spans)) >= FILES, timeout=15)
    server_spans = sorted(filter(servers, receiver.spans), key=lambda s: s.attributes["url.path"])
    client_spans = {s.span_id: s for s in filter(clients, receiver.spans)}
    assert len(server_spans) == FILES and len(client_spans) == FILES, \
        (len(server_spans), len(client_spans), agent.stderr()[-2000:])
    by_path = {s.attributes["url.path"]: s for s in server_spans}
    for i in range(1, FILES + 1):
        span = by_path[f"/f{i}.txt"]
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["url.scheme"] == "https"
        if i <= linked_requests:
            client = client_spans.get(span.parent_span_id)
            assert client is not None, f"/f{i}.txt: a root, not curl's child"
            assert client.trace_id == span.trace_id
            assert client.attributes["url.full"].endswith(f"/f{i}.txt")
        else:
            assert (span.trace_id, span.parent_span_id) == (TRACE_ID, f"{i:016x}")
