"""µs per message of the Redis and memcached parsers, on recorded traffic.

Redis: redis-benchmark's pipelined SETs and GETs (-P 10) framed with
parse_commands (one call per recorded stream), their replies with
parse_reply one at a time, and a large GET reply truncated to the capture
size (partial=True).  memcached: pymemcache's mixed text commands and
replies, and the meta commands.  The best of five rounds is printed.

Run: .venv/bin/python benchmarks/cache_parsers.py
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.parsers import memcached, redis  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tests", "fixtures")
ROUNDS = 5
CAPTURE = 8192


def load(sub: str, name: str) -> bytes:
    with open(os.path.join(FIXTURES, sub, name), "rb") as f:
        return f.read()


def each(parse, data: bytes) -> int:
    """Messages framed one call at a time, as a handler does."""
    pos = count = 0
    n = len(data)
    while pos < n:
        _, _, consumed, _ = parse(data[pos:])
        pos += consumed
        count += 1
    return count


def best(label: str, work, repeat: int) -> None:
    times = []
    messages = 0
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(repeat):
            messages = work()
        times.append(time.perf_counter() - start)
    per = min(times) / (repeat * messages) * 1e6
    print(f"{label:<48} {per:7.2f} µs/message  ({messages} messages x {repeat})")


def main() -> None:
    sets = load("redis", "benchmark_2.client.bin")
    gets = load("redis", "benchmark_3.client.bin")
    set_replies = load("redis", "benchmark_2.server.bin")
    get_replies = load("redis", "benchmark_3.server.bin")
    large = load("redis", "redispy_large.server.bin")
    big_get = large[large.index(b"$100000"):][:CAPTURE]
    best("redis pipelined SET commands (parse_commands)",
         lambda: len(redis.parse_commands(sets)[1]), 50)
    best("redis pipelined GET commands (parse_commands)",
         lambda: len(redis.parse_commands(gets)[1]), 50)
    best("redis SET replies (parse_reply each)", lambda: each(redis.parse_reply, set_replies), 50)
    best("redis GET replies (parse_reply each)", lambda: each(redis.parse_reply, get_replies), 50)
    best("redis 100 kB GET reply, 8 kB captured",
         lambda: int(redis.parse_reply(big_get, True)[0] == 0), 20000)
    text = load("memcached", "pymemcache_text.client.bin")
    text_replies = load("memcached", "pymemcache_text.server.bin")
    meta = load("memcached", "meta.client.bin")
    best("memcached text commands (parse_request each)",
         lambda: each(memcached.parse_request, text), 500)
    best("memcached text replies (parse_reply each)",
         lambda: each(memcached.parse_reply, text_replies), 500)
    best("memcached meta commands (parse_request each)",
         lambda: each(memcached.parse_request, meta), 500)


if __name__ == "__main__":
    main()
