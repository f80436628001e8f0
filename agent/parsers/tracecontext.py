"""W3C Trace Context level 1: the traceparent and tracestate header values.

https://www.w3.org/TR/trace-context/
"""
from __future__ import annotations

import re
from binascii import Error as BinasciiError, unhexlify

from agent.parsers import INVALID, PARSED

# Lowercase hex only: bytes.fromhex alone would also take upper case and
# spaces, which the spec rejects.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16
_ZERO_TRACE_BYTES = bytes(16)
_ZERO_PARENT_BYTES = bytes(8)
_OWS = " \t"
# A byte's value as a lowercase hex digit; 256 for any other byte.
_HEX_DIGIT = [int(chr(c), 16) if chr(c) in "0123456789abcdef" else 256 for c in range(256)]

_MAX_MEMBERS = 32
_KEY = re.compile(r"[a-z][a-z0-9_\-*/]{0,255}"
                  r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def parse_traceparent(value: str):
    """(PARSED, (trace_id, parent_id, flags), "") or (INVALID, None, reason)."""
    if len(value) == 55 and value[2] == value[35] == value[52] == "-":
        # The common form, read as traceparent_ids reads captured bytes.
        try:
            ids = _common_form_ids(value.encode("ascii"))
        except UnicodeEncodeError:
            ids = None
        if ids is not None:
            return PARSED, ids, ""
    return parse_traceparent_fully(value)


def parse_traceparent_fully(value: str):
    """parse_traceparent's answer by the spec's rules alone, without the
    shortcut for the common form."""
    value = value.strip(_OWS)
    if len(value) < 55:
        return INVALID, None, "bad_length"
    match = _TRACEPARENT.match(value)
    if match is None:
        return INVALID, None, "bad_format"
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff":
        return INVALID, None, "bad_version"
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        # A later version may append fields, always after a dash; version 00
        # has none.
        return INVALID, None, "bad_length"
    if trace_id == _ZERO_TRACE_ID:
        return INVALID, None, "zero_trace_id"
    if parent_id == _ZERO_PARENT_ID:
        return INVALID, None, "zero_parent_id"
    return PARSED, (bytes.fromhex(trace_id), bytes.fromhex(parent_id), int(flags, 16)), ""


def parse_tracestate(value: str):
    """The list with whitespace and empty members removed, "" when it has no
    members, or None when it is invalid (and must be dropped as a whole)."""
    members = []
    keys = set()
    for member in value.split(","):
        member = member.strip(_OWS)
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or key in keys or _KEY.fullmatch(key) is None \
                or _VALUE.fullmatch(val) is None:
            return None
        keys.add(key)
        members.append(member)
        if len(members) > _MAX_MEMBERS:
            return None
    return ",".join(members)


def traceparent_ids(raw: bytes):
    """(trace_id, parent_id, flags) of a traceparent value as captured, or
    None when invalid: parse_traceparent's answer, with the common form
    (version 00, 55 bytes of lowercase hex and dashes) read without a
    regex or a decode."""
    if len(raw) == 55 and raw[2] == raw[35] == raw[52] == 45:
        ids = _common_form_ids(raw)
        if ids is not None:
            return ids
    status, value, _ = parse_traceparent(raw.decode("latin-1"))
    return value if status == PARSED else None


def _common_form_ids(raw: bytes):
    """The ids of a valid version-00 value of 55 bytes with its dashes in
    place; None for anything else (parse_traceparent then says why).  A
    value with no letter at all fails islower() and takes the regex."""
    if raw[0] != 48 or raw[1] != 48 or not raw.islower():
        return None
    try:
        trace_id, parent_id = unhexlify(raw[3:35]), unhexlify(raw[36:52])
    except BinasciiError:
        return None
    flags = _HEX_DIGIT[raw[53]] << 4 | _HEX_DIGIT[raw[54]]
    if flags > 255 or trace_id == _ZERO_TRACE_BYTES or parent_id == _ZERO_PARENT_BYTES:
        return None
    return trace_id, parent_id, flags
