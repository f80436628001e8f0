"""The ring buffer as the kernel fills it: records go in without waking the
reader, except the one that takes the unread bytes past WAKE_AT_FILL of the
ring (bpf_ringbuf_query in the CO-RE build; BCC 0.26 has no such helper, so
its build relies on the reader's poll)."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

from agent.capture.loader import CaptureSettings, load_capture
from agent.capture.ringbuf import WAKE_AT_FILL, RingBuffer
from bpf_maps import RINGBUF, create_map

RING_BYTES = 1 << 20
REQUEST = (b"GET /fill HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ring-test\r\n"
           b"Accept: */*\r\n\r\n")


def test_the_record_that_crosses_the_fill_mark_wakes_the_reader():
    # This process is the traced one here (agent_pid 0: no agent to leave out).
    capture = load_capture(CaptureSettings(pids={os.getpid()}, agent_pid=0, tls=False,
                                           ring_buffer_bytes=RING_BYTES))
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()

    def exchange():
        client.sendall(REQUEST)
        peer.recv(65536)

    try:
        ring = capture.ring
        # This process's first record wakes the reader at once (a new
        # process is announced that way): take that wake-up and the records.
        exchange()
        ring.wait(5)
        assert ring.read_batch(1 << 20)
        woken = threading.Event()
        waiter = threading.Thread(target=lambda: (ring.wait(20), woken.set()), daemon=True)
        waiter.start()
        while ring.fill_ratio() < WAKE_AT_FILL * 0.9:
            exchange()
        assert not woken.wait(0.5), "a record below the fill mark woke the reader"
        while ring.fill_ratio() <= WAKE_AT_FILL:
            exchange()
        assert woken.wait(2), f"no wake-up with the ring {ring.fill_ratio():.1%} full"
        waiter.join()
        stats = capture.probe_stats()
        assert sum(s[1] for s in stats.values()) == 0, stats
    finally:
        for sock in (client, peer, server):
            sock.close()
        capture.close()


def test_a_stop_signal_ends_the_readers_wait_at_once():
    """The capture loop waits up to a second when idle; SIGTERM's handler
    wakes it (agent.runtime.agent.Agent.request_stop), so a stop does not
    wait the poll out."""
    fd = create_map(RINGBUF, 0, 0, RING_BYTES)
    ring = RingBuffer(fd, RING_BYTES)
    previous = signal.signal(signal.SIGALRM, lambda *_: ring.wake())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        started = time.monotonic()
        ring.wait(10)
        assert time.monotonic() - started < 1.0
        # The wake-up was taken: the next wait lasts its time.
        started = time.monotonic()
        ring.wait(0.2)
        assert time.monotonic() - started >= 0.19
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        ring.close()
        os.close(fd)


def test_records_that_wrap_around_the_rings_end_read_whole():
    """The reader maps the ring's data pages once (not twice, as the kernel
    offers them): a record that wraps around the end is read in two pieces.
    Requests of many lengths through a ring they go around a few times:
    each arrives whole, none is lost."""
    capture = load_capture(CaptureSettings(pids={os.getpid()}, agent_pid=0, tls=False,
                                           ring_buffer_bytes=RING_BYTES))
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    sent, found = [], set()
    try:
        ring = capture.ring
        start = ring._consumer.value
        for i in range(3000):
            request = b"GET /wrap/%d?pad=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (i, b"p" * (i * 7 % 1201))
            sent.append(request)
            client.sendall(request)
            received = b""
            while len(received) < len(request):
                received += peer.recv(65536)
            if i % 100 == 99:
                for record in ring.read_batch(1 << 20):
                    found.update(r for r in sent[-100:] if record.endswith(r))
        went_around = (ring._consumer.value - start) / RING_BYTES
        stats = capture.probe_stats()
    finally:
        for sock in (client, peer, server):
            sock.close()
        capture.close()
    assert went_around > 3
    assert sum(s[1] for s in stats.values()) == 0, stats
    assert len(found) == len(sent)

