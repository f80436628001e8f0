"""Redis and memcached connections through the router and the span builder:
conversations as the kernel delivers them (one record per syscall, the
capture size cutting long ones), and the recorded client/server streams of
real clients replayed."""
from __future__ import annotations

import os

from agent.capture.records import C
from agent.protocols.router import ProtocolRouter
from agent.spans.builder import SpanBuilder
from agent.spans.model import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_UNSET
from agent.spans.redact import Redactor
from agent.spans.resources import ResourceCache
from event_records import make_record

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
REDIS, MEMCACHED = C["PROTOCOL_REDIS"], C["PROTOCOL_MEMCACHED"]
OUT, IN = C["DIRECTION_EGRESS"], C["DIRECTION_INGRESS"]
PASSWORD = "fixture-secret-pw"
SECRET_VALUE = "fixture-secret-value"
TAIL = C["SQL_TAIL_BYTES"]


class Conversation:
    """Records of one connection seen from one end."""

    def __init__(self, protocol: int, role: int = C["ROLE_CLIENT"], capture: int = 4096):
        self.protocol, self.role, self.capture = protocol, role, capture
        self.records = []
        self.t = 1000

    def event(self, direction: int, data: bytes, tail: bool = False) -> "Conversation":
        """One syscall's record; with tail, as the kernel copies a long read
        of a cache connection: its first bytes, then its last TAIL bytes."""
        self.t += 10
        captured, flags = data[:self.capture], 0
        if tail and len(data) > self.capture:
            captured = data[:self.capture - TAIL] + data[-TAIL:]
            flags = C["FLAG_TAIL"]
        self.records.append(make_record(
            captured, type=C["EVENT_DATA"], pid=4242, tid=4243, conn_id=7, flags=flags,
            start_ns=self.t, end_ns=self.t + 5, length=len(data),
            captured=len(captured), direction=direction, role=self.role,
            protocol=self.protocol, local_addr=bytes(10) + b"\xff\xff\x7f\0\0\1",
            remote_addr=bytes(10) + b"\xff\xff\x7f\0\0\1", local_port=50000, remote_port=6380,
            family=10))
        return self

    def send(self, data: bytes) -> "Conversation":
        return self.event(OUT if self.role == C["ROLE_CLIENT"] else IN, data)

    def answer(self, data: bytes) -> "Conversation":
        return self.event(IN if self.role == C["ROLE_CLIENT"] else OUT, data)

    def spans(self, sql_text: str = "sanitized"):
        router = ProtocolRouter()
        builder = SpanBuilder(ResourceCache(host_attributes=[]), Redactor(sql_text=sql_text))
        spans = builder.build(router.process(self.records))
        return spans, router


def resp(*words: str) -> bytes:
    out = b"*%d\r\n" % len(words)
    for w in words:
        b = w.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def attrs(span) -> dict:
    return dict(span.attributes)


def no_secrets(spans, *secrets: str) -> None:
    for s in spans:
        text = repr((s.name, s.attributes))
        for secret in secrets:
            assert secret not in text, text


# ------------------------------------------------------------------ Redis

def test_redis_pipelined_commands_pair_in_order_with_placeholder_text():
    c = Conversation(REDIS)
    c.send(resp("AUTH", PASSWORD) + resp("SET", "k1", SECRET_VALUE) + resp("GET", "k1")
           + resp("INCR", "n"))
    c.answer(b"+OK\r\n+OK\r\n$20\r\n" + SECRET_VALUE.encode() + b"\r\n:1\r\n")
    spans, router = c.spans()
    assert [(s.name, attrs(s)["db.query.text"]) for s in spans] == [
        ("SET", "SET ? ?"), ("GET", "GET ?"), ("INCR", "INCR ?")]
    for s in spans:
        a = attrs(s)
        assert s.kind == KIND_CLIENT and s.status_code == STATUS_UNSET
        assert a["db.system.name"] == "redis" and a["db.namespace"] == "0"
        assert a["server.port"] == 6380 and a["db.operation.name"] == s.name
    no_secrets(spans, PASSWORD, SECRET_VALUE, "k1")
    assert router.counts["cache_requests_without_response"] == 0
    assert not router.parse_errors


def test_redis_error_reply_sets_error_type_to_its_prefix_only():
    c = Conversation(REDIS)
    c.send(resp("LPUSH", "k", "v")).answer(b"-WRONGTYPE Operation against a key holding the "
                                           b"wrong kind of value\r\n")
    (span,), _ = Conversation.spans(c)
    assert span.status_code == STATUS_ERROR and attrs(span)["error.type"] == "WRONGTYPE"
    assert "Operation" not in repr(span.attributes) and span.status_message == ""


def test_redis_select_sets_the_namespace_of_later_commands():
    c = Conversation(REDIS)
    c.send(resp("SELECT", "3")).answer(b"+OK\r\n").send(resp("GET", "x")).answer(b"$-1\r\n")
    spans, _ = c.spans()
    assert [(s.name, attrs(s)["db.namespace"]) for s in spans] == [("SELECT", "0"), ("GET", "3")]


def test_redis_multi_exec_matches_queued_replies_to_execs_array():
    c = Conversation(REDIS)
    c.send(resp("MULTI") + resp("SET", "a", "1") + resp("LPUSH", "a", "x") + resp("EXEC"))
    c.answer(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n-WRONGTYPE Operation\r\n")
    spans, _ = c.spans()
    assert [(s.name, attrs(s).get("error.type")) for s in spans] == [
        ("MULTI", None), ("SET", None), ("LPUSH", "WRONGTYPE"), ("EXEC", None)]
    # The queued commands end with EXEC's reply.
    assert spans[1].end_ns == spans[3].end_ns


def test_redis_discard_ends_queued_commands_without_spans():
    c = Conversation(REDIS)
    c.send(resp("MULTI") + resp("SET", "a", "1") + resp("DISCARD"))
    c.answer(b"+OK\r\n+QUEUED\r\n+OK\r\n")
    spans, router = c.spans()
    assert [s.name for s in spans] == ["MULTI", "DISCARD"]
    assert router.counts["redis_queued_not_run"] == 1


def test_redis_pubsub_messages_are_counted_not_spanned():
    c = Conversation(REDIS)
    c.send(resp("SUBSCRIBE", "a", "b"))
    c.answer(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n")
    c.answer(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n" * 3)
    c.send(resp("UNSUBSCRIBE"))
    c.answer(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n"
             b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n")
    c.send(resp("PING")).answer(b"+PONG\r\n")
    spans, router = c.spans()
    assert [s.name for s in spans] == ["SUBSCRIBE", "UNSUBSCRIBE", "PING"]
    assert router.counts["redis_pushes"] == 3
    assert router.counts["cache_responses_without_request"] == 0


def test_redis_resp3_push_frames_are_not_replies():
    c = Conversation(REDIS)
    c.send(resp("HELLO", "3", "AUTH", "default", PASSWORD)).answer(b"%1\r\n+proto\r\n:3\r\n")
    c.send(resp("SUBSCRIBE", "ch")).answer(b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
    c.answer(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
    c.send(resp("GET", "k")).answer(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n_\r\n")
    spans, router = c.spans()
    assert [s.name for s in spans] == ["SUBSCRIBE", "GET"]
    assert router.counts["redis_pushes"] == 2
    no_secrets(spans, PASSWORD)


def test_redis_large_bulk_reply_beyond_the_capture_keeps_framing():
    c = Conversation(REDIS, capture=256)
    big = b"x" * 100_000
    c.send(resp("GET", "big")).answer(b"$100000\r\n" + big + b"\r\n")
    c.send(resp("GET", "small")).answer(b"$1\r\ny\r\n")
    spans, router = c.spans()
    assert [s.name for s in spans] == ["GET", "GET"]
    assert router.counts["cache_framing_lost"] == 0


def test_redis_pipelined_replies_behind_a_large_value_are_framed_from_the_tail():
    """redis-py pipeline: GET big, then three small commands; their replies
    reach the client in one read whose middle the capture leaves out."""
    c = Conversation(REDIS, capture=256)
    c.send(resp("GET", "big") + resp("INCR", "n") + resp("GET", "small") + resp("PING"))
    replies = b"$100000\r\n" + b"x" * 100_000 + b"\r\n" + b":7\r\n$1\r\ny\r\n+PONG\r\n"
    c.event(IN, replies, tail=True)
    spans, router = c.spans()
    assert [s.name for s in spans] == ["GET", "INCR", "GET", "PING"]
    assert router.counts["cache_framing_lost"] == 0
    assert router.counts["cache_tail_recoveries"] == 1
    # Without the tail the three replies behind the value are lost, counted.
    c = Conversation(REDIS, capture=256)
    c.send(resp("GET", "big") + resp("INCR", "n") + resp("GET", "small") + resp("PING"))
    c.event(IN, replies)
    spans, router = c.spans()
    assert [s.name for s in spans] == ["GET"] and router.counts["cache_framing_lost"] == 1


def test_redis_large_reply_split_over_reads_is_skipped_by_its_size():
    c = Conversation(REDIS, capture=256)
    body = b"$100000\r\n" + b"x" * 100_000 + b"\r\n"
    c.send(resp("GET", "big"))
    for i in range(0, len(body), 65536):
        c.answer(body[i:i + 65536])
    c.send(resp("PING")).answer(b"+PONG\r\n")
    spans, router = c.spans()
    assert [s.name for s in spans] == ["GET", "PING"]
    assert spans[0].end_ns > spans[0].start_ns + 10     # ended by the last read
    assert router.counts["cache_framing_lost"] == 0


def test_redis_server_side_spans():
    c = Conversation(REDIS, role=C["ROLE_SERVER"])
    c.send(resp("SET", "a", "b")).answer(b"+OK\r\n")
    (span,), _ = c.spans()
    assert span.kind == KIND_SERVER and span.name == "SET"


def test_sql_text_off_drops_the_redis_query_text():
    c = Conversation(REDIS)
    c.send(resp("GET", "k")).answer(b"$-1\r\n")
    (span,), _ = c.spans(sql_text="off")
    assert "db.query.text" not in attrs(span)


def fixture(system: str, name: str) -> tuple[bytes, bytes]:
    base = os.path.join(FIXTURES, system, name)
    with open(base + ".client.bin", "rb") as f:
        client = f.read()
    with open(base + ".server.bin", "rb") as f:
        server = f.read()
    return client, server


def test_recorded_redis_benchmark_one_span_per_command():
    """redis-benchmark's recorded stream as one write and one read: every
    command but the handshake is one span, nothing is an error."""
    from agent.parsers.redis import HANDSHAKE_COMMANDS, parse_commands
    client, server = fixture("redis", "benchmark")
    _, commands, _, _ = parse_commands(client)
    expected = [c.name for c in commands if c.name not in HANDSHAKE_COMMANDS]
    c = Conversation(REDIS, capture=1 << 30).send(client).answer(server)
    spans, router = c.spans()
    assert [s.name for s in spans] == expected
    assert not router.parse_errors
    no_secrets(spans, PASSWORD)


def test_recorded_redis_py_transaction_and_pipeline():
    for name in ("redispy_transaction", "redispy_pipeline"):
        client, server = fixture("redis", name)
        spans, router = Conversation(REDIS, capture=1 << 30).send(client).answer(server).spans()
        assert spans and not router.parse_errors, name
        assert router.counts["cache_requests_without_response"] == 0, name
        no_secrets(spans, PASSWORD, SECRET_VALUE)


# -------------------------------------------------------------- memcached

def test_memcached_get_set_multiget_miss_and_errors():
    c = Conversation(MEMCACHED)
    c.send(b"set k1 0 0 5\r\nhello\r\n").answer(b"STORED\r\n")
    c.send(b"set k2 0 0 5 noreply\r\nworld\r\n")
    c.send(b"get k1 k2 k3\r\n").answer(b"VALUE k1 0 5\r\nhello\r\nVALUE k2 0 5\r\nworld\r\nEND\r\n")
    c.send(b"get nope\r\n").answer(b"END\r\n")
    c.send(b"bogus\r\n").answer(b"ERROR\r\n")
    c.send(b"incr k1 1\r\n").answer(b"CLIENT_ERROR cannot increment or decrement non-numeric "
                                     b"value\r\n")
    spans, router = c.spans()
    rows = [(s.name, attrs(s).get("db.operation.batch.size"), attrs(s).get("memcached.hits"),
             attrs(s).get("error.type")) for s in spans]
    assert rows == [("set", None, None, None), ("set", None, None, None),
                    ("get", 3, 2, None), ("get", None, 0, None), ("_OTHER", None, None, "ERROR"),
                    ("incr", None, None, "CLIENT_ERROR")]
    for s in spans:
        assert attrs(s)["db.system.name"] == "memcached" and "db.query.text" not in attrs(s)
    no_secrets(spans, "k1", "k2", "hello", "world", "non-numeric")
    assert not router.parse_errors


def test_memcached_meta_quiet_commands_end_at_mn():
    c = Conversation(MEMCACHED)
    c.send(b"mg a v q\r\nmg b v q\r\nms c 2 q\r\nhi\r\nmn\r\n")
    c.answer(b"VA 1\r\nx\r\nMN\r\n")
    spans, router = c.spans()
    assert [(s.name, attrs(s).get("memcached.hits")) for s in spans] == [
        ("mg", 1), ("mg", 0), ("ms", None)]
    assert router.counts["cache_responses_without_request"] == 0


def test_recorded_pymemcache_traffic():
    for name in ("pymemcache_text", "pymemcache_large", "meta", "text_socket"):
        client, server = fixture("memcached", name)
        spans, router = Conversation(MEMCACHED, capture=1 << 30).send(client).answer(
            server).spans()
        assert spans, name
        assert router.counts["cache_requests_without_response"] == 0, name
        assert router.counts["cache_responses_without_request"] == 0, name
