"""CPU time per message of the HTTP/2 and MySQL parsers on synthetic,
well-formed traffic: gRPC requests (HEADERS + DATA, HPACK with a fresh
traceparent each) through one H2Direction, and MySQL COM_QUERY commands each
answered by a two-column, five-row result set through ResponseReader.

    .venv/bin/python benchmarks/parsers.py [--tree DIR] [--runs 7]

--tree imports agent/ from another checkout (git worktree, or
`git archive REV agent | tar -x -C DIR`), to compare two versions of the
parsers in the same session.  Prints the best of --runs runs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def best_us_per_item(function, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        count = function()
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def mysql_case():
    from agent.parsers import mysql as my

    def packet(seq: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "little") + bytes([seq]) + payload

    commands = [packet(0, b"\x03SELECT id, name FROM users WHERE id = %d" % i)
                for i in range(5000)]
    column = packet(2, b"\x03def\x04test\x05users\x05users\x02id\x02id\x0c\x3f\x00\x0b\x00"
                       b"\x00\x00\x03\x03\x42\x00\x00\x00")
    eof = b"\xfe\x00\x00\x02\x00"
    answer = (packet(1, b"\x02") + column + column + packet(4, eof)
              + b"".join(packet(5 + row, b"\x011\x05alice") for row in range(5))
              + packet(10, eof))
    caps = my.CLIENT_PROTOCOL_41

    def run() -> int:
        for command in commands:
            _, parsed, _, _ = my.parse_command(command, caps)
            reader = my.ResponseReader(parsed.code, caps)
            reader.feed(answer[:40])     # an answer split across two reads
            reader.feed(answer[40:])
            assert reader.done
        return len(commands)
    return run


def http2_case():
    import hpack
    from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

    from agent.parsers.http2 import PREFACE, H2Direction

    encoder = hpack.Encoder()
    frames = [PREFACE, SettingsFrame(0).serialize()]
    requests = 2000
    for i in range(requests):
        stream = 2 * i + 1
        headers = HeadersFrame(stream, flags=["END_HEADERS"])
        headers.data = encoder.encode([
            (":method", "POST"), (":scheme", "http"), (":path", "/helloworld.Greeter/SayHello"),
            (":authority", "127.0.0.1:50051"), ("content-type", "application/grpc"),
            ("te", "trailers"), ("traceparent", "00-%032x-%016x-01" % (i + 1, i + 1)),
            ("user-agent", "grpc-python/1.60")])
        body = DataFrame(stream, data=b"\0\0\0\0\x07\n\x05world", flags=["END_STREAM"])
        frames += [headers.serialize(), body.serialize()]
    reads = [b"".join(frames[i:i + 20]) for i in range(0, len(frames), 20)]

    def run() -> int:
        direction = H2Direction(is_client_side=True)
        events = sum(len(direction.feed(data)[1]) for data in reads)
        assert events == 2 * requests, events
        return requests
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    import agent
    print(f"agent from {Path(agent.__file__).parent}")
    print(f"  mysql: {best_us_per_item(mysql_case(), args.runs):6.2f} µs per query and result set")
    print(f"  http2: {best_us_per_item(http2_case(), args.runs):6.2f} µs per gRPC request "
          "(HEADERS + DATA)")


if __name__ == "__main__":
    main()
