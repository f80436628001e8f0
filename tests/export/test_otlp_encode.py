"""The hand-written encoder against protobuf's own decoder and the SDK path."""
from __future__ import annotations

import os
import struct
import sys

# The repository root, so `agent` imports without an installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pytest  # noqa: E402
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent import DISTRO_NAME, __version__
from agent.export import otlp_encode
from agent.export.otlp_encode import encode_export_request
from agent.export.sdk import SdkConverter
from agent.spans.resources import ProcessResource
from agent.spans.model import (KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK, STATUS_UNSET,
                         Span, new_span_id, new_trace_id)

HAS_IS_REMOTE = 0x100
IS_REMOTE = 0x200


def resource(pid=42, service="checkout", extra=()):
    return ProcessResource(pid, [("service.name", service), ("process.pid", pid),
                                 ("host.name", "node-1"), *extra])


def span(res, name="GET /x", kind=KIND_SERVER, attributes=None, parent=b"", **kw):
    start = kw.pop("start_ns", 1_700_000_000_123_456_789)
    return Span(new_trace_id(), new_span_id(), parent, name, kind, start,
                kw.pop("end_ns", start + 1_500_000), attributes if attributes is not None else [],
                res, **kw)


def decode(spans):
    return ExportTraceServiceRequest.FromString(encode_export_request(spans))


def value_of(any_value):
    field = any_value.WhichOneof("value")
    return None if field is None else getattr(any_value, field)


def attrs_of(key_values):
    return [(kv.key, value_of(kv.value)) for kv in key_values]


def test_every_span_field():
    res = resource()
    parent = new_span_id()
    s = span(res, name="POST /orders", kind=KIND_CLIENT, parent=parent,
             attributes=[("http.request.method", "POST"), ("http.response.status_code", 503)],
             status_code=STATUS_ERROR, status_message="upstream unavailable",
             trace_state="vendor=abc,other=1", trace_flags=1)
    request = decode([s])
    assert len(request.resource_spans) == 1
    rs = request.resource_spans[0]
    assert attrs_of(rs.resource.attributes) == res.attributes
    assert len(rs.scope_spans) == 1
    assert rs.scope_spans[0].scope.name == DISTRO_NAME == "otel-ebpf"
    assert rs.scope_spans[0].scope.version == __version__
    (p,) = rs.scope_spans[0].spans
    assert p.trace_id == s.trace_id
    assert p.span_id == s.span_id
    assert p.parent_span_id == parent
    assert p.trace_state == "vendor=abc,other=1"
    assert p.name == "POST /orders"
    assert p.kind == KIND_CLIENT
    assert p.start_time_unix_nano == s.start_ns
    assert p.end_time_unix_nano == s.end_ns
    assert attrs_of(p.attributes) == s.attributes
    assert p.status.code == STATUS_ERROR
    assert p.status.message == "upstream unavailable"
    assert p.flags == 0x01 | HAS_IS_REMOTE | IS_REMOTE
    assert not p.events and not p.links and p.dropped_attributes_count == 0


def test_root_span_flags_and_no_parent():
    (p,) = decode([span(resource(), trace_flags=0)]).resource_spans[0].scope_spans[0].spans
    assert p.parent_span_id == b""
    assert p.flags == HAS_IS_REMOTE  # parent known to be not remote: there is none
    assert p.status.code == STATUS_UNSET and p.status.message == ""
    assert p.HasField("status")


def test_attribute_value_types():
    attributes = [
        ("str", "plain"), ("empty", ""), ("unicode", "caf\u00e9 \u65e5\u672c \U0001f680"),
        ("long", "x" * 5000), ("zero", 0), ("one", 1), ("neg", -1), ("neg_big", -(2 ** 63)),
        ("big", 2 ** 63 - 1), ("port", 8080), ("float", 3.25), ("neg_float", -0.001),
        ("float_zero", 0.0), ("inf", float("inf")), ("true", True), ("false", False),
        ("\u00fcnicode.key", "v"),
    ]
    (p,) = decode([span(resource(), attributes=attributes)]).resource_spans[0].scope_spans[0].spans
    decoded = attrs_of(p.attributes)
    assert decoded == attributes
    # bool must not come back as int, nor int as float.
    assert [type(v) for _, v in decoded] == [type(v) for _, v in attributes]
    oneofs = {kv.key: kv.value.WhichOneof("value") for kv in p.attributes}
    assert oneofs["true"] == oneofs["false"] == "bool_value"
    assert oneofs["zero"] == oneofs["neg"] == "int_value"
    assert oneofs["float_zero"] == "double_value"
    assert oneofs["empty"] == "string_value"


def test_bool_int_float_do_not_share_cache_entries():
    res = resource()
    order = [("k", 1), ("k", True), ("k", 1.0), ("k", "1"), ("k", 1), ("k", True)]
    spans = [span(res, attributes=[pair]) for pair in order]
    decoded = [attrs_of(p.attributes)[0]
               for p in decode(spans).resource_spans[0].scope_spans[0].spans]
    assert [(k, v, type(v)) for k, v in decoded] == [(k, v, type(v)) for k, v in order]


def test_lone_surrogates_still_make_valid_utf8():
    raw = b"/caf\xe9".decode("utf-8", "surrogateescape")
    s = span(resource(), name=raw, attributes=[("url.path", raw), (raw, 1)])
    (p,) = decode([s]).resource_spans[0].scope_spans[0].spans
    assert p.name == "/caf?"
    assert attrs_of(p.attributes) == [("url.path", "/caf?"), ("/caf?", 1)]


def test_int_beyond_int64_is_kept_as_digits():
    (p,) = decode([span(resource(), attributes=[("huge", 2 ** 70)])]) \
        .resource_spans[0].scope_spans[0].spans
    assert attrs_of(p.attributes) == [("huge", str(2 ** 70))]


def test_empty_attributes_and_unicode_names():
    res = resource(service="s\u00e9rvice \u2603")
    s = span(res, name="\u65e5\u672c GET /caf\u00e9", attributes=[])
    rs = decode([s]).resource_spans[0]
    assert attrs_of(rs.resource.attributes)[0] == ("service.name", "s\u00e9rvice \u2603")
    (p,) = rs.scope_spans[0].spans
    assert p.name == s.name and len(p.attributes) == 0


def test_large_times_and_lengths_over_one_varint_byte():
    res = resource(extra=[("big.attr", "y" * 20000)])
    s = span(res, start_ns=2 ** 64 - 2, end_ns=2 ** 64 - 1,
             attributes=[(f"k{i}", "v" * 100) for i in range(200)])
    (p,) = decode([s]).resource_spans[0].scope_spans[0].spans
    assert p.start_time_unix_nano == 2 ** 64 - 2 and p.end_time_unix_nano == 2 ** 64 - 1
    assert len(p.attributes) == 200


def test_grouping_by_resource_identity_and_cached_resource_bytes():
    resources = [resource(pid=i, service=f"svc-{i}") for i in range(50)]
    # A distinct object with equal attributes is a distinct process.
    twin = resource(pid=0, service="svc-0")
    spans = [span(resources[i % 50], name=f"op{i}") for i in range(500)] + [span(twin)]
    request = decode(spans)
    assert len(request.resource_spans) == 51
    for rs, res in zip(request.resource_spans, resources):
        assert attrs_of(rs.resource.attributes) == res.attributes
        assert [p.name for p in rs.scope_spans[0].spans] == \
            [s.name for s in spans if s.resource is res]
        assert isinstance(res.encoded, bytes)
    # The cache is what gets written: poisoning it shows up on the wire.
    resources[0].encoded = otlp_encode.encode_resource(resource(service="cached"))
    rs = decode([span(resources[0])]).resource_spans[0]
    assert attrs_of(rs.resource.attributes)[0] == ("service.name", "cached")


def test_empty_batch():
    assert encode_export_request([]) == b""
    assert ExportTraceServiceRequest.FromString(b"").resource_spans == []


def test_cache_bounds_hold():
    res = resource()
    spans = [span(res, attributes=[("client.port", i), ("url.path", f"/p/{i}")])
             for i in range(otlp_encode._VALUES_PER_KEY_MAX * 3)]
    request = decode(spans)
    got = [attrs_of(p.attributes) for p in request.resource_spans[0].scope_spans[0].spans]
    assert got == [s.attributes for s in spans]
    assert all(len(d) <= otlp_encode._VALUES_PER_KEY_MAX for d in otlp_encode._attr_cache.values())


def test_field_order_is_canonical():
    """Protobuf's own serialiser emits fields in number order; so do we, so
    the bytes equal a re-serialisation of the decoded message."""
    res = resource()
    spans = [span(res, parent=new_span_id(), attributes=[("a", 1), ("b", "x"), ("c", 1.5)],
                  status_code=STATUS_ERROR, status_message="boom", trace_state="k=v")]
    raw = encode_export_request(spans)
    assert ExportTraceServiceRequest.FromString(raw).SerializeToString(deterministic=True) == raw


# --- equivalence with the SDK path ---------------------------------------------

def sdk_request(spans) -> ExportTraceServiceRequest:
    converter = SdkConverter()
    return encode_spans([converter.convert(s) for s in spans])


def normalise(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """The SDK leaves the W3C trace flags out of Span.flags; the proto puts
    them in the low byte, as we do.  Everything else must match exactly."""
    copy = ExportTraceServiceRequest()
    copy.CopyFrom(request)
    for rs in copy.resource_spans:
        for ss in rs.scope_spans:
            for p in ss.spans:
                p.flags &= ~0xFF
    return copy


def assert_same_as_sdk(spans):
    ours = decode(spans)
    theirs = sdk_request(spans)
    for rs in ours.resource_spans:
        for p in rs.scope_spans[0].spans:
            original = next(s for s in spans if s.span_id == p.span_id)
            assert p.flags & 0xFF == original.trace_flags
    assert normalise(ours) == normalise(theirs)


def test_same_as_sdk_http_spans():
    res_a = resource(pid=1, service="frontend")
    res_b = resource(pid=2, service="backend", extra=[("deployment.environment", "prod")])
    spans = []
    for i in range(40):
        res = res_a if i % 3 else res_b
        spans.append(span(
            res, name=f"GET /api/{i % 4}", kind=KIND_SERVER if i % 2 else KIND_CLIENT,
            parent=new_span_id() if i % 4 else b"",
            attributes=[("http.request.method", "GET"), ("http.response.status_code", 200 + i),
                        ("url.path", f"/api/{i}?q=\u00e9"), ("server.port", 8080),
                        ("network.peer.port", -i), ("sampled.ratio", i / 7),
                        ("tls", bool(i % 2))],
            status_code=STATUS_ERROR if i % 5 == 0 else STATUS_OK if i % 5 == 1 else STATUS_UNSET,
            status_message="failed" if i % 5 == 0 else "",
            trace_state="vendor=v1" if i % 6 == 0 else "",
            trace_flags=i % 2,
        ))
    assert_same_as_sdk(spans)


_keys = st.text(min_size=1, max_size=12)
_values = st.one_of(
    st.text(max_size=40), st.booleans(),
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.floats(allow_nan=False),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(
        st.dictionaries(_keys, _values, max_size=12),
        st.text(max_size=30),
        st.sampled_from([KIND_SERVER, KIND_CLIENT]),
        st.booleans(),
        st.sampled_from([STATUS_UNSET, STATUS_OK, STATUS_ERROR]),
        st.integers(min_value=0, max_value=2 ** 63),
        st.integers(min_value=0, max_value=10 ** 12),
        st.integers(min_value=0, max_value=2),
    ), min_size=1, max_size=8)
)
def test_same_as_sdk_property(rows):
    resources = [resource(pid=1), resource(pid=2, service="\u00e9"), resource(pid=3)]
    spans = []
    for i, (attributes, name, kind, has_parent, code, start, duration, r) in enumerate(rows):
        spans.append(span(
            resources[r], name=name, kind=kind, attributes=list(attributes.items()),
            parent=new_span_id() if has_parent else b"", status_code=code,
            # The SDK drops a description unless the status is ERROR.
            status_message="err" if code == STATUS_ERROR else "",
            start_ns=start, end_ns=start + duration,
        ))
    assert_same_as_sdk(spans)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2 ** 35, 2 ** 64 - 1, -1, -(2 ** 63)])
def test_varint(n):
    from google.protobuf.internal import decoder

    raw = otlp_encode._varint(n)
    value, pos = decoder._DecodeVarint(raw, 0)
    assert pos == len(raw)
    assert value == n & 0xFFFFFFFFFFFFFFFF


def test_double_is_little_endian_fixed64():
    (p,) = decode([span(resource(), attributes=[("f", 1.5)])]).resource_spans[0].scope_spans[0].spans
    assert p.attributes[0].value.double_value == struct.unpack("<d", struct.pack("<d", 1.5))[0]
