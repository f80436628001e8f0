"""A server that accepts with no peer address asked for (libuv's
accept4(fd, NULL, NULL): every Node.js server).  The CO-RE build reads the
socket's ends from the kernel; the BCC build, which reads no kernel struct,
places the connection by its first read (bpf/capture_bcc.h).  Each curl is
a new connection, so each request is the first read of its connection."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.spans.model import KIND_SERVER
from conftest import LOADER_ARGS, curl, free_port, wait_for_port
from test_http1_e2e import PARENT_ID, TRACE_ID, TRACEPARENT, wait_spans

REQUESTS = 5
NODE_HTTP_SERVER = """
require('http').createServer((req, res) => res.end('ok ' + req.url))
  .listen(Number(process.argv[1]), '127.0.0.1', () => console.log('ready'));
"""


@pytest.fixture(params=list(LOADER_ARGS))
def agent_loader(request) -> str:
    return request.param


def test_node_server_connections_are_traced_from_their_first_request(receiver, start_agent,
                                                                      agent_loader):
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.skip("Debian's nodejs is not installed (make setup installs it)")
    port = free_port()
    server = subprocess.Popen([node, "-e", NODE_HTTP_SERVER, str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        wait_for_port(port, process=server, name="node")
        start_agent("--pid", str(server.pid))
        for i in range(REQUESTS):
            assert curl(f"http://127.0.0.1:{port}/first/{i}", TRACEPARENT)["status"] == 200
        spans = wait_spans(receiver, lambda s: s.kind == KIND_SERVER
                           and s.attributes.get("server.port") == port, REQUESTS)
    finally:
        server.kill()
        server.wait()
    assert sorted(s.attributes["url.path"] for s in spans) == [f"/first/{i}"
                                                               for i in range(REQUESTS)]
    for span in spans:
        assert span.trace_id == TRACE_ID and span.parent_span_id == PARENT_ID
        assert span.attributes["client.address"] == "127.0.0.1"
