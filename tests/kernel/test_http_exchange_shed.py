"""Overload sheds whole exchanges (bpf/http_exchange.h): with the ring
past its shed mark and nobody draining it, new requests are followed but
not written; every record that is written is a complete exchange, and
written + shed adds up to the exchanges made."""
from __future__ import annotations

import logging
import os
import re
import socket

import pytest

from agent.capture import exchange_records, records
from agent.capture.loader import CaptureSettings, load_capture
from agent.capture.loss_watch import KernelLossWatch

C = records.C
REQUEST = (b"GET /shed HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
RING_BYTES = 64 << 10


@pytest.fixture
def capture():
    capture = load_capture(CaptureSettings(pids={os.getpid()}, agent_pid=0, tls=False,
                                           ring_buffer_bytes=RING_BYTES, http_exchanges=True))
    try:
        yield capture
    finally:
        capture.close()


def test_past_the_mark_exchanges_are_shed_whole_and_counted(capture, caplog):
    watch = KernelLossWatch(capture)
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    ports = {client.getsockname()[1], peer.getsockname()[1]}
    shed_before = capture.http_shed()["ring_fill"]
    lost_before = sum(s[1] for s in capture.probe_stats().values())
    exchanges = 2000        # both sides traced: 4000 records' worth, ring holds far fewer
    try:
        for _ in range(exchanges):
            client.sendall(REQUEST)
            assert peer.recv(65536) == REQUEST
            peer.sendall(RESPONSE)
            assert client.recv(65536) == RESPONSE
    finally:
        for sock in (client, peer, server):
            sock.close()
    written, data = [], 0
    for record in capture.ring.read_batch(1 << 30):
        header = dict(zip(records.EVENT_HEADER_FIELDS, records.EVENT_HEADER.unpack_from(record)))
        if header["local_port"] not in ports:
            continue
        if header["type"] == C["EVENT_HTTP_EXCHANGE"]:
            written.append(exchange_records.decode(record))
        elif header["type"] == C["EVENT_DATA"]:
            data += 1
    shed = capture.http_shed()["ring_fill"] - shed_before
    lost = sum(s[1] for s in capture.probe_stats().values()) - lost_before
    assert shed > 0 and written, (shed, len(written))
    # each side of each exchange is either one complete record or shed
    assert len(written) + shed == 2 * exchanges
    assert data == 0 and lost == 0
    for x in written:
        assert (x.method, x.target, x.status_code) == ("GET", "/shed", 200)
        assert x.request_bytes == len(REQUEST) and x.response_bytes == len(RESPONSE)
    # The agent's log says so at its next check, with the count /metrics has;
    # no record was lost, so the records' log stays quiet.
    with caplog.at_level(logging.WARNING, logger="agent.loss_log"):
        watch.check()
    lines = [r.getMessage() for r in caplog.records]
    shed_lines = [line for line in lines if line.startswith("HTTP/1.x exchanges shed whole")]
    assert len(shed_lines) == 1 and "shed mark" in shed_lines[0], lines
    logged = int(re.search(r"; (\d+) lost since", shed_lines[0]).group(1))
    assert logged == capture.http_shed()["ring_fill"], (shed_lines, capture.http_shed())
    assert not any("records lost in the kernel" in line for line in lines), lines
