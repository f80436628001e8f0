"""The span record every stage after parsing works with.

Spans are built from captured data (ids and times come from the wire and the
kernel), so they are plain records here rather than SDK spans: the fast OTLP
encoder reads them directly, and the SDK path converts them to ReadableSpan.
"""
from __future__ import annotations

import random
from operator import attrgetter
from typing import NamedTuple

# OTLP SpanKind values (opentelemetry/proto/trace/v1/trace.proto).
KIND_SERVER = 2
KIND_CLIENT = 3
KIND_NAMES = {KIND_SERVER: "SERVER", KIND_CLIENT: "CLIENT"}

# OTLP Status.StatusCode values.
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2
STATUS_NAMES = {STATUS_UNSET: "UNSET", STATUS_OK: "OK", STATUS_ERROR: "ERROR"}

_random_bits = random.getrandbits


def _nonzero_bits(bits: int) -> int:
    while True:
        value = _random_bits(bits)
        if value:
            return value


def new_span_id() -> bytes:
    """A random non-zero 8-byte span id."""
    return (_random_bits(64) or _nonzero_bits(64)).to_bytes(8, "big")


def new_trace_id() -> bytes:
    """A random non-zero 16-byte trace id."""
    return (_random_bits(128) or _nonzero_bits(128)).to_bytes(16, "big")


class Span:
    """One finished span.

    attributes: list of (key, value) pairs; value is str, int, float or bool.
    resource: the traced process's Resource (agent.spans.resources.ProcessResource).
    parent_span_id: b"" for a root span.
    """

    __slots__ = (
        "trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind",
        "start_ns", "end_ns", "status_code", "status_message", "attributes",
        "resource", "trace_flags",
    )

    def __init__(self, trace_id: bytes, span_id: bytes, parent_span_id: bytes,
                 name: str, kind: int, start_ns: int, end_ns: int,
                 attributes: list, resource, status_code: int = STATUS_UNSET,
                 status_message: str = "", trace_state: str = "",
                 trace_flags: int = 1):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.trace_state = trace_state
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.status_code = status_code
        self.status_message = status_message
        self.attributes = attributes
        self.resource = resource
        self.trace_flags = trace_flags

    def attribute(self, key: str, default=None):
        for k, v in self.attributes:
            if k == key:
                return v
        return default

    def __repr__(self) -> str:
        return (f"Span({self.name!r}, kind={KIND_NAMES.get(self.kind, self.kind)}, "
                f"trace={self.trace_id.hex()}, id={self.span_id.hex()}, "
                f"parent={self.parent_span_id.hex() or '-'})")


# The fields every exchange (agent/spans/http.py, grpc.py, db.py) starts
# with: its kind tag and what the linker decided; and the peers it ends with.
EXCHANGE_HEAD = [("tag", str), ("kind", int), ("pid", int), ("trace_id", bytes),
                 ("span_id", bytes), ("parent_id", bytes), ("flags", int), ("trace_state", str),
                 ("start_ns", int), ("end_ns", int)]     # CLOCK_MONOTONIC
# remote_*: the address the socket names (a client's: what it asked for, a
# Service address perhaps); peer_*: the socket that answered, the same
# unless NAT translated the connection (agent/capture/conntrack.py).
EXCHANGE_PEERS = [("local_addr", str), ("local_port", int), ("remote_addr", str),
                  ("remote_port", int), ("peer_addr", str), ("peer_port", int)]


class SpanTemplate:
    """What spans of one shape share: name, kind, attributes and status
    depend only on a request's fields and its connection's, so they are
    built once per distinct combination (agent/spans/http_records.py).
    `encoded`, `metric` and `red` are cache slots the OTLP encoder and the
    request metrics fill with their own form; `redactions` are the (rule, count)
    redactions building it made, counted again for each span of the shape.
    Nothing may change a template's attributes: spans share them."""

    __slots__ = ("name", "kind", "attributes", "status_code", "status_message", "redactions",
                 "encoded", "metric", "red")

    def __init__(self, name: str, kind: int, attributes: list, status_code: int,
                 status_message: str, redactions: tuple = ()):
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.status_code = status_code
        self.status_message = status_message
        self.redactions = redactions
        self.encoded = None
        self.metric = None
        self.red = None


class TemplatedSpan(NamedTuple):
    """A finished span as a tuple: its ids, times and resource, and its
    shape's template.  Reads like Span (the sampler, the SDK and console
    sinks use the same names); ids are full length (16 and 8 bytes)."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    trace_state: str
    start_ns: int
    end_ns: int
    trace_flags: int
    resource: object
    template: SpanTemplate

    attribute = Span.attribute

    def __repr__(self) -> str:
        return Span.__repr__(self)


# What a TemplatedSpan reads from its template, under Span's names.
for _name in ("name", "kind", "attributes", "status_code", "status_message"):
    setattr(TemplatedSpan, _name, property(attrgetter("template." + _name)))
