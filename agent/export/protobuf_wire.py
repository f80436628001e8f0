"""Protobuf wire format by hand: varints, length-delimited fields and the
OTLP common message (KeyValue, AnyValue), shared by the span and metric
encoders (agent/export/otlp_encode.py, agent/metrics/otlp_encode.py)."""
from __future__ import annotations

import struct


def varint(n: int) -> bytes:
    if n < 0:
        n &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement: always 10 bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Every length inside a span is far below this; a table index is cheaper than
# a call, and the rare larger value goes through varint().
VARINT_TABLE_SIZE = 4096
VARINTS = [varint(i) for i in range(VARINT_TABLE_SIZE)]


def ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (tag byte(s) already encoded)."""
    n = len(payload)
    return tag + (VARINTS[n] if n < VARINT_TABLE_SIZE else varint(n)) + payload


_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
DOUBLE = struct.Struct("<d")

# AnyValue fields.
ANY_STRING = b"\x0a"
_ANY_BOOL = b"\x10"
_ANY_INT = b"\x18"
_ANY_DOUBLE = b"\x21"
# KeyValue fields.
KV_KEY = b"\x0a"
KV_VALUE = b"\x12"


def any_value(value) -> bytes:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return _ANY_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return _ANY_INT + varint(value)
        # Does not fit int64: keep the digits rather than lose the attribute.
        return ld(ANY_STRING, str(value).encode())
    if isinstance(value, float):
        return _ANY_DOUBLE + DOUBLE.pack(value)
    # Lone surrogates (bytes decoded with surrogateescape) would make the
    # string invalid UTF-8 and the collector reject the whole request.
    return ld(ANY_STRING, str(value).encode("utf-8", "replace"))


def encode_key_value(tag: bytes, key: str, value) -> bytes:
    """One KeyValue as a `tag` field (Span.attributes is field 9,
    Resource.attributes field 1)."""
    return ld(tag, ld(KV_KEY, key.encode("utf-8", "replace")) + ld(KV_VALUE, any_value(value)))
