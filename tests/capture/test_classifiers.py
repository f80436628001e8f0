"""The kernel's protocol classifiers (bpf/protocols.h and the protocol units
it includes), compiled for the host with cffi, against userspace's own
checks (agent/parsers' looks_like_* functions) on the captured fixtures and
on edited and random bytes.

The kernel sees at most CLASSIFY_BYTES of a syscall's data and its byte
count; userspace sees whole messages.  The property that matters is that a
connection the kernel starts shipping is one userspace can read: where the
kernel says PostgreSQL or MySQL, userspace's check for that protocol agrees.
For HTTP/1 the kernel recognises the method token alone: it must not miss a
request or response userspace recognises (with a method it knows).
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.parsers.http1 import looks_like_request, looks_like_response
from agent.parsers.http2 import PREFACE
from agent.parsers.mysql import (looks_like_greeting_payload, looks_like_mysql_command,
                                 looks_like_mysql_handshake)
from agent.parsers.postgres import looks_like_postgres_frontend, looks_like_postgres_startup
from agent.capture import records
from fuzzing import BUDGET, edit, fixture_files
from host_build import build_host_module

C = records.C
KERNEL_METHODS = (b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT",
                  b"TRACE")

CDEF = """
#define CLASSIFY_BYTES ...
uint8_t classify_protocol(const uint8_t *head, uint32_t len, uint64_t total);
bool is_http2_frame(const uint8_t *b, uint32_t len);
bool sql_keeps_tail(uint8_t protocol, uint64_t total, uint64_t want);
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The classifiers built natively from the same headers the BPF object
    includes."""
    return build_host_module(tmp_path_factory, "_kernel_classifiers", [CDEF], "protocols.h").lib


def classify(kernel, data: bytes, total: int | None = None) -> int:
    """What the capture decides for a syscall that moved data (total bytes,
    of which data is the start)."""
    head = data[:kernel.CLASSIFY_BYTES]
    # The kernel's head is always CLASSIFY_BYTES long, zeroed past the data.
    window = head.ljust(kernel.CLASSIFY_BYTES, b"\0")
    return kernel.classify_protocol(window, len(head), len(data) if total is None else total)


# ---- the captured fixtures --------------------------------------------------

HTTP1 = [(n, d) for n, d in fixture_files("http1") if n not in ("tls_client_hello.bin",
                                                                 "h2_prior_knowledge.bin")]


@pytest.mark.parametrize("name, data", HTTP1, ids=[n for n, _ in HTTP1])
def test_http1_fixtures_open_as_http1_on_both_sides(kernel, name, data):
    assert looks_like_request(data) or looks_like_response(data)
    assert classify(kernel, data) == C["PROTOCOL_HTTP1"]


def test_tls_and_h2_fixtures_are_not_http1(kernel):
    files = dict(fixture_files("http1"))
    hello = files["tls_client_hello.bin"]
    assert classify(kernel, hello) == C["PROTOCOL_UNKNOWN"]
    assert not looks_like_request(hello) and not looks_like_response(hello)
    assert classify(kernel, files["h2_prior_knowledge.bin"]) == C["PROTOCOL_HTTP2"]


def http1_starts(data: bytes) -> list[int]:
    """Offsets in a recorded conversation where userspace sees a request or
    response start."""
    return [i for i in range(len(data)) if data[i:i + 1] in b"ACDGHOPT"
            and (looks_like_request(data[i:]) or looks_like_response(data[i:]))]


@pytest.mark.parametrize("name, data", HTTP1, ids=[n for n, _ in HTTP1])
def test_every_http1_message_userspace_sees_the_kernel_sees(kernel, name, data):
    starts = http1_starts(data)
    assert starts
    for offset in starts:
        if data[offset:].split(b" ", 1)[0] in KERNEL_METHODS + (b"HTTP/1.0", b"HTTP/1.1"):
            assert classify(kernel, data[offset:]) == C["PROTOCOL_HTTP1"], offset


def h2_frames(data: bytes):
    """(offset, type, stream) of every frame after the optional preface."""
    pos = len(PREFACE) if data.startswith(PREFACE) else 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        stream = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        yield pos, data[pos + 3], stream
        pos += 9 + length


H2 = fixture_files("http2")


@pytest.mark.parametrize("name, data", H2, ids=[n for n, _ in H2])
def test_http2_fixtures_open_as_http2_and_their_control_frames_are_recognised(kernel, name,
                                                                             data):
    assert data.startswith(PREFACE) == name.endswith(".c2s.bin")
    assert classify(kernel, data) == C["PROTOCOL_HTTP2"]
    seen = 0
    for offset, kind, stream in h2_frames(data):
        frame = data[offset:offset + 9]
        # SETTINGS, PING and WINDOW_UPDATE always; HEADERS on a client stream.
        expected = kind in (4, 6, 8) or kind == 1 and stream % 2 == 1
        if kind == 1 and frame[4] & ~0x2D:
            expected = False
        assert kernel.is_http2_frame(frame, 9) == expected, (offset, kind)
        seen += expected
    assert seen


def pg_messages(data: bytes):
    """(offset, whole message) of a PostgreSQL client stream after its
    StartupMessage (and the SSLRequest before it, refused in the fixture)."""
    pos = 0
    while data[pos] == 0:
        pos += struct.unpack_from(">I", data, pos)[0]
    while pos + 5 <= len(data):
        total = 1 + struct.unpack_from(">I", data, pos + 1)[0]
        yield pos, data[pos:pos + total]
        pos += total


PG_CLIENT = [(n, d) for n, d in fixture_files("postgres") if ".client." in n]


def startup_message(first_name: bytes) -> bytes:
    body = struct.pack(">I", 0x00030000) + first_name + b"\0postgres\0database\0postgres\0\0"
    return struct.pack(">I", 4 + len(body)) + body


@pytest.mark.parametrize("first_name, sql", [
    (b"user", True),
    (b"application_name_of_the_client", True),     # past the 32 bytes classified: not read
    (b"GET \x80t_encoding", False),                 # found by the fuzz test below
    (b"us\xc3\xa9r", False),
    (b"", False),
    (b"abcdefghijklmnopqrstuv\x80", False),          # its last byte in the window
    (b"abcdefghijklmnopqrstuvwx\x80", True),         # beyond it
])
def test_a_startup_message_is_sql_on_both_sides_by_its_first_parameter_name(kernel, first_name,
                                                                          sql):
    data = startup_message(first_name)
    assert (classify(kernel, data) == C["PROTOCOL_POSTGRES"]) == sql
    assert looks_like_postgres_startup(data) == sql


@pytest.mark.parametrize("name, data", PG_CLIENT, ids=[n for n, _ in PG_CLIENT])
def test_postgres_client_streams_agree_message_by_message(kernel, name, data):
    startup = data[:struct.unpack_from(">I", data)[0]]
    assert looks_like_postgres_startup(startup)
    assert classify(kernel, startup) == C["PROTOCOL_POSTGRES"]
    recognised = 0
    for offset, message in pg_messages(data):
        # Each message as a syscall of its own: Query alone, Parse/Bind at
        # the head of the client's batch.
        if classify(kernel, message) == C["PROTOCOL_POSTGRES"]:
            assert looks_like_postgres_frontend(message), offset
            recognised += 1
    assert recognised


def mysql_packets(data: bytes):
    pos = 0
    while pos + 4 <= len(data):
        total = 4 + int.from_bytes(data[pos:pos + 3], "little")
        yield pos, data[pos:pos + total]
        pos += total


MYSQL = fixture_files("mysql")


@pytest.mark.parametrize("name, data", MYSQL, ids=[n for n, _ in MYSQL])
def test_mysql_streams_agree_packet_by_packet(kernel, name, data):
    packets = list(mysql_packets(data))
    if ".server." in name:
        greeting = packets[0][1]
        assert looks_like_mysql_handshake(greeting)
        assert classify(kernel, greeting) == C["PROTOCOL_MYSQL"]
        # A client that reads the payload apart from its header.
        assert looks_like_greeting_payload(greeting[4:])
        assert classify(kernel, greeting[4:]) == C["PROTOCOL_MYSQL"]
        return
    commands = 0
    for offset, packet in packets:
        if packet[3] == 0 and classify(kernel, packet) == C["PROTOCOL_MYSQL"]:
            assert looks_like_mysql_command(packet), offset
            commands += 1
    assert commands


def test_the_tail_rule_keeps_only_long_database_responses(kernel):
    tail = C["SQL_TAIL_BYTES"]
    for protocol in ("PROTOCOL_POSTGRES", "PROTOCOL_MYSQL"):
        assert kernel.sql_keeps_tail(C[protocol], 10_000, 2048)
        assert not kernel.sql_keeps_tail(C[protocol], 2048, 2048)
        assert not kernel.sql_keeps_tail(C[protocol], 10_000, 2 * tail)
    assert not kernel.sql_keeps_tail(C["PROTOCOL_HTTP1"], 10_000, 2048)


# ---- edited and random bytes ------------------------------------------------

OPENINGS = ([d[:struct.unpack_from(">I", d)[0]] for _, d in PG_CLIENT]
            + [m for _, d in PG_CLIENT for _, m in pg_messages(d)][:200]
            + [p for _, d in MYSQL for _, p in mysql_packets(d)][:300]
            + [d[:256] for _, d in HTTP1] + [d[:64] for _, d in H2])
TOKENS = st.sampled_from([b"GET ", b"HTTP/1.1 ", b"Q", b"P", b"B", b"\x00\x00\x00\x08",
                          b"\x04\xd2\x16\x2f", b"\x03", b"\x0a", b"5.7.", b"\x00", b"\xff",
                          b"SELECT 1", PREFACE[:8]])


@st.composite
def framed(draw) -> bytes:
    """Random bytes framed as a PostgreSQL message or a MySQL packet whose
    length fields fit: what gets past the kernel's length checks to its
    type and command checks."""
    kind, body = draw(st.integers(0, 255)), draw(st.binary(max_size=48))
    if draw(st.booleans()):
        return bytes([kind]) + (len(body) + 4).to_bytes(4, "big") + body
    payload = bytes([kind]) + body
    return len(payload).to_bytes(3, "little") + b"\0" + payload


@st.composite
def syscalls(draw):
    """(data, total): an edited fixture message, a framed message of any
    type, or random bytes, as the start of a syscall that moved total bytes
    (its own length, or more)."""
    source = draw(st.integers(0, 2))
    if source == 0:
        data = bytes(edit(draw, bytearray(draw(st.sampled_from(OPENINGS))), TOKENS))
    elif source == 1:
        data = draw(framed())
    else:
        data = draw(st.binary(max_size=64))
    return data, len(data) + draw(st.sampled_from([0, 0, 0, 1, 100]))


def userspace_accepts(protocol: int, data: bytes) -> bool:
    if protocol == C["PROTOCOL_POSTGRES"]:
        return looks_like_postgres_startup(data) or looks_like_postgres_frontend(data)
    if protocol == C["PROTOCOL_MYSQL"]:
        return (looks_like_mysql_handshake(data) or looks_like_greeting_payload(data)
                or looks_like_mysql_command(data))
    return True


@BUDGET
@given(syscalls())
def test_what_the_kernel_calls_sql_userspace_reads_as_sql(kernel, syscall):
    data, total = syscall
    protocol = classify(kernel, data, total)
    assert userspace_accepts(protocol, data), (protocol, data[:16])


@BUDGET
@given(syscalls())
def test_the_kernel_misses_no_http1_message_userspace_would_read(kernel, syscall):
    data, total = syscall
    known = data.split(b" ", 1)[0] in KERNEL_METHODS + (b"HTTP/1.0", b"HTTP/1.1")
    if known and (looks_like_request(data) or looks_like_response(data)):
        assert classify(kernel, data, total) == C["PROTOCOL_HTTP1"]


BODIES = (b"\0", b"SELECT 1\0", b"1", b"_stmt\0", b" x", b"\x05\0\0\0\0\0\0\0\0\0\0")


@pytest.mark.parametrize("kind", range(256))
def test_every_message_type_and_command_byte_the_kernel_takes_userspace_takes(kernel, kind):
    """Framing that fits, for every first byte: PostgreSQL's type byte, and
    MySQL's command byte."""
    for body in BODIES:
        message = bytes([kind]) + (len(body) + 4).to_bytes(4, "big") + body
        if classify(kernel, message) == C["PROTOCOL_POSTGRES"]:
            assert userspace_accepts(C["PROTOCOL_POSTGRES"], message), message
        payload = bytes([kind]) + body
        packet = len(payload).to_bytes(3, "little") + b"\0" + payload
        if classify(kernel, packet) == C["PROTOCOL_MYSQL"]:
            assert userspace_accepts(C["PROTOCOL_MYSQL"], packet), packet


# ---- Redis and memcached (bpf/cache_classify.h, after the others) ---------

@pytest.mark.parametrize("system, protocol", [("redis", "PROTOCOL_REDIS"),
                                              ("memcached", "PROTOCOL_MEMCACHED")])
def test_recorded_cache_conversations_open_as_their_protocol(kernel, system, protocol):
    """The first bytes each side of a recorded client connection sends
    classify it as that cache, whichever side the capture sees first."""
    files = dict(fixture_files(system))
    firsts = [name for name in files if name.endswith((".client.bin", ".server.bin"))]
    assert firsts
    for name in firsts:
        data = files[name]
        if system == "redis" and name.startswith("inline") and name.endswith(".client.bin"):
            continue    # inline commands are not recognised (what a person types)
        if system == "memcached" and name.startswith("text_socket.client"):
            continue    # starts with a malformed line on purpose
        assert classify(kernel, data) == C[protocol], name
