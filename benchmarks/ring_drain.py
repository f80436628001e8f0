"""Ring-buffer drain: libbpf's ring_buffer__consume with a cffi callback per
record versus agent.capture.ringbuf's direct read of the mapped ring.

Run as root after `make setup`:  .venv/bin/python benchmarks/ring_drain.py
Each round fills the ring with the same real kernel events (HTTP requests
written over loopback TCP while nothing drains), then times one consumer
draining all of it.  Prints records/s for both and their ratio.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture import libbpf  # noqa: E402
from agent.capture.kernel_features import ensure_tracefs  # noqa: E402
from agent.capture.libbpf import ffi  # noqa: E402
from agent.capture.loader import CaptureSettings, load_capture  # noqa: E402

ffi.cdef("""
struct ring_buffer;
typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
struct ring_buffer *ring_buffer__new(int map_fd, ring_buffer_sample_fn sample_cb, void *ctx, const void *opts);
int ring_buffer__consume(struct ring_buffer *rb);
void ring_buffer__free(struct ring_buffer *rb);
""")

REQUEST = (b"GET /benchmark/items?id=42 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"User-Agent: bench/1.0\r\nAccept: */*\r\n"
           b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")


def fill(writes: int) -> None:
    """`writes` HTTP-looking writes from a client, each read by a server."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        while conn.recv(65536):
            pass
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    client = socket.create_connection(("127.0.0.1", port))
    for _ in range(writes):
        client.sendall(REQUEST)
    client.close()
    thread.join()
    server.close()


def drain_direct(capture) -> int:
    total = 0
    while True:
        batch = capture.ring.read_batch(65536)
        if not batch:
            return total
        total += len(batch)


def drain_callback(capture) -> int:
    lib = libbpf.lib()
    count = [0]
    records = []

    @ffi.callback("int(void *, void *, size_t)")
    def on_sample(ctx, data, size):
        records.append(ffi.buffer(data, size)[:])
        count[0] += 1
        return 0

    rb = lib.ring_buffer__new(capture._map_fds["events"], on_sample, ffi.NULL, ffi.NULL)
    try:
        lib.ring_buffer__consume(rb)
    finally:
        lib.ring_buffer__free(rb)
    return count[0]


def main(writes: int = 100_000, rounds: int = 3) -> None:
    ensure_tracefs()
    capture = load_capture(CaptureSettings(ring_buffer_bytes=256 << 20, capture_bytes=512,
                                           pids={os.getpid()}, agent_pid=0))
    results = {"callback": [], "direct": []}
    try:
        for _ in range(rounds):
            for name, drain in (("callback", drain_callback), ("direct", drain_direct)):
                fill(writes)
                time.sleep(0.2)
                started = time.perf_counter()
                count = drain(capture)
                elapsed = time.perf_counter() - started
                results[name].append(count / elapsed)
        lost = sum(s[1] for s in capture.probe_stats().values())
    finally:
        capture.close()
    best = {name: max(rates) for name, rates in results.items()}
    print(f"records per round: ~{2 * writes} (writes and reads), lost in kernel: {lost}")
    for name, rate in best.items():
        print(f"{name:>9}: {rate:>12,.0f} records/s (best of {rounds})")
    print(f"direct / callback = {best['direct'] / best['callback']:.2f}x")


if __name__ == "__main__":
    main()
