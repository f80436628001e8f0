"""The agent with --http-exchanges: spans from the probes' exchange records,
and on /metrics the connections turned over to the payload path (here a
request head written in two calls) and the exchanges shed, by reason."""
from __future__ import annotations

import socket
import time

from agent.spans.model import KIND_CLIENT, KIND_SERVER
from conftest import curl
from helpers import delta, has, wait_quiet

REQUESTS = 10


def split_head_request(port: int) -> bytes:
    """A GET whose head goes out in two writes, as some clients send it."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /items/split HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.1)
        sock.sendall(b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_records_become_spans_and_fallbacks_and_shedding_are_counted(receiver, start_agent,
                                                                      backend):
    agent = start_agent("--port", str(backend), "--http-exchanges")
    before = wait_quiet(agent)
    for i in range(REQUESTS):
        assert curl(f"http://127.0.0.1:{backend}/items/{i}")["status"] == 200
    assert split_head_request(backend).startswith(b"HTTP/1.")

    def ours(spans):
        return [s for s in spans if s.attributes.get("server.port") == backend]
    assert receiver.wait_for(lambda spans: len(ours(spans)) >= 2 * (REQUESTS + 1), 20), \
        receiver.spans
    after = wait_quiet(agent)
    spans = ours(receiver.spans)
    server = [s for s in spans if s.kind == KIND_SERVER]
    client = [s for s in spans if s.kind == KIND_CLIENT]
    assert len(server) == len(client) == REQUESTS + 1
    assert sorted(s.attributes.get("url.path") for s in server) == sorted(
        [f"/items/{i}" for i in range(REQUESTS)] + ["/items/split"])
    # The split head's connection went to the payload path (the client's
    # side for certain; the server's when its read got the first part
    # alone), and nothing was shed or lost on this light load.
    assert 1 <= delta(after, before, "otel_ebpf_kernel_http_fallbacks_total",
                      reason="split_head") <= 2
    assert has(after, "otel_ebpf_kernel_http_exchanges_shed_total")
    assert delta(after, before, "otel_ebpf_kernel_http_exchanges_shed_total",
                 reason="ring_fill") == 0
    assert delta(after, before, "otel_ebpf_kernel_http_requests_dropped_total") == 0
    assert delta(after, before, "otel_ebpf_kernel_events_lost_total") == 0
