"""Redis and memcached end to end: Debian's redis-server and memcached on
loopback on a non-standard port, real clients (redis-cli, redis-py,
redis-benchmark, pymemcache), real BPF programs, spans checked at an OTLP
receiver.  Each command is one span named by the command; no key, value or
password is exported; pushed pub/sub messages are counted, not spanned."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time

import pytest

from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET
from caches import PASSWORD, SECRET_VALUE
from caches import memcached_fixture, redis_fixture  # noqa: F401  (fixtures)
from conftest import LOADER_ARGS
from databases import describe, leaks, wait_spans

pytestmark = pytest.mark.kernel

SYSTEM = "db.system.name"


@pytest.fixture(params=list(LOADER_ARGS))
def agent_loader(request) -> str:
    """Redis and memcached are recognised under both front ends: CO-RE, and
    BCC, whose build inlines the classifiers into every program."""
    return request.param


def cache_spans(system: str, port: int, kind: int | None = KIND_CLIENT):
    def predicate(span) -> bool:
        a = span.attributes
        return (a.get(SYSTEM) == system and a.get("server.port") == port
                and (kind is None or span.kind == kind))
    return predicate


def no_leaks(receiver, *values: str) -> None:
    found = leaks(list(receiver.spans), values)
    assert not found, "\n".join(found)


def parse_errors(agent, protocol: str) -> float:
    return agent.metric("otel_ebpf_parse_errors_total", protocol=protocol)


# ------------------------------------------------------------------ Redis

def test_redis_cli_commands_one_span_each_and_an_error(receiver, start_agent, redis_server):
    """redis-cli on its own connections (AUTH, then one command each): the
    handshake gives no span; the server traced as well gives the same
    spans on its side."""
    agent = start_agent("--port", str(redis_server.port))
    time.sleep(0.5)
    redis_server.cli("SET", "greeting", SECRET_VALUE)
    assert redis_server.cli("GET", "greeting").strip() == SECRET_VALUE
    redis_server.cli("HSET", "h", "field", SECRET_VALUE)
    assert "WRONGTYPE" in redis_server.cli("LPUSH", "greeting", "x")
    redis_server.cli("-n", "2", "PING")
    spans = wait_spans(receiver, cache_spans("redis", redis_server.port), 6)
    rows = [(s.name, s.attributes.get("db.query.text"), s.attributes.get("db.namespace"),
             s.attributes.get("error.type")) for s in spans]
    assert rows == [("SET", "SET ? ?", "0", None), ("GET", "GET ?", "0", None),
                    ("HSET", "HSET ? ? ?", "0", None), ("LPUSH", "LPUSH ? ?", "0", "WRONGTYPE"),
                    ("SELECT", "SELECT ?", "0", None), ("PING", "PING", "2", None)], \
        describe(spans)
    names = [s.name for s in spans]
    assert names == ["SET", "GET", "HSET", "LPUSH", "SELECT", "PING"], describe(spans)
    assert [s.status_code for s in spans] == [STATUS_UNSET] * 3 + [STATUS_ERROR] + \
        [STATUS_UNSET] * 2
    for s in spans:
        a = s.attributes
        assert a["db.operation.name"] == s.name and a["server.address"] == "127.0.0.1"
        assert s.resource.get("process.executable.name") == "redis-cli", describe([s])
    server = wait_spans(receiver, cache_spans("redis", redis_server.port, KIND_SERVER), 6)
    assert [s.name for s in server] == names, describe(server)
    no_leaks(receiver, PASSWORD, SECRET_VALUE, "greeting", "WRONGTYPE Operation")
    assert parse_errors(agent, "redis") == 0
    assert parse_errors(agent, "memcached") == 0


def test_redis_py_pipeline_and_transaction(receiver, start_agent, redis_server):
    """redis-py in this process: a pipeline (three commands in one write,
    three replies in one read) and a transaction (MULTI, the queued
    commands matched to EXEC's array, one with an error, EXEC)."""
    start_agent("--pid", str(os.getpid()), "--port", str(redis_server.port))
    time.sleep(0.5)
    r = redis_server.client()
    r.set("counter", "x")      # makes INCR fail inside the transaction
    pipe = r.pipeline(transaction=False)
    pipe.set("k1", SECRET_VALUE).get("k1").delete("k1")
    assert pipe.execute() == [True, SECRET_VALUE.encode(), 1]
    tx = r.pipeline(transaction=True)
    tx.set("k2", SECRET_VALUE).incr("counter").get("k2")
    result = tx.execute(raise_on_error=False)
    assert result[0] is True and result[2] == SECRET_VALUE.encode()
    r.close()
    spans = wait_spans(receiver, cache_spans("redis", redis_server.port), 9)
    assert [(s.name, s.attributes.get("error.type")) for s in spans] == [
        ("SET", None), ("SET", None), ("GET", None), ("DEL", None),
        ("MULTI", None), ("SET", None), ("INCRBY", "ERR"), ("GET", None), ("EXEC", None)], \
        describe(spans)
    # The queued commands end with EXEC's reply.
    assert spans[5].end_ns == spans[8].end_ns
    no_leaks(receiver, PASSWORD, SECRET_VALUE)


def test_redis_pipeline_behind_a_large_value_keeps_every_span(receiver, start_agent,
                                                               redis_server):
    """A 200 kB value in a pipeline: the capture keeps each long syscall's
    first bytes and its last 64, and the replies queued behind the value
    are framed from those last bytes."""
    agent = start_agent("--pid", str(os.getpid()), "--port", str(redis_server.port))
    time.sleep(0.5)
    r = redis_server.client()
    big = "v" * 200_000
    r.set("big", big)
    r.set("small", "s")
    pipe = r.pipeline(transaction=False)
    pipe.get("big").incr("n").get("small").ping()
    assert pipe.execute()[2:] == [b"s", True]
    r.close()
    spans = wait_spans(receiver, cache_spans("redis", redis_server.port), 6)
    assert [s.name for s in spans] == ["SET", "SET", "GET", "INCRBY", "GET", "PING"], \
        describe(spans)
    assert agent.metric("otel_ebpf_cache_framing_lost_total") == 0
    assert agent.metric("otel_ebpf_cache_tail_recoveries_total") >= 1


def test_redis_pubsub_messages_counted_not_spanned(receiver, start_agent, redis_server):
    agent = start_agent("--pid", str(os.getpid()), "--port", str(redis_server.port))
    time.sleep(0.5)
    subscriber = redis_server.client()
    pubsub = subscriber.pubsub()
    pubsub.subscribe("news")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    publisher = redis_server.client()
    for i in range(5):
        assert publisher.publish("news", f"{SECRET_VALUE}-{i}") == 1
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 5 and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=1)
        if m and m["type"] == "message":
            got.append(m)
    assert len(got) == 5
    pubsub.close()
    publisher.close()
    subscriber.close()
    spans = wait_spans(receiver, cache_spans("redis", redis_server.port), 6)
    assert sorted(s.name for s in spans) == ["PUBLISH"] * 5 + ["SUBSCRIBE"], describe(spans)
    deadline = time.monotonic() + 5
    while agent.metric("otel_ebpf_redis_pushes_total") < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent.metric("otel_ebpf_redis_pushes_total") == 5
    no_leaks(receiver, PASSWORD, SECRET_VALUE)


def test_redis_benchmark_one_span_per_command(receiver, start_agent, redis_server):
    """redis-benchmark -t get,set -n N -c 2: N GET and N SET spans on the
    client side and N of each on the server side."""
    n = int(os.environ.get("OTEL_EBPF_REDIS_BENCHMARK_N", "3000"))
    # The 4N spans arrive in well under a second, faster than the test's
    # Python receiver decodes them on a loaded machine: a queue that holds
    # them all keeps this test about capture and pairing (export under
    # pressure has its own tests in test_resilience).
    agent = start_agent("--port", str(redis_server.port),
                        extra_env={"OTEL_BSP_MAX_QUEUE_SIZE": str(4 * n + 1024)})
    time.sleep(0.5)
    started = time.monotonic()
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis_server.port), "-a", PASSWORD,
         "-t", "get,set", "-n", str(n), "-c", "2", "-q"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    elapsed = time.monotonic() - started
    rates = re.findall(r"([A-Z]+): ([0-9.]+) requests per second", out)
    print(f"\nredis-benchmark {n} per command in {elapsed:.2f}s: {rates}")

    def counted(kind):
        spans = [s for s in receiver.spans if cache_spans("redis", redis_server.port, kind)(s)]
        return sum(1 for s in spans if s.name == "GET"), sum(1 for s in spans if s.name == "SET")

    receiver.wait_for(lambda _: counted(KIND_CLIENT) == (n, n) and counted(KIND_SERVER) == (n, n),
                      60)
    drained = time.monotonic() - started
    print(f"all {4 * n} spans exported {drained:.2f}s after the start: "
          f"{4 * n / drained:.0f} spans/s sustained")
    time.sleep(1)
    losses = [line for line in agent.metrics().splitlines() if not line.startswith("#") and (
        "lost" in line or "cache_" in line or "dropped" in line or "parse_errors" in line)
        and not line.endswith(" 0.0")]
    assert counted(KIND_CLIENT) == (n, n), losses
    assert counted(KIND_SERVER) == (n, n), losses
    errors = [s for s in receiver.spans if s.status_code == STATUS_ERROR
              and s.attributes.get(SYSTEM) == "redis"]
    assert not errors, describe(errors[:5])
    assert parse_errors(agent, "redis") == 0
    assert agent.metric("otel_ebpf_cache_commands_without_reply_total") == 0
    no_leaks(receiver, PASSWORD)


# -------------------------------------------------------------- memcached

def test_memcached_get_set_multiget_miss_error(receiver, start_agent, memcached_server):
    agent = start_agent("--pid", str(os.getpid()), "--port", str(memcached_server.port))
    time.sleep(0.5)
    mc = memcached_server.client()
    assert mc.set("alpha", SECRET_VALUE) is True
    assert mc.set("beta", SECRET_VALUE) is True
    assert mc.get("alpha") == SECRET_VALUE.encode()
    assert mc.get("missing-key") is None
    assert mc.get_many(["alpha", "beta", "gamma"]) == {"alpha": SECRET_VALUE.encode(),
                                                       "beta": SECRET_VALUE.encode()}
    with pytest.raises(Exception):
        mc.incr("alpha", 1)          # CLIENT_ERROR: not a number
    mc.close()
    with socket.create_connection(("127.0.0.1", memcached_server.port)) as s:
        # A connection opens as memcached with a command the server knows.
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION ")
        s.sendall(b"bogus command\r\n")
        assert s.recv(100) == b"ERROR\r\n"
    spans = wait_spans(receiver, cache_spans("memcached", memcached_server.port), 8)
    rows = [(s.name, s.attributes.get("db.operation.batch.size"),
             s.attributes.get("memcached.hits"), s.attributes.get("error.type")) for s in spans]
    assert rows == [("set", None, None, None), ("set", None, None, None), ("get", None, 1, None),
                    ("get", None, 0, None), ("get", 3, 2, None),
                    ("incr", None, None, "CLIENT_ERROR"), ("version", None, None, None),
                    ("_OTHER", None, None, "ERROR")], \
        describe(spans)
    no_leaks(receiver, SECRET_VALUE, "alpha", "beta", "gamma", "missing-key")
    assert parse_errors(agent, "memcached") == 0
    assert parse_errors(agent, "redis") == 0


# ------------------------------------------------- connections not theirs

def test_other_protocols_are_not_taken_for_a_cache(receiver, start_agent):
    """An SMTP-like text dialogue and binary bytes on a traced port: no
    Redis or memcached span and no parse error of either."""
    import threading
    from loopback import free_port

    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    agent = start_agent("--port", str(port))
    time.sleep(0.5)

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"220 mail.example ESMTP ready\r\n")
                while conn.recv(4096):
                    conn.sendall(b"250 OK\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    dialogues = ([b"EHLO client.example\r\n", b"MAIL FROM:<a@example>\r\n", b"QUIT\r\n"],
                 [bytes(range(256)), b"\x00\x00\x00\x08\x01\x02\x03\x04" * 4])
    for lines in dialogues:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.recv(100)
            for line in lines:
                s.sendall(line)
                s.recv(100)
    thread.join(5)
    listener.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and agent.metric("otel_ebpf_kernel_events_unclassified_total") \
            < 8:
        time.sleep(0.2)
    assert agent.metric("otel_ebpf_kernel_events_unclassified_total") >= 8   # the agent saw them
    caches = [s for s in receiver.spans if s.attributes.get(SYSTEM) in ("redis", "memcached")]
    assert not caches, describe(caches)
    assert parse_errors(agent, "redis") == 0
    assert parse_errors(agent, "memcached") == 0
