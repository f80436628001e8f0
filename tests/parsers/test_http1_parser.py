"""HTTP/1.x parser tests on bytes real clients and servers wrote.

The fixtures come from tests/fixtures/capture_http1.py; they hold the
ephemeral ports and dates of the run that captured them, so nothing here
depends on those.
"""
from __future__ import annotations

import os

import pytest

from agent.parsers import INVALID, NEED_MORE, PARSED
from agent.parsers.http1 import (
    ChunkedBody, HttpRequest, HttpResponse, looks_like_request, looks_like_response,
    parse_request, parse_response, response_has_body, split_target,
)

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "http1")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NOT_HTTP1 = ["tls_client_hello", "h2_prior_knowledge"]


def load(name: str) -> bytes:
    with open(os.path.join(FIXTURES, name + ".bin"), "rb") as f:
        return f.read()


def _names(starts_response: bool) -> list[str]:
    names = sorted(n[:-4] for n in os.listdir(FIXTURES) if n.endswith(".bin"))
    return [n for n in names if n not in NOT_HTTP1
            and load(n).startswith(b"HTTP/") == starts_response]


REQUESTS = _names(False)
RESPONSES = _names(True)


def head_length(data: bytes) -> int:
    return data.index(b"\r\n\r\n") + 4


def body_end(message, data: bytes, offset: int, method: str = "GET") -> int:
    """Where the body after a parsed head at offset ends (framing as a
    connection tracker does it)."""
    start = offset + message.header_bytes
    if isinstance(message, HttpResponse) and not response_has_body(method, message.status_code):
        return start
    if message.chunked:
        status, consumed = ChunkedBody().feed(data[start:])
        assert status == PARSED
        return start + consumed
    return start + max(message.content_length, 0) if isinstance(message, HttpRequest) \
        else start + (message.content_length if message.content_length >= 0
                      else len(data) - start)


def to_bare_lf(data: bytes) -> bytes:
    end = head_length(data)
    return data[:end].replace(b"\r\n", b"\n") + data[end:]


def test_fixtures_present():
    assert len(REQUESTS) >= 12 and len(RESPONSES) >= 9


# --- requests --------------------------------------------------------------

@pytest.mark.parametrize("name", REQUESTS)
def test_request_fixture_parses(name):
    data = load(name)
    status, request, reason = parse_request(data)
    assert (status, reason) == (PARSED, "")
    assert request.header_bytes == head_length(data)
    assert request.version in ("1.0", "1.1")
    assert request.host.startswith("127.0.0.1:")
    assert request.target.startswith("/")
    assert body_end(request, data, 0) <= len(data)


def test_curl_get():
    status, r, _ = parse_request(load("curl_get"))
    assert (r.method, r.target, r.version) == ("GET", "/", "1.1")
    assert r.user_agent.startswith("curl/")
    assert r.traceparent is None and r.tracestate is None
    assert (r.content_length, r.chunked, r.connection_close, r.expect_continue) == \
        (-1, False, False, False)


def test_curl_traceparent_and_tracestate():
    _, r, _ = parse_request(load("curl_get_traceparent"))
    assert r.target == "/api/items?id=7&token=s3cr3t"
    assert r.traceparent == TRACEPARENT
    assert r.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_curl_head():
    _, r, _ = parse_request(load("curl_head"))
    assert (r.method, r.target) == ("HEAD", "/index.html")


def test_curl_post_form_body_length():
    data = load("curl_post_form")
    _, r, _ = parse_request(data)
    assert r.method == "POST"
    assert r.content_length == len(data) - r.header_bytes == 26


@pytest.mark.parametrize("name", ["curl_post_chunked", "http_client_chunked"])
def test_chunked_uploads(name):
    data = load(name)
    _, r, _ = parse_request(data)
    assert r.chunked and r.content_length == -1
    status, consumed = ChunkedBody().feed(data[r.header_bytes:])
    assert (status, consumed) == (PARSED, len(data) - r.header_bytes)


def test_python_clients():
    _, r, _ = parse_request(load("urllib_get"))
    assert r.user_agent.startswith("Python-urllib/")
    assert r.connection_close
    data = load("http_client_post")
    _, r, _ = parse_request(data)
    assert (r.method, r.user_agent, r.traceparent) == ("POST", None, TRACEPARENT)
    assert r.content_length == len(data) - r.header_bytes


def test_wrk():
    _, r, _ = parse_request(load("wrk_get"))
    assert (r.method, r.target, r.user_agent) == ("GET", "/bench", None)


def test_nginx_upstream_requests():
    _, r, _ = parse_request(load("nginx_upstream_get"))
    # proxy_pass speaks HTTP/1.0 with Connection: close and forwards
    # the client's traceparent unchanged.
    assert (r.version, r.connection_close, r.traceparent) == ("1.0", True, TRACEPARENT)
    assert r.target == "/proxy/orders?limit=5"
    data = load("nginx_upstream_post")
    _, r, _ = parse_request(data)
    # nginx buffered curl's chunked upload and re-sent it with a length.
    assert (r.chunked, r.content_length) == (False, len(data) - r.header_bytes)
    _, r, _ = parse_request(load("nginx_upstream_keepalive"))
    assert (r.version, r.connection_close) == ("1.1", False)


# --- responses -------------------------------------------------------------

@pytest.mark.parametrize("name", RESPONSES)
def test_response_fixture_parses(name):
    data = load(name)
    status, response, reason = parse_response(data)
    assert (status, reason) == (PARSED, "")
    assert response.header_bytes == head_length(data)


@pytest.mark.parametrize("name, version, code, length, close", [
    ("nginx_static", "1.1", 200, 56, False),
    ("nginx_404", "1.1", 404, 153, False),
    ("python_get", "1.0", 200, 56, True),
    ("python_404", "1.0", 404, 335, True),
])
def test_content_length_responses(name, version, code, length, close):
    data = load(name)
    _, r, _ = parse_response(data)
    assert (r.version, r.status_code, r.content_length, r.chunked, r.connection_close) == \
        (version, code, length, False, close)
    assert len(data) - r.header_bytes == length


@pytest.mark.parametrize("name", ["nginx_head", "python_head"])
def test_head_responses_have_no_body(name):
    data = load(name)
    _, r, _ = parse_response(data)
    assert r.content_length == 56 and r.header_bytes == len(data)
    assert not response_has_body("HEAD", r.status_code)


def test_not_modified_has_no_body():
    data = load("nginx_304")
    _, r, _ = parse_response(data)
    assert r.status_code == 304 and r.header_bytes == len(data)
    assert not response_has_body("GET", 304)


@pytest.mark.parametrize("name", ["nginx_gzip_chunked", "python_chunked"])
def test_chunked_responses(name):
    data = load(name)
    _, r, _ = parse_response(data)
    assert r.chunked and r.status_code == 200
    status, consumed = ChunkedBody().feed(data[r.header_bytes:])
    assert (status, consumed) == (PARSED, len(data) - r.header_bytes)


def test_interim_100_continue_then_final():
    data = load("python_100_continue")
    status, interim, _ = parse_response(data)
    assert (status, interim.status_code) == (PARSED, 100)
    assert not response_has_body("POST", 100)
    status, final, _ = parse_response(data[interim.header_bytes:])
    assert (status, final.status_code, final.content_length) == (PARSED, 201, 17)
    assert interim.header_bytes + final.header_bytes + 17 == len(data)


# --- truncations, splits, pipelining, bare LF -------------------------------

def _parser(name):
    return parse_response if name in RESPONSES else parse_request


@pytest.mark.parametrize("name", REQUESTS + RESPONSES)
def test_every_truncation_needs_more(name):
    data = load(name)
    parse = _parser(name)
    end = head_length(data)
    for i in range(end):
        assert parse(data[:i]) == (NEED_MORE, None, ""), i
    for i in range(end, len(data) + 1):
        status, message, _ = parse(data[:i])
        assert status == PARSED and message.header_bytes == end


@pytest.mark.parametrize("name", REQUESTS + RESPONSES)
def test_split_at_every_offset_accumulates(name):
    # What a connection tracker does: keep the NEED_MORE bytes, append the
    # next event's bytes, parse again.
    data = load(name)
    parse = _parser(name)
    expected = parse(data)[1]
    for i in range(1, len(data)):
        first = parse(data[:i])
        buf = data[:i] if first[0] == NEED_MORE else b""
        if first[0] == PARSED:
            assert first[1].header_bytes == expected.header_bytes
            continue
        status, message, _ = parse(buf + data[i:])
        assert status == PARSED
        assert [getattr(message, s) for s in message.__slots__] == \
            [getattr(expected, s) for s in expected.__slots__]


def test_wrk_keepalive_stream():
    data = load("wrk_keepalive_x3")
    offset, seen = 0, []
    while offset < len(data):
        status, r, _ = parse_request(data[offset:])
        assert status == PARSED
        seen.append((r.method, r.target))
        offset = body_end(r, data, offset)
    assert seen == [("GET", "/bench")] * 3


def test_pipelined_requests_with_bodies():
    names = ["curl_post_form", "curl_get", "curl_post_chunked", "http_client_chunked",
             "nginx_upstream_post", "urllib_get"]
    data = b"".join(load(n) for n in names)
    offset, methods = 0, []
    while offset < len(data):
        status, r, _ = parse_request(data[offset:])
        assert status == PARSED
        methods.append(r.method)
        offset = body_end(r, data, offset)
    assert offset == len(data)
    assert methods == [parse_request(load(n))[1].method for n in names]


def test_pipelined_responses():
    names = ["nginx_static", "nginx_gzip_chunked", "nginx_304", "python_chunked", "nginx_404"]
    data = b"".join(load(n) for n in names)
    offset, codes = 0, []
    while offset < len(data):
        status, r, _ = parse_response(data[offset:])
        assert status == PARSED
        codes.append(r.status_code)
        offset = body_end(r, data, offset)
    assert codes == [200, 200, 304, 200, 404]


@pytest.mark.parametrize("name", REQUESTS + RESPONSES)
def test_bare_lf_variant(name):
    data = load(name)
    parse = _parser(name)
    crlf = parse(data)[1]
    lf_data = to_bare_lf(data)
    status, lf, _ = parse(lf_data)
    assert status == PARSED
    assert lf.header_bytes == head_length(data) - data[:head_length(data)].count(b"\r\n")
    for slot in crlf.__slots__:
        if slot != "header_bytes":
            assert getattr(lf, slot) == getattr(crlf, slot), slot
    for i in range(lf.header_bytes):
        assert parse(lf_data[:i])[0] == NEED_MORE


def test_mixed_line_ends():
    data = load("curl_get_traceparent")
    end = head_length(data)
    lines = data[:end - 4].split(b"\r\n")
    mixed = b"".join(line + (b"\n" if i % 2 else b"\r\n") for i, line in enumerate(lines)) + b"\n"
    status, r, _ = parse_request(mixed + b"body")
    assert status == PARSED and r.header_bytes == len(mixed)
    assert r.traceparent == TRACEPARENT
    # A bare LF blank line ends the head even when a CRLFCRLF follows.
    status, r, _ = parse_request(b"GET / HTTP/1.1\r\nHost: a\n\nX\r\n\r\n")
    assert (status, r.header_bytes) == (PARSED, 25)


def test_leading_empty_line_is_skipped():
    data = load("curl_get")
    for prefix in (b"\r\n", b"\n"):
        status, r, _ = parse_request(prefix + data)
        assert status == PARSED and r.header_bytes == len(prefix) + len(data)
    assert parse_request(b"\r")[0] == NEED_MORE
    assert parse_request(b"\r\n\r\n" + data)[0] == INVALID


# --- invalid input -----------------------------------------------------------

@pytest.mark.parametrize("name, reason, within", [
    ("tls_client_hello", "bad_method", 1),
    ("h2_prior_knowledge", "bad_version", 14),
])
def test_real_non_http1_bytes_rejected_early(name, reason, within):
    data = load(name)
    assert parse_request(data)[::2] == (INVALID, reason)
    assert parse_request(data[:within])[0] == INVALID
    assert parse_response(data[:6])[0] == INVALID
    assert not looks_like_request(data) and not looks_like_response(data)


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02", b"{\"json\": true}", b"SSH-2.0-OpenSSH_9.2p1\r\n", b"hello world\r\n",
    b"GET\t/ HTTP/1.1\r\n", b"GET  / HTTP/1.1\r\n", b"GET / HTTP/2.0\r\n", b"GET / FTP/1.1",
    b"GET /a b HTTP/1.1\r\n", b"AVERYVERYLONGMETHODNAMEXYZ ",
])
def test_garbage_is_invalid_early(garbage):
    assert parse_request(garbage)[0] == INVALID


@pytest.mark.parametrize("garbage", [
    b"\x16\x03", b"GET / HTTP/1.1\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1 20x", b"HTTP/1.1 099 X\r\n",
    b"HTTP/1.1 2000 OK\r\n", b"HTTP/1.1  200 OK", b"HTTPS/1.1",
])
def test_response_garbage_is_invalid_early(garbage):
    assert parse_response(garbage)[0] == INVALID


@pytest.mark.parametrize("head, reason", [
    (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\n: a\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n", "bad_content_length"),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "bad_content_length"),
    (b"GET / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", "bad_content_length"),
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n", "bad_content_length"),
    (b"GET / HTTP/1.1\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n", "bad_content_length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "bad_transfer_encoding"),
    (b"GET / HTTP/1.1 \r\n\r\n", "bad_request_line"),
    (b"GET / HTTP/1.10\r\n\r\n", "bad_version"),
    (b"GET\r\n\r\n", "bad_request_line"),
    (b"G@T / HTTP/1.1\r\n\r\n", "bad_method"),
])
def test_invalid_request_heads(head, reason):
    assert parse_request(head) == (INVALID, None, reason)
    # Detected as soon as the offending line is complete.
    first_bad_line_end = head.index(b"\r\n", head.index(b"\r\n") + 2 if reason.startswith(
        ("bad_header", "bad_content")) else 0) + 2
    if not reason.startswith(("bad_content", "bad_transfer")):
        assert parse_request(head[:first_bad_line_end])[0] == INVALID


@pytest.mark.parametrize("head, reason", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad_content_length"),
    (b"HTTP/1.1 200 OK\r\nServer\r\n\r\n", "bad_header"),
    (b"HTTP/1.2 2 OK\r\n\r\n", "bad_status_line"),
    (b"HTTP/3.0 200 OK\r\n\r\n", "bad_version"),
])
def test_invalid_response_heads(head, reason):
    assert parse_response(head) == (INVALID, None, reason)


def test_header_too_large():
    big = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20000
    assert parse_request(big) == (INVALID, None, "header_too_large")
    assert parse_request(big + b"\r\n\r\n") == (INVALID, None, "header_too_large")
    data = load("curl_get")
    assert parse_request(data, max_header_bytes=len(data))[0] == PARSED
    assert parse_request(data, max_header_bytes=len(data) - 1)[2] == "header_too_large"
    data = load("nginx_static")
    assert parse_response(data, max_header_bytes=100)[2] == "header_too_large"


# --- lenient where real peers are ------------------------------------------

def test_field_value_whitespace_and_case():
    data = (b"GET / HTTP/1.1\r\nHOST:   example.com \t\r\nuser-agent:x\r\n"
            b"content-length: 7, 7\r\nTransfer-Encoding: gzip, Chunked\r\n"
            b"Connection: Keep-Alive, Close\r\nExpect: 100-Continue\r\n\r\n")
    status, r, _ = parse_request(data)
    assert status == PARSED
    assert (r.host, r.user_agent, r.content_length, r.chunked, r.connection_close,
            r.expect_continue) == ("example.com", "x", 7, True, True, True)


def test_obs_fold_and_leading_whitespace_lines_are_skipped():
    data = b"GET / HTTP/1.1\r\n folded-first\r\nHost: a\r\nX-Long: one\r\n\ttwo\r\n\r\n"
    status, r, _ = parse_request(data)
    assert (status, r.host) == (PARSED, "a")


def test_methods_are_any_token():
    for method in (b"PURGE", b"get", b"M-SEARCH", b"PROPFIND"):
        status, r, _ = parse_request(method + b" * HTTP/1.1\r\n\r\n")
        assert (status, r.method, r.target) == (PARSED, method.decode(), "*")


def test_raw_utf8_target_and_absolute_form():
    status, r, _ = parse_request("GET /caf\u00e9?q=\u00fc HTTP/1.1\r\n\r\n".encode())
    assert (status, r.target) == (PARSED, "/caf\u00e9?q=\u00fc")
    status, r, _ = parse_request(b"GET http://example.com:8080/a?b=1 HTTP/1.1\r\n\r\n")
    assert r.target == "http://example.com:8080/a?b=1"


def test_repeated_trace_headers_combine():
    data = (b"GET / HTTP/1.1\r\ntraceparent: a\r\ntracestate: x=1\r\n"
            b"traceparent: b\r\ntracestate: y=2\r\n\r\n")
    _, r, _ = parse_request(data)
    assert (r.traceparent, r.tracestate) == ("a,b", "x=1,y=2")


def test_response_without_reason_phrase_and_minor_versions():
    status, r, _ = parse_response(b"HTTP/1.1 204\r\n\r\n")
    assert (status, r.status_code) == (PARSED, 204)
    status, r, _ = parse_response(b"HTTP/1.1 200 \r\nTransfer-Encoding: gzip\r\n\r\n")
    assert (status, r.chunked, r.content_length) == (PARSED, False, -1)
    status, r, _ = parse_response(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n")
    assert (r.version, r.connection_close) == ("1.0", False)


# --- helpers -----------------------------------------------------------------

@pytest.mark.parametrize("method, code, has_body", [
    ("GET", 200, True), ("HEAD", 200, False), ("GET", 101, False), ("GET", 100, False),
    ("POST", 204, False), ("GET", 304, False), ("GET", 404, True), ("DELETE", 500, True),
])
def test_response_has_body(method, code, has_body):
    assert response_has_body(method, code) is has_body


@pytest.mark.parametrize("name", REQUESTS)
def test_looks_like_request_on_fixtures(name):
    data = load(name)
    assert looks_like_request(data) and not looks_like_response(data)
    r = parse_request(data)[1]
    assert not looks_like_request(data[r.header_bytes:]) or name == "wrk_keepalive_x3"


@pytest.mark.parametrize("name", RESPONSES)
def test_looks_like_response_on_fixtures(name):
    data = load(name)
    assert looks_like_response(data) and not looks_like_request(data)
    r = parse_response(data)[1]
    assert not looks_like_response(data[r.header_bytes:]) or name == "python_100_continue"


def test_looks_like_rejects_mid_stream_bytes():
    for data in (b"", b"GET", b"line one\nline two", b"The quick brown fox", b"0\r\n\r\n",
                 b"HTTP/1.1", b"HTTP/1.1 2", b"get / HTTP/1.1\r\n"):
        assert not looks_like_request(data) and not looks_like_response(data)
    assert looks_like_request(b"CONNECT example.com:443 HTTP/1.1\r\n")
    assert not looks_like_request(b"CONNECT example.com:443 HTTP/1.1")


@pytest.mark.parametrize("target, expected", [
    ("/", ("/", None)),
    ("/a/b?x=1&y=2", ("/a/b", "x=1&y=2")),
    ("/a?", ("/a", "")),
    ("/a?b?c", ("/a", "b?c")),
    ("http://example.com:8080/p?q=1", ("/p", "q=1")),
    ("https://example.com", ("/", None)),
    ("http://example.com?q=1", ("/", "q=1")),
    ("http://user:pw@example.com/p", ("/p", None)),
    ("*", ("*", None)),
    ("example.com:443", ("example.com:443", None)),
])
def test_split_target(target, expected):
    assert split_target(target) == expected


# --- chunked bodies ------------------------------------------------------------

CHUNKED_BODIES = ["curl_post_chunked", "http_client_chunked", "nginx_gzip_chunked",
                  "python_chunked"]


def _body(name: str) -> bytes:
    data = load(name)
    parse = _parser(name)
    return data[parse(data)[1].header_bytes:]


@pytest.mark.parametrize("name", CHUNKED_BODIES)
def test_chunked_byte_by_byte(name):
    body = _body(name)
    scanner = ChunkedBody()
    for i in range(len(body) - 1):
        assert scanner.feed(body[i:i + 1]) == (NEED_MORE, 1), i
    assert scanner.feed(body[-1:]) == (PARSED, 1)
    assert scanner.feed(b"more") == (PARSED, 0)


@pytest.mark.parametrize("name", CHUNKED_BODIES)
def test_chunked_every_split_and_following_bytes(name):
    body = _body(name)
    following = b"HTTP/1.1 200 OK\r\n\r\n"
    for i in range(len(body) + 1):
        scanner = ChunkedBody()
        first = scanner.feed(body[:i])
        if i < len(body):
            assert first == (NEED_MORE, i)
            assert scanner.feed(body[i:] + following) == (PARSED, len(body) - i)
        else:
            assert first == (PARSED, len(body))


@pytest.mark.parametrize("name", CHUNKED_BODIES)
def test_chunked_bare_lf(name):
    body = _body(name)
    # Re-frame the same chunks with bare LF line ends.
    scanner, pos, lf_body = ChunkedBody(), 0, b""
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";")[0], 16)
        lf_body += body[pos:line_end] + b"\n" + body[line_end + 2:line_end + 2 + size]
        pos = line_end + 2 + size
        if size == 0:
            lf_body += body[pos:].replace(b"\r\n", b"\n")
            break
        lf_body += b"\n"
        pos += 2
    assert scanner.feed(lf_body) == (PARSED, len(lf_body))


@pytest.mark.parametrize("body, status", [
    (b"5;name=value;other\r\nhello\r\n0\r\n\r\n", PARSED),
    (b"5 ; name=\"q\"\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", PARSED),
    (b"0000000000000005\r\nhello\r\n0\r\n\r\n", PARSED),
    (b"zz\r\n", INVALID),
    (b"\r\n", INVALID),
    (b"-5\r\n", INVALID),
    (b"00000000000000005\r\n", INVALID),
    (b"5\r\nhelloXX", INVALID),
    (b"5\r\nhello\rX", INVALID),
    (b"5x", INVALID),
    (b"5;" + b"e" * 5000, INVALID),
    (b"5", NEED_MORE),
    (b"5\r\nhel", NEED_MORE),
    (b"0\r\nTrailer: x\r\n", NEED_MORE),
])
def test_chunked_edge_cases(body, status):
    assert ChunkedBody().feed(body)[0] == status
    scanner = ChunkedBody()
    statuses = [scanner.feed(body[i:i + 1])[0] for i in range(len(body))]
    # Byte by byte, an error may show before the line is complete; after
    # it the scanner stays failed.
    first_final = next((s for s in statuses if s != NEED_MORE), NEED_MORE)
    assert first_final == status
    if status == INVALID:
        assert scanner.feed(b"0\r\n\r\n") == (INVALID, 0)
