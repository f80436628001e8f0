"""bpf/cache_classify.h, compiled natively and loaded with cffi, against
the Python classifiers of agent/parsers/redis.py and memcached.py: both
give the same answer for every input, recognise what real Redis and
memcached clients and servers sent (tests/fixtures/redis, memcached), and
take nothing that HTTP/1, HTTP/2, PostgreSQL or MySQL peers sent for a
cache protocol.  The header also compiles for the BPF target."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.parsers import PARSED
from agent.parsers.memcached import (looks_like_memcached_reply, looks_like_memcached_request,
                                     parse_reply as mc_reply, parse_request as mc_request)
from agent.parsers.redis import (CLASSIFY_WINDOW, looks_like_redis_reply, looks_like_redis_request,
                                 parse_command, parse_reply)

from fuzzing import BUDGET, FIXTURES, edit, fixture_files
from host_build import build_host_module

ROOT = os.path.dirname(os.path.dirname(FIXTURES))
HEADER = os.path.join(ROOT, "bpf", "cache_classify.h")
FUNCTIONS = ("is_redis_request", "is_redis_reply", "is_memcached_request", "is_memcached_reply")
PYTHON = {"is_redis_request": looks_like_redis_request, "is_redis_reply": looks_like_redis_reply,
          "is_memcached_request": looks_like_memcached_request,
          "is_memcached_reply": looks_like_memcached_reply}
OTHER_PROTOCOLS = ("http1", "http2", "postgres", "mysql")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The header's four functions, built for the host."""
    cdef = "".join(f"int {f}(const unsigned char *b, unsigned n);\n" for f in FUNCTIONS)
    module = build_host_module(tmp_path_factory, "_cache_classify", [cdef], "cache_classify.h")
    ffi, lib = module.ffi, module.lib

    def call(name: str, data: bytes) -> bool:
        # The header reads up to CACHE_CLASSIFY_WINDOW bytes of buf, whatever len says.
        buf = ffi.new("unsigned char[]", data[:CLASSIFY_WINDOW].ljust(CLASSIFY_WINDOW, b"\0"))
        return bool(getattr(lib, name)(buf, len(data)))
    return call


def _agree(native, data: bytes) -> dict[str, bool]:
    answers = {}
    for name in FUNCTIONS:
        c = native(name, data)
        assert c == PYTHON[name](data), (name, data[:CLASSIFY_WINDOW])
        answers[name] = c
    return answers


def _starts(sub: str, parse):
    """(file name, bytes from each message start) of the streams in SUB."""
    for name, data in fixture_files(sub):
        pos = 0
        while pos < len(data):
            yield name, data[pos:]
            status, _, consumed, _ = parse(name, data[pos:])
            assert status == PARSED, (name, pos)
            pos += consumed


def _redis(name, data):
    return (parse_command if ".client." in name else parse_reply)(data)


def _memcached(name, data):
    return (mc_request if ".client." in name else mc_reply)(data)


def test_redis_messages_recognised(native):
    for name, data in _starts("redis", _redis):
        got = _agree(native, data)
        if ".client." in name:
            # Inline commands are left to the parser of a connection already known.
            assert got["is_redis_request"] == (not name.startswith("inline")), (name, data[:32])
        elif not data.startswith(b"(1234567999"):
            # (A big number longer than the window is not recognised.)
            assert got["is_redis_reply"], (name, data[:32])
        assert not got["is_memcached_request"] and not got["is_memcached_reply"], (name, data[:32])


def test_memcached_messages_recognised(native):
    for name, data in _starts("memcached", _memcached):
        got = _agree(native, data)
        if ".client." in name:
            # "bogus" is what the script sends to draw an ERROR.
            assert got["is_memcached_request"] == (not data.startswith(b"bogus")), data[:32]
        else:
            # incr/decr's bare number is left out on purpose.
            assert got["is_memcached_reply"] == (not data[:1].isdigit()), data[:32]
        assert not got["is_redis_request"] and not got["is_redis_reply"], data[:32]


def _http1_starts(name, data):
    return [0] + [i + 4 for i in range(len(data)) if data.startswith(b"\r\n\r\n", i)]


def _http2_starts(name, data):
    pos = 24 if data.startswith(b"PRI * HTTP/2.0") else 0
    out = [0]
    while pos + 9 <= len(data):
        out.append(pos)
        pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
    return out


def _postgres_starts(name, data):
    out = [0]
    pos = 0
    if ".client." in name:
        while pos + 8 <= len(data):     # SSLRequest, then the StartupMessage
            length = int.from_bytes(data[pos:pos + 4], "big")
            code = int.from_bytes(data[pos + 4:pos + 8], "big")
            pos += length
            out.append(pos)
            if code >> 16 == 3:
                break
    elif data[:1] == b"N":
        pos = 1
    while pos + 5 <= len(data):
        out.append(pos)
        pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
    return out


def _mysql_starts(name, data):
    out = []
    pos = 0
    while pos + 4 <= len(data):
        out.append(pos)
        pos += 4 + int.from_bytes(data[pos:pos + 3], "little")
    return out


STARTS = {"http1": _http1_starts, "http2": _http2_starts, "postgres": _postgres_starts,
          "mysql": _mysql_starts}


@pytest.mark.parametrize("sub", OTHER_PROTOCOLS)
def test_other_protocols_never_taken_for_a_cache(native, sub):
    """Every message start of every other protocol's fixture streams (where
    a syscall's bytes begin), and every prefix of the streams' first bytes."""
    checked = 0
    for name, data in fixture_files(sub):
        pieces = [data[:i] for i in range(1, CLASSIFY_WINDOW + 1)]
        pieces += [data[i:] for i in STARTS[sub](name, data)]
        for piece in pieces:
            got = _agree(native, piece)
            assert not any(got.values()), (name, piece[:32], got)
            checked += 1
    assert checked > 100


def test_short_and_edge_inputs_agree(native):
    for data in (b"", b"*", b"*1\r\n", b"*1\r\n$4\r\nPI", b"*1\r\n$4\r\nPING", b"*1\r\n$4\r\nPINGX",
                 b"*1\r\n$4\r\nPING\r", b"*1\r\n$40\r\n" + b"A" * 26, b"+OK\r\n", b"+OK",
                 b"-E ", b"-ERR", b"$-1\r\n", b"*0\r\n", b"$01\r\n", b":-12\r\n", b"_\r\n",
                 b"#t\r\n", b",inf\r\n", b",1.5e+10\r\n", b"HD ", b"HD", b"get k", b"get ",
                 b"gets\r\n", b"version\r\n", b"mn\r\n", b"GET / HTTP/1.1\r\n",
                 b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        _agree(native, data)
    assert native("is_redis_request", b"*1\r\n$4\r\nPING\r\n")
    assert not native("is_redis_request", b"*1\r\n$4\r\nPINGX")
    assert native("is_memcached_request", b"get k\r\n")
    assert not native("is_memcached_request", b"GET / HTTP/1.1\r\n")


SAMPLES = [data for _, data in fixture_files("redis") + fixture_files("memcached")
           + fixture_files("http1") + fixture_files("postgres")]
INTERESTING = st.sampled_from([b"\r\n", b"*", b"$", b"+", b"-", b":", b"1", b"0", b" ", b"get ",
                               b"HD ", b"%", b">", b"_", b"#", b","])


@st.composite
def inputs(draw):
    base = draw(st.sampled_from(SAMPLES))
    start = draw(st.integers(0, max(0, len(base) - 1)))
    data = edit(draw, bytearray(base[start:start + 48]), INTERESTING)
    return bytes(data[:draw(st.integers(0, len(data)))])


@BUDGET
@given(st.one_of(inputs(), st.binary(max_size=40)))
def test_native_and_python_agree_on_anything(native, data):
    _agree(native, data)


def test_header_compiles_for_bpf(tmp_path):
    clang = shutil.which("clang-19") or shutil.which("clang")
    if clang is None:
        pytest.skip("no clang for the BPF target")
    src = tmp_path / "prog.c"
    src.write_text(f'#include "{HEADER}"\n'
                   "int classify(const unsigned char *b, unsigned n) {\n"
                   "    return is_redis_request(b, n) | is_redis_reply(b, n) << 1 |\n"
                   "           is_memcached_request(b, n) << 2 | is_memcached_reply(b, n) << 3;\n"
                   "}\n")
    subprocess.run([clang, "-target", "bpf", "-O2", "-Wall", "-Werror", "-c", str(src), "-o",
                    str(tmp_path / "prog.o")], check=True)
