"""memcached text and meta protocol parser against streams a real client
and server exchanged (tests/fixtures/memcached, made by
tests/fixtures/capture_cache.py: pymemcache and a plain socket against
memcached 1.6), plus crafted edge cases."""
from __future__ import annotations

import pytest

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.memcached import parse_reply, parse_request

from fuzzing import fixture_files

FILES = dict(fixture_files("memcached"))


def walk(name: str, parse):
    data = FILES[name]
    out, pos = [], 0
    while pos < len(data):
        status, m, consumed, reason = parse(data[pos:])
        assert status == PARSED, (name, pos, reason, data[pos:pos + 40])
        assert consumed == m.length > 0 and not m.truncated and m.framed
        out.append(m)
        pos += consumed
    return out


def test_pymemcache_text_protocol():
    cs = walk("pymemcache_text.client.bin", parse_request)
    assert [c.name for c in cs] == [
        "set", "get", "get", "set", "set", "get", "gets", "gets", "cas", "cas", "add", "replace",
        "append", "prepend", "set", "incr", "decr", "incr", "touch", "delete", "delete", "set",
        "version", "stats", "flush_all"]
    rs = walk("pymemcache_text.server.bin", parse_reply)
    # set(..., noreply=True) gets no reply: one fewer.
    assert [c.noreply for c in cs].count(True) == 1 and cs[21].noreply
    assert len(rs) == len(cs) - 1
    assert [r.kind for r in rs] == [
        "STORED", "END", "END", "STORED", "STORED", "END", "END", "END", "STORED", "EXISTS",
        "NOT_STORED", "NOT_STORED", "STORED", "STORED", "STORED", "NUMBER", "NUMBER",
        "NOT_FOUND", "TOUCHED", "DELETED", "NOT_FOUND", "VERSION", "STAT", "OK"]
    assert cs[0].data_length == len(b"fixture-secret-value") and cs[1].data_length == -1
    assert all(r.error is None for r in rs)


def test_multi_get_hits_and_misses():
    cs = walk("pymemcache_text.client.bin", parse_request)
    rs = walk("pymemcache_text.server.bin", parse_reply)
    multi = cs[5]
    assert multi.name == "get" and multi.key_count == 4
    assert rs[5].kind == "END" and rs[5].hits == 3       # a, b, user:1 found; one missing
    assert (cs[1].key_count, rs[1].hits) == (1, 1)       # hit
    assert (cs[2].key_count, rs[2].hits) == (1, 0)       # miss


def test_keys_and_values_never_kept():
    for name, data in FILES.items():
        parse = parse_request if ".client." in name else parse_reply
        for m in walk(name, parse):
            text = repr([getattr(m, f) for f in type(m).__slots__])
            for secret in ("fixture", "secret", "user:1", "m1", "missing"):
                assert secret not in text, (name, text)


def test_meta_protocol():
    cs = walk("meta.client.bin", parse_request)
    assert [c.name for c in cs] == ["ms", "mg", "mg", "mg", "mg", "ms", "md", "md", "ma", "ms",
                                    "ma", "me", "mn"]
    assert all(c.meta for c in cs) and cs[-1].key_count == 0
    assert [c.noreply for c in cs] == [False] * 4 + [True, True, True] + [False] * 6
    assert cs[2].opaque == "123" and cs[4].opaque == "9"
    rs = walk("meta.server.bin", parse_reply)
    # Quiet: mg q on a miss, ms q and md q on success say nothing.
    assert [r.kind for r in rs] == ["HD", "VA", "VA", "EN", "NF", "NF", "HD", "VA", "ME", "MN"]
    assert rs[2].opaque == "123" and rs[1].hits == 1


def test_errors():
    cs = walk("text_socket.client.bin", parse_request)
    rs = walk("text_socket.server.bin", parse_reply)
    assert len(cs) == len(rs)
    assert [c.name for c in cs] == ["_OTHER", "set", "get", "set", "set", "gat", "gats", "incr",
                                    "version"]
    # Lines the server cannot read: no data block follows them.
    assert cs[1].data_length == -1 and cs[3].data_length == -1 and cs[4].data_length == 3
    assert [r.error for r in rs] == ["ERROR", "CLIENT_ERROR", "CLIENT_ERROR", "ERROR", None, None,
                                     None, "CLIENT_ERROR", None]
    assert (cs[5].key_count, rs[5].hits) == (2, 1)


@pytest.mark.parametrize("capture", [64, 4096, 8192])
def test_large_value_keeps_its_framing(capture):
    client = FILES["pymemcache_large.client.bin"]
    server = FILES["pymemcache_large.server.bin"]
    set_cmd = walk("pymemcache_large.client.bin", parse_request)[0]
    status, c, consumed, _ = parse_request(client[:capture], partial=True)
    assert status == PARSED and c.name == "set" and c.truncated and consumed == set_cmd.length
    assert parse_request(client[:capture])[0] == NEED_MORE
    stored, got = walk("pymemcache_large.server.bin", parse_reply)
    tail = server[stored.length:stored.length + capture]
    status, r, consumed, _ = parse_reply(tail, partial=True)
    # One key: END follows the value, so the end is exact.
    assert status == PARSED and r.truncated and r.hits == 1 and consumed == got.length


def test_every_prefix_waits():
    for name in ("pymemcache_text", "meta", "text_socket"):
        client, server = FILES[name + ".client.bin"], FILES[name + ".server.bin"]
        for data, parse in ((client, parse_request), (server, parse_reply)):
            pos = 0
            for m in walk(f"{name}.{'client' if parse is parse_request else 'server'}.bin", parse)[:6]:
                for i in range(1, m.length):
                    assert parse(data[pos:pos + i])[0] == NEED_MORE, (name, pos, i)
                pos += m.length


@pytest.mark.parametrize("data,reason", [
    (b"\x80\x00\x00\x05", "binary_protocol"),
    (b"GET / HTTP/1.1\r\n", "bad_command"),
    (b"set k 0 0 3\r\nabcd\r\n", "bad_data_block"),
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", "bad_command"),
])
def test_invalid_requests(data, reason):
    assert parse_request(data) == (INVALID, None, 0, reason)


@pytest.mark.parametrize("data,reason", [
    (b"\x81\x00", "binary_protocol"),
    (b"HTTP/1.1 200 OK\r\n", "unknown_reply"),
    (b"VALUE k 0 x\r\n", "bad_value_line"),
    (b"VALUE k 0 3\r\nabcd\r\nEND\r\n", "bad_data_block"),
])
def test_invalid_replies(data, reason):
    assert parse_reply(data) == (INVALID, None, 0, reason)
