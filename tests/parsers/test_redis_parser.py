"""Redis RESP2/RESP3 parser against streams real clients and servers
exchanged (tests/fixtures/redis, made by tests/fixtures/capture_cache.py:
redis-cli, redis-py, redis-benchmark and a plain socket against
redis-server 7), plus crafted edge cases."""
from __future__ import annotations

import pytest

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.redis import HANDSHAKE_COMMANDS, parse_command, parse_commands, parse_reply

from fuzzing import fixture_files

FILES = dict(fixture_files("redis"))
# What capture_cache.py sends and must never come out of the parser.
PASSWORD = b"fixture-secret-pw"
SECRET_VALUE = b"fixture-secret-value"
# redis-py 8's connection setup: HELLO 3 AUTH, then commands redis 7.0 rejects.
REDISPY_SETUP = ["HELLO", "CLIENT MAINT_NOTIFICATIONS", "CLIENT SETINFO", "CLIENT SETINFO"]


def commands(name: str):
    status, out, consumed, reason = parse_commands(FILES[name + ".client.bin"])
    data = FILES[name + ".client.bin"]
    assert (status, consumed, reason) == (PARSED, len(data), "")
    return out


def replies(name: str, elements: bool = False):
    data = FILES[name + ".server.bin"]
    out, pos = [], 0
    while pos < len(data):
        status, r, consumed, reason = parse_reply(data[pos:], elements=elements)
        assert status == PARSED, (pos, reason, data[pos:pos + 40])
        assert consumed == r.length > 0 and not r.truncated and r.framed
        out.append(r)
        pos += consumed
    return out


def test_redis_cli_commands_and_replies():
    names = [c.name for c in commands("cli_commands")]
    assert names == ["AUTH", "COMMAND DOCS", "SET", "GET", "GET", "INCR", "HSET", "HGETALL",
                     "CONFIG GET", "CLIENT SETNAME", "LPUSH", "NOSUCHCOMMAND", "SELECT", "SET",
                     "DEL", "EXISTS", "RPUSH", "LRANGE", "ZADD", "ZSCORE"]
    cs = commands("cli_commands")
    assert [c.query_text for c in cs[:3]] == ["AUTH ?", "COMMAND DOCS", "SET ? ?"]
    assert cs[6].arg_count == 5 and cs[6].query_text == "HSET ? ? ? ? ?"
    assert cs[8].query_text == "CONFIG GET ?" and cs[8].arg_count == 2
    assert cs[12].db == 2 and all(c.db is None for c in cs if c.name != "SELECT")
    rs = replies("cli_commands")
    assert len(rs) == len(cs)
    assert [(r.kind, r.error) for r in rs[10:12]] == [("-", "WRONGTYPE"), ("-", "ERR")]
    assert [i for i, r in enumerate(rs) if r.error] == [10, 11]
    assert rs[4].null and rs[4].kind == "$"          # GET missing
    assert rs[3].count == len(SECRET_VALUE) and not rs[3].null
    assert rs[17].kind == "*" and rs[17].count == 3  # LRANGE


def test_values_and_passwords_never_kept():
    for name, data in FILES.items():
        if not name.endswith(".client.bin"):
            continue
        status, cs, _, _ = parse_commands(data)
        assert status == PARSED and cs
        for c in cs:
            text = repr([getattr(c, f) for f in type(c).__slots__])
            assert "fixture" not in text and "secret" not in text, (name, text)
    # The password went out in AUTH and in HELLO 3 AUTH: only placeholders remain.
    hello = commands("redispy_transaction")[0]
    assert hello.name == "HELLO" and hello.protocol == 3 and hello.query_text == "HELLO ? ? ? ?"
    assert PASSWORD in FILES["inline.client.bin"]
    assert commands("inline")[0].query_text == "AUTH ?"


def test_pipeline_in_one_buffer():
    cs = commands("redispy_pipeline")
    assert [c.name for c in cs[:4]] == REDISPY_SETUP
    assert [c.name for c in cs[4:]] == ["SET", "GET", "INCRBY"] * 10
    assert len(replies("redispy_pipeline")) == len(cs)
    # redis-benchmark -P 10: 200 SETs (and AUTH) pipelined ten at a time.
    bench = commands("benchmark_2")
    assert [c.name for c in bench] == ["AUTH"] + ["SET"] * 200
    assert [r.kind for r in replies("benchmark_2")] == ["+"] * 201
    assert [c.name for c in commands("benchmark_3")] == ["AUTH"] + ["GET"] * 200


def test_split_pipeline_waits_for_the_rest():
    data = FILES["benchmark_2.client.bin"]
    cut = len(data) // 2 + 3
    status, first, consumed, _ = parse_commands(data[:cut])
    assert status == NEED_MORE and consumed < cut
    status, rest, end, _ = parse_commands(data[consumed:])
    assert status == PARSED and consumed + end == len(data)
    assert len(first) + len(rest) == 201


def test_multi_exec_queued_replies():
    assert [c.name for c in commands("redispy_transaction")[4:]] == \
        ["MULTI", "SET", "INCRBY", "LPUSH", "GET", "EXEC"]
    rs = replies("redispy_transaction", elements=True)[4:]
    assert rs[0].kind == "+" and not rs[0].queued          # MULTI's OK
    assert [r.queued for r in rs[1:5]] == [True] * 4
    exec_reply = rs[5]
    assert exec_reply.kind == "*" and exec_reply.count == 4
    assert [(e.kind, e.error) for e in exec_reply.elements] == \
        [("+", None), (":", None), ("-", "WRONGTYPE"), ("$", None)]
    # A transaction WATCH aborted: a null array.
    status, r, _, _ = parse_reply(b"*-1\r\n", elements=True)
    assert status == PARSED and r.null and r.elements is None


@pytest.mark.parametrize("capture", [64, 4096, 8192])
def test_large_bulk_keeps_its_framing_from_the_header(capture):
    data = FILES["redispy_large.server.bin"]
    rs = replies("redispy_large")
    get_at = sum(r.length for r in rs[:5])
    whole = rs[5].length
    assert rs[5].kind == "$" and whole > 100_000
    head = data[get_at:get_at + capture]
    assert parse_reply(head)[0] == NEED_MORE
    status, r, consumed, _ = parse_reply(head, partial=True)
    assert status == PARSED and r.truncated and r.framed and consumed == whole == r.length
    # Skipping `consumed` lands on the next reply (STRLEN's integer).
    status, nxt, _, _ = parse_reply(data[get_at + consumed:])
    assert status == PARSED and nxt.kind == ":"
    # The client's SET of the same value.
    client = FILES["redispy_large.client.bin"]
    cs = commands("redispy_large")
    set_at = sum(c.length for c in cs[:4])
    status, c, consumed, _ = parse_command(client[set_at:set_at + capture], partial=True)
    assert status == PARSED and c.name == "SET" and c.truncated and c.framed
    assert consumed == cs[4].length


def test_truncated_aggregate_loses_framing():
    data = b"*3\r\n$100\r\n" + b"x" * 20
    status, r, consumed, _ = parse_reply(data, partial=True)
    assert status == PARSED and r.truncated and not r.framed and consumed >= len(data)
    status, c, consumed, _ = parse_command(b"*3\r\n$3\r\nSET\r\n$900\r\n" + b"k" * 30, partial=True)
    assert status == PARSED and c.name == "SET" and not c.framed and c.arg_count == 2


def _kinds(rs):
    return [(r.kind, r.push, r.pubsub_kind, r.subscriptions) for r in rs]


def test_pubsub_resp2_messages_are_told_apart():
    cs = commands("redispy_pubsub_resp2")
    assert [c.name for c in cs[3:]] == ["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
                                         "PUNSUBSCRIBE", "SUNSUBSCRIBE"]
    rs = replies("redispy_pubsub_resp2")[3:]
    assert _kinds(rs[:3]) == [("*", False, "subscribe", 1), ("*", False, "psubscribe", 2),
                              ("*", False, "ssubscribe", 1)]
    pushed = [r.pubsub_kind for r in rs[3:-3]]
    assert pushed.count("message") == 3 and pushed.count("pmessage") == 3
    assert pushed.count("smessage") == 1 and len(pushed) == 7
    assert _kinds(rs[-3:]) == [("*", False, "unsubscribe", 1), ("*", False, "punsubscribe", 0),
                               ("*", False, "sunsubscribe", 0)]


def test_pubsub_resp3_pushes():
    rs = replies("redispy_pubsub_resp3")[4:]
    assert all(r.push and r.kind == ">" for r in rs)
    assert [r.pubsub_kind for r in rs[:3]] == ["subscribe", "psubscribe", "ssubscribe"]
    assert sum(r.pubsub_kind in ("message", "pmessage", "smessage") for r in rs) == 7
    # The publisher's replies are plain integers (receivers), not pushes.
    assert [r.kind for r in replies("redispy_pubsub_resp3_2")[5:]] == [":"] * 4


def test_resp3_types():
    rs = replies("cli_resp3_types")
    assert rs[1].kind == "%"                        # HELLO's map
    # DEBUG PROTOCOL string integer double null array set map push (then the
    # command's real reply) verbatim true false
    assert [r.kind for r in rs[3:15]] == ["$", ":", ",", "_", "*", "~", "%", ">", "$", "=", "#",
                                          "#"]
    assert rs[6].null and rs[9].count == 3 and rs[10].push and not rs[11].push
    socket_rs = replies("resp3_socket")
    assert [r.kind for r in socket_rs] == ["%", "(", "$", "+"]
    assert socket_rs[2].attributes and not socket_rs[1].attributes


def test_inline_commands():
    cs = [c for c in parse_commands(FILES["inline.client.bin"])[1]]
    assert [c.name for c in cs] == ["AUTH", "PING", "SET", "GET", "SELECT", "QUIT"]
    assert all(c.inline for c in cs)
    assert cs[2].arg_count == 2       # the quoted value with a blank is one argument
    assert cs[4].db == 1
    status, c, consumed, _ = parse_command(b"\r\nPING\r\n")
    assert (status, c, consumed) == (PARSED, None, 2)


def test_client_reply_mode_and_container_names():
    status, c, _, _ = parse_command(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n")
    assert status == PARSED and c.name == "CLIENT REPLY" and c.reply_mode == "OFF"
    assert c.query_text == "CLIENT REPLY ?"
    status, c, _, _ = parse_command(b"*1\r\n$6\r\nCLIENT\r\n")
    assert c.name == "CLIENT" and c.query_text == "CLIENT"
    status, c, _, _ = parse_command(b"*2\r\n$4\r\n\x00\x01\x02\x03\r\n$1\r\nx\r\n")
    assert status == PARSED and c.name == "_OTHER"
    many = b"*101\r\n$4\r\nMSET\r\n" + b"$1\r\nk\r\n" * 100
    status, c, _, _ = parse_command(many)
    assert c.arg_count == 100 and c.query_text.endswith("? ...") and c.query_text.count("?") == 32


def test_every_prefix_waits():
    for name in ("cli_commands", "redispy_transaction", "cli_resp3_types"):
        client, server = FILES[name + ".client.bin"], FILES[name + ".server.bin"]
        first_command = parse_command(client)[2]
        for i in range(first_command):
            assert parse_command(client[:i])[0] == NEED_MORE, (name, i)
        first_reply = parse_reply(server)[2]
        for i in range(min(first_reply, 400)):
            assert parse_reply(server[:i])[0] == NEED_MORE, (name, i)


@pytest.mark.parametrize("data,reason", [
    (b"*x\r\n", "bad_array_length"),
    (b"*0\r\n", "bad_array_length"),
    (b"*1\r\n:1\r\n", "expected_bulk_string"),
    (b"*1\r\n$3\r\nGETxx", "bad_bulk_end"),
    (b"*1\r\n$99999999999999999999999\r\n", "bad_bulk_length"),
    (b"\x16\x03\x01\x02\x00\x01", "bad_inline"),
])
def test_invalid_commands(data, reason):
    assert parse_command(data) == (INVALID, None, 0, reason)


@pytest.mark.parametrize("data,reason", [
    (b"?what\r\n", "bad_type"),
    (b":12a\r\n", "bad_integer"),
    (b"$3\r\nabcd\r\n", "bad_bulk_end"),
    (b"#x\r\n", "bad_boolean"),
    (b"*1\r\n" * 40 + b":1\r\n", "too_deep"),
    (b"GET / HTTP/1.1\r\n", "bad_type"),
])
def test_invalid_replies(data, reason):
    assert parse_reply(data) == (INVALID, None, 0, reason)


def test_connection_handshakes_are_named():
    """Every recorded connection starts with commands HANDSHAKE_COMMANDS
    names (the errors redis-py 8 draws from Redis 7.0 among them), then the
    application's own."""
    for name in sorted(FILES):
        if not name.endswith(".client.bin") or name.startswith(("inline", "resp3_socket")):
            continue
        cs = commands(name[:-len(".client.bin")])
        first_own = next(i for i, c in enumerate(cs) if c.name not in HANDSHAKE_COMMANDS)
        assert first_own >= 1, name
        assert cs[first_own].name not in ("CLIENT SETINFO", "HELLO"), name
        rs = replies(name[:-len(".client.bin")])
        setup_errors = {rs[i].error for i in range(first_own) if rs[i].error}
        assert setup_errors <= {"ERR"}, name
