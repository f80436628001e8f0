"""W3C Trace Context level 1 parsing, cases from the spec and its test suite."""
from __future__ import annotations

import pytest

from agent.parsers import INVALID, PARSED
from agent.parsers.tracecontext import parse_traceparent, parse_tracestate, traceparent_ids

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"
# Valid, and without a letter: the common form's shortcut passes it on.
ALL_DIGITS = "00-12345678901234567890123456789012-1234567890123456-01"


def test_valid_traceparent():
    assert parse_traceparent(VALID) == (
        PARSED, (bytes.fromhex(TRACE_ID), bytes.fromhex(PARENT_ID), 1), "")


def test_flags_and_surrounding_whitespace():
    status, (_, _, flags), _ = parse_traceparent(f" \t00-{TRACE_ID}-{PARENT_ID}-00 ")
    assert (status, flags) == (PARSED, 0)
    assert parse_traceparent(f"00-{TRACE_ID}-{PARENT_ID}-03")[1][2] == 3


def test_future_versions_forward_compatible():
    assert parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01")[0] == PARSED
    assert parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds")[0] == PARSED
    assert parse_traceparent(f"cc-{TRACE_ID}-{PARENT_ID}-01.extra")[0] == INVALID


@pytest.mark.parametrize("value, reason", [
    ("", "bad_length"),
    (VALID[:-1], "bad_length"),
    (VALID + "-", "bad_length"),
    (VALID + "0", "bad_length"),
    (f"ff-{TRACE_ID}-{PARENT_ID}-01", "bad_version"),
    (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", "bad_format"),
    (f"00-{TRACE_ID}-{PARENT_ID.upper()}-01", "bad_format"),
    (f"0G-{TRACE_ID}-{PARENT_ID}-01", "bad_format"),
    (f"00_{TRACE_ID}-{PARENT_ID}-01", "bad_format"),
    (f"00-{TRACE_ID}-{PARENT_ID}-0x", "bad_format"),
    (f"00-{TRACE_ID[:-1]} -{PARENT_ID}-01", "bad_format"),
    (f"00-{'0' * 32}-{PARENT_ID}-01", "zero_trace_id"),
    (f"00-{TRACE_ID}-{'0' * 16}-01", "zero_parent_id"),
    (f"00-{TRACE_ID}-{PARENT_ID}-01,00-{TRACE_ID}-{PARENT_ID}-01", "bad_length"),
    ("00-\u0664bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "bad_format"),
])
def test_invalid_traceparent(value, reason):
    assert parse_traceparent(value) == (INVALID, None, reason)


@pytest.mark.parametrize("value, expected", [
    ("congo=t61rcWkgMzE", "congo=t61rcWkgMzE"),
    ("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    (" a=1 ,\t, b=2 ,", "a=1,b=2"),
    ("", ""),
    (" , ", ""),
    ("tenant@vendor=x", "tenant@vendor=x"),
    ("1tenant@vendor=x", "1tenant@vendor=x"),
    ("a_b-c*d/e=value with spaces", "a_b-c*d/e=value with spaces"),
    ("k=" + "v" * 256, "k=" + "v" * 256),
    (",".join(f"k{i}=v" for i in range(32)), ",".join(f"k{i}=v" for i in range(32))),
])
def test_valid_tracestate(value, expected):
    assert parse_tracestate(value) == expected


@pytest.mark.parametrize("value", [
    "a=1,a=2",                                    # duplicate key
    ",".join(f"k{i}=v" for i in range(33)),      # more than 32 members
    "A=1",                                        # upper-case key
    "1a=1",                                       # simple key must start with a letter
    "a",                                          # no "="
    "a=",                                         # empty value
    "a=b=c",                                      # "=" in value
    "a=1 2,b=\x7f",                               # control character
    "a=" + "v" * 257,                             # value too long
    "k" * 257 + "=v",                             # key too long
    "t@" + "v" * 15 + "=x",                       # vendor part too long
    "t@1v=x",                                     # vendor must start with a letter
    "a=\u00e9",                                   # non-ASCII
])
def test_invalid_tracestate_is_dropped(value):
    assert parse_tracestate(value) is None


@pytest.mark.parametrize("value", [
    VALID, f"00-{TRACE_ID}-{PARENT_ID}-00", f" \t00-{TRACE_ID}-{PARENT_ID}-01 ",
    f"cc-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds", f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
    f"00-{'0' * 32}-{PARENT_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01", f"ff-{TRACE_ID}-{PARENT_ID}-01",
    f"00-{TRACE_ID}-{PARENT_ID}-0g", f"00-{TRACE_ID}-{PARENT_ID}-01-", f"00_{TRACE_ID}-{PARENT_ID}-01",
    f"00-{TRACE_ID}{PARENT_ID}--01", "", "00", ALL_DIGITS])
def test_captured_bytes_read_like_the_text(value):
    """traceparent_ids (exchange records' bytes) agrees with parse_traceparent."""
    status, ids, _ = parse_traceparent(value)
    assert traceparent_ids(value.encode()) == (ids if status == PARSED else None)
    if value == ALL_DIGITS:
        assert ids == (bytes.fromhex(ALL_DIGITS[3:35]), bytes.fromhex(ALL_DIGITS[36:52]), 1)
