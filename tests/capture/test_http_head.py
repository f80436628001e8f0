"""The probes' HTTP/1.x head parser (bpf/http_head.h), compiled for the host
with cffi, against userspace's parser (agent/parsers/http1.py).

The property that matters: a head the kernel accepts (HTTP_HEAD_OK) is one
userspace parses to the same fields, so that an exchange record and the
payload path give the same span.  The kernel may refuse more than userspace
(it then names a fallback reason and the payload path takes over), but it
must accept the heads real clients and servers send.
"""
from __future__ import annotations


import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.capture import records
from agent.capture.exchange_records import traceparent_text
from agent.parsers import PARSED
from agent.parsers.http1 import parse_request, parse_response
from agent.parsers.tracecontext import traceparent_ids
from fuzzing import BUDGET, edit, fixture_files
from host_build import build_host_module

C = records.C

CDEF = """
#define HTTP_HEAD_SCAN_BYTES ...
struct http_head_parse { uint16_t status; uint8_t version_minor; uint8_t chunked; ...; };
uint8_t http_parse_head(const uint8_t *buf, uint32_t len, bool response,
                        struct http_request_head *r, struct http_head_parse *p);
"""

MESSAGES = [(n, d) for n, d in fixture_files("http1")
            if n not in ("tls_client_hello.bin", "h2_prior_knowledge.bin")]
# What real peers send and the probes must take themselves.
ACCEPTED = ("curl_get.bin", "curl_get_traceparent.bin", "curl_head.bin", "curl_post_form.bin",
            "python_get.bin", "urllib_get.bin", "wrk_get.bin", "nginx_static.bin",
            "nginx_404.bin", "nginx_head.bin", "nginx_304.bin")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    # The record layouts as userspace reads them, then the parser's entry.
    layouts = ("typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32;"
               " typedef uint64_t __u64;\n" + records._cdef_source(records.HEADER_PATH.read_text()))
    return build_host_module(tmp_path_factory, "_kernel_http_head", [layouts, CDEF], "http_head.h",
                             warnings=("-Wno-implicit-fallthrough",))


def kernel_parse(kernel, data: bytes, response: bool):
    """(verdict, request fields, parse state) of the kernel's parser."""
    r = kernel.ffi.new("struct http_request_head *")
    p = kernel.ffi.new("struct http_head_parse *")
    verdict = kernel.lib.http_parse_head(data, len(data), response, r, p)
    return verdict, r, p


def text(kernel, r, field: str) -> str:
    """A field's value decoded as userspace decodes it (trace context as
    latin-1, the rest as UTF-8 with replacement)."""
    off = 0 if field == "method" else getattr(r, field + "_off")
    raw = kernel.ffi.buffer(r.values)[off:off + getattr(r, field + "_len")]
    if field.startswith("trace"):
        return raw.decode("latin-1")
    return raw.decode("utf-8", "replace")


def optional(kernel, r, field: str, bit: int):
    return text(kernel, r, field) if r.present & bit else None


def traceparent(kernel, r):
    """The traceparent as userspace reads it from a record: decoded by the
    probes (HTTP_HAS_TRACE_IDS) or kept as text."""
    if r.present & C["HTTP_HAS_TRACE_IDS"]:
        return traceparent_text(kernel.ffi.buffer(r.trace_id)[:],
                                kernel.ffi.buffer(r.parent_id)[:], r.trace_flags)
    return optional(kernel, r, "traceparent", C["HTTP_HAS_TRACEPARENT"])


def assert_same_request(kernel, r, parsed):
    assert text(kernel, r, "method") == parsed.method
    assert text(kernel, r, "target") == parsed.target
    assert f"1.{r.version_minor}" == parsed.version
    assert optional(kernel, r, "host", C["HTTP_HAS_HOST"]) == parsed.host
    assert optional(kernel, r, "user_agent", C["HTTP_HAS_USER_AGENT"]) == parsed.user_agent
    assert traceparent(kernel, r) == parsed.traceparent
    assert optional(kernel, r, "tracestate", C["HTTP_HAS_TRACESTATE"]) == parsed.tracestate
    has_length = bool(r.present & C["HTTP_HAS_CONTENT_LENGTH"])
    assert (r.content_length if has_length else -1) == parsed.content_length
    assert r.header_bytes == parsed.header_bytes


def assert_same_response(kernel, r, p, parsed):
    assert p.status == parsed.status_code
    assert f"1.{p.version_minor}" == parsed.version
    has_length = bool(r.present & C["HTTP_HAS_CONTENT_LENGTH"])
    assert (r.content_length if has_length else -1) == parsed.content_length
    assert bool(p.chunked) == parsed.chunked
    assert r.header_bytes == parsed.header_bytes


def check_agrees(kernel, data: bytes):
    """A head the kernel accepts parses the same way in userspace."""
    response = data.startswith(b"HTTP/")
    verdict, r, p = kernel_parse(kernel, data, response)
    assert verdict < C["HTTP_FALLBACK_COUNT"]
    if verdict != C["HTTP_HEAD_OK"] or r.truncated:
        return verdict
    status, parsed, reason = (parse_response if response else parse_request)(data)
    assert status == PARSED, reason
    if response:
        assert_same_response(kernel, r, p, parsed)
    else:
        assert_same_request(kernel, r, parsed)
    return verdict


@pytest.mark.parametrize("name,data", MESSAGES, ids=[n for n, _ in MESSAGES])
def test_kernel_agrees_with_userspace_on_captured_heads(kernel, name, data):
    verdict = check_agrees(kernel, data)
    if name in ACCEPTED:
        assert verdict == C["HTTP_HEAD_OK"]


def test_traceparent_is_decoded_and_tracestate_split_out(kernel):
    data = dict(MESSAGES)["curl_get_traceparent.bin"]
    verdict, r, _ = kernel_parse(kernel, data, False)
    assert verdict == C["HTTP_HEAD_OK"]
    assert r.present & C["HTTP_HAS_TRACE_IDS"]
    assert not r.present & C["HTTP_HAS_TRACEPARENT"]
    assert kernel.ffi.buffer(r.trace_id)[:] == bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert kernel.ffi.buffer(r.parent_id)[:] == bytes.fromhex("00f067aa0ba902b7")
    assert r.trace_flags == 1
    assert text(kernel, r, "tracestate").startswith("congo=")


VALID_TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def request_with_traceparent(value: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + value + b"\r\n\r\n"


def check_traceparent(kernel, value: bytes):
    """The probes decode a traceparent exactly when it is version 00 and
    valid by the spec (userspace then reads the same ids); any other value
    they keep as text, which userspace judges."""
    verdict, r, _ = kernel_parse(kernel, request_with_traceparent(value), False)
    if verdict != C["HTTP_HEAD_OK"]:
        return None
    decoded = bool(r.present & C["HTTP_HAS_TRACE_IDS"])
    ids = traceparent_ids(value)
    assert decoded == (ids is not None and value[:2] == b"00"), value
    if decoded:
        assert ids == (kernel.ffi.buffer(r.trace_id)[:], kernel.ffi.buffer(r.parent_id)[:],
                       r.trace_flags)
    else:
        assert text(kernel, r, "traceparent").encode("latin-1") == value
    return decoded


@pytest.mark.parametrize("value,decoded", [
    (VALID_TRACEPARENT, True),
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", True),
    (VALID_TRACEPARENT.upper(), False),
    (b"01" + VALID_TRACEPARENT[2:], False),         # a later version: userspace's rules
    (b"ff" + VALID_TRACEPARENT[2:], False),
    (b"00-" + b"0" * 32 + VALID_TRACEPARENT[35:], False),
    (VALID_TRACEPARENT[:36] + b"0" * 16 + VALID_TRACEPARENT[52:], False),
    (VALID_TRACEPARENT[:53] + b"0g", False),
    (VALID_TRACEPARENT[:20] + b"G" + VALID_TRACEPARENT[21:], False),
    (VALID_TRACEPARENT[:35] + b"_" + VALID_TRACEPARENT[36:], False),
    (VALID_TRACEPARENT + b"-00", False),
    (VALID_TRACEPARENT[:54], False),
])
def test_only_a_valid_common_form_traceparent_is_decoded(kernel, value, decoded):
    assert check_traceparent(kernel, value) is decoded


@BUDGET
@given(st.data())
def test_edited_traceparents_are_decoded_only_when_userspace_reads_the_same_ids(kernel, data):
    value = bytearray(VALID_TRACEPARENT)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(value) - 1))
        value[at] = data.draw(st.sampled_from(b"0123456789abcdefABCDEFg-:\x80\x00 "))
    check_traceparent(kernel, bytes(value))


@pytest.mark.parametrize("data,reason", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n", "HTTP_FALLBACK_SPLIT_HEAD"),
    (b"GET / HTTP/1.1\nHost: a\n\n", "HTTP_FALLBACK_UNUSUAL_HEAD"),
    (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "HTTP_FALLBACK_UNUSUAL_HEAD"),
    (b"GET / HTTP/1.1\r\ntraceparent: a\r\ntraceparent: b\r\n\r\n",
     "HTTP_FALLBACK_UNUSUAL_HEAD"),
    (b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n", "HTTP_FALLBACK_UNUSUAL_HEAD"),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "HTTP_FALLBACK_UPGRADE"),
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", "HTTP_FALLBACK_UPGRADE"),
    (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
     "HTTP_FALLBACK_CONTINUE"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
     "HTTP_FALLBACK_REQUEST_BODY"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP_FALLBACK_RESPONSE_END"),
])
def test_uncertain_heads_name_their_fallback(kernel, data, reason):
    verdict, _, _ = kernel_parse(kernel, data, data.startswith(b"HTTP/"))
    assert verdict == C[reason]


@pytest.mark.parametrize("data", [
    # a value holding HT: the line's end is found past it
    b"GET / HTTP/1.1\r\nUser-Agent: a\tb\r\nHost: h\r\n\r\n",
    # names with token characters beyond letters, digits and '-'
    b"GET / HTTP/1.1\r\nX_Y.z: 1\r\nHost: h\r\n\r\n",
    # a target and a value longer than a step reads
    b"GET /" + b"p" * 150 + b" HTTP/1.1\r\nHost: h\r\ntraceparent: " + b"t" * 100 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 200 + b"\r\nContent-Length: 5\r\n\r\nhello",
])
def test_heads_that_take_the_parser_off_its_short_path_are_read_alike(kernel, data):
    assert check_agrees(kernel, data) == C["HTTP_HEAD_OK"]


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nUser\rAgent: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent\rLength: 5\r\n\r\nhello",
])
def test_a_cr_where_a_wanted_name_has_its_hyphen_is_no_name(kernel, data):
    """OR 0x20 turns CR into '-': a wanted name's compare must not."""
    verdict, _, _ = kernel_parse(kernel, data, data.startswith(b"HTTP/"))
    assert verdict == C["HTTP_FALLBACK_UNUSUAL_HEAD"]


def test_every_prefix_of_a_head_is_split(kernel):
    data = dict(MESSAGES)["curl_get_traceparent.bin"]
    _, parsed, _ = parse_request(data)
    for end in range(1, parsed.header_bytes):
        verdict, _, _ = kernel_parse(kernel, data[:end], False)
        assert verdict == C["HTTP_FALLBACK_SPLIT_HEAD"], end


def test_long_values_are_truncated_and_flagged(kernel):
    target = "/" + "a" * 400
    agent = "x" * 300
    data = f"GET {target} HTTP/1.1\r\nUser-Agent: {agent}\r\n\r\n".encode()
    verdict, r, _ = kernel_parse(kernel, data, False)
    assert verdict == C["HTTP_HEAD_OK"]
    assert r.truncated == C["HTTP_TRUNC_TARGET"] | C["HTTP_TRUNC_USER_AGENT"]
    assert text(kernel, r, "target") == target[:C["HTTP_TARGET_BYTES"]]
    assert text(kernel, r, "user_agent") == agent[:C["HTTP_USER_AGENT_BYTES"]]


INTERESTING = st.sampled_from([b"\r\n", b"\n", b" ", b":", b"\t", b"\r\n\r\n",
                               b"traceparent: ", b"Content-Length: 12", b"HTTP/1.1 ", b",",
                               b"Host: x", b"\x00", b"\xff"])


@BUDGET
@given(st.data())
def test_edited_heads_accepted_by_the_kernel_parse_the_same(kernel, data):
    name, raw = data.draw(st.sampled_from(MESSAGES))
    check_agrees(kernel, bytes(edit(data.draw, bytearray(raw), INTERESTING)))


@pytest.mark.parametrize("value,length", [(b"0", 0), (b"7", 7), (b"1234", 1234),
                                          (b"12345678", 12345678), (b"00000042", 42)])
def test_content_length_is_read_whole(kernel, value, length):
    data = b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n"
    verdict, r, _ = kernel_parse(kernel, data, True)
    assert verdict == C["HTTP_HEAD_OK"]
    assert r.content_length == length == parse_response(data)[1].content_length


@pytest.mark.parametrize("value", [b"123456789", b"12a", b"-1", b"1 2", b""])
def test_content_length_the_probes_do_not_read_goes_to_the_payload_path(kernel, value):
    data = b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n"
    verdict, _, _ = kernel_parse(kernel, data, True)
    assert verdict == C["HTTP_FALLBACK_UNUSUAL_HEAD"]
