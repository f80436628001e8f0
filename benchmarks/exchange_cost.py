"""Kernel cost of HTTP/1.x exchange records against the payload copy, per
traced syscall, in one run: the same request/response loop over a loopback
TCP connection of this process, with the capture loaded with
http_exchanges off (every call copied to the ring) and on (heads parsed in
the probes, one record per side and exchange), alternately.  Time in the
programs by the kernel's own count (kernel.bpf_stats_enabled, on only while
measuring); records and bytes written from the ring.

    .venv/bin/python benchmarks/exchange_cost.py [--exchanges 20000] [--rounds 2]
        [--body-bytes 5 | --captured-heads] [--by-load]
        [--object build/capture.bpf.o --object /tmp/main/capture.bpf.o]

--captured-heads sends heads captured from real peers instead
(tests/fixtures/http1/: curl's request with trace context, nginx's answer
of a static page, its nine lines and body in one write): the parse costs by
the line, the copy by the byte.

With several --object, each round measures every object in turn (a tree
against another in the same run; the userspace stages are this tree's).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.exchange_records import EXCHANGE_MODES  # noqa: E402
from agent.capture.loader import CaptureSettings, load_capture  # noqa: E402
from agent.protocols.router import ProtocolRouter  # noqa: E402
from agent.spans.builder import ExchangeLinker  # noqa: E402
from bpf_stats import program_time_ns, stats_enabled  # noqa: E402

REQUEST = (b"GET /api/v1/items?id=42 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
           b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")


FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "http1"


def captured_heads() -> tuple[bytes, bytes]:
    """curl's request (six lines, traceparent and tracestate) and nginx's
    answer of a static page (nine lines, a 56-byte body)."""
    return ((FIXTURES / "curl_get_traceparent.bin").read_bytes(),
            (FIXTURES / "nginx_static.bin").read_bytes())


def response(body_bytes: int) -> bytes:
    """The server's answer, head and body in one write."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            % body_bytes + b"x" * body_bytes)


CALLS_PER_EXCHANGE = 4
MODE_NAMES = {EXCHANGE_MODES["off"]: "payload", EXCHANGE_MODES["on"]: "records",
              EXCHANGE_MODES["by-load"]: "by-load"}


def measure(exchanges: int, count: int, obj: Path | None = None, body_bytes: int = 5,
            heads: tuple[bytes, bytes] | None = None) -> dict:
    capture = load_capture(CaptureSettings(agent_pid=0, pids={os.getpid()}, tls=False,
                                           ring_buffer_bytes=256 << 20,
                                           http_exchanges=exchanges), obj)
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    request, answer = heads or (REQUEST, response(body_bytes))
    try:
        def loop(n):
            for _ in range(n):
                client.send(request)
                peer.recv(4096)
                peer.sendall(answer)
                client.recv(1 << 16)
        loop(1000)      # classified, warmed
        capture.ring.read_batch(1 << 30)
        with stats_enabled():
            before = program_time_ns([os.getpid()])
            start = time.perf_counter_ns()
            loop(count)
            elapsed = time.perf_counter_ns() - start
            in_programs = program_time_ns([os.getpid()]) - before
        records = capture.ring.read_batch(1 << 30)
        stats = capture.probe_stats()
        fallbacks = capture.http_fallbacks() if exchanges else {}
    finally:
        for sock in (client, peer, server):
            sock.close()
        capture.close()
    # Userspace up to the exchanges the span stage gets: match (router) and
    # link; span building and encoding are the same for both paths.
    router, linker = ProtocolRouter(), ExchangeLinker()
    start = time.perf_counter_ns()
    built = linker.exchanges(router.process(records))
    userspace = time.perf_counter_ns() - start
    calls = count * CALLS_PER_EXCHANGE
    return {"ns_in_programs_per_call": in_programs / calls,
            "ns_per_exchange_caller_side": elapsed / count,
            "records_per_exchange": len(records) / count,
            "ring_bytes_per_exchange": sum(map(len, records)) / count,
            "us_per_span_match_link": userspace / max(len(built), 1) / 1000,
            "spans": len(built),
            "lost": sum(s[1] for s in stats.values()),
            "fallbacks": sum(c for c, _ in fallbacks.values())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exchanges", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--body-bytes", type=int, default=5, choices=range(0, 8193),
                        metavar="0..8192",
                        help="the response's body, written with its head and read in one "
                             "call (default 5)")
    parser.add_argument("--captured-heads", action="store_true",
                        help="curl's request and nginx's static-page answer (captured) "
                             "instead of the benchmark's own short heads")
    parser.add_argument("--by-load", action="store_true",
                        help="also measure --http-exchanges by-load while the ring is quiet "
                             "(the ring never passes its mark here: calls are copied)")
    parser.add_argument("--object", type=Path, action="append",
                        help="a capture object to measure (repeat to alternate several; "
                             "default: build/'s)")
    args = parser.parse_args()
    objects = args.object or [None]
    print(f"{'object':24} {'path':9} {'ns/call in programs':>20} {'ns/exchange (caller)':>21} "
          f"{'records/exchange':>17} {'ring bytes/exchange':>20} {'lost':>5} {'fallbacks':>9} "
          f"{'spans':>6} {'us/span match+link':>19}")
    for _ in range(args.rounds):
        modes = [EXCHANGE_MODES["off"], EXCHANGE_MODES["on"]]
        if args.by_load:
            modes.insert(1, EXCHANGE_MODES["by-load"])
        for obj, exchanges in ((o, e) for o in objects for e in modes):
            r = measure(exchanges, args.exchanges, obj, args.body_bytes,
                        captured_heads() if args.captured_heads else None)
            name = str(obj) if obj else "build/capture.bpf.o"
            print(f"{name[-24:]:24} {MODE_NAMES[exchanges]:9} {r['ns_in_programs_per_call']:20.0f} "
                  f"{r['ns_per_exchange_caller_side']:21.0f} {r['records_per_exchange']:17.2f} "
                  f"{r['ring_bytes_per_exchange']:20.0f} {r['lost']:5d} {r['fallbacks']:9d} "
                  f"{r['spans']:6d} {r['us_per_span_match_link']:19.2f}")


if __name__ == "__main__":
    main()
