"""ExportTraceServiceRequest written straight to protobuf wire format.

Building SDK ReadableSpans and protobuf message objects costs several times the
agent's whole per-span budget (docs/performance.md), so spans are serialised by
hand from the plain Span records.  Messages are built bottom-up as bytes (a
length prefix needs the encoded size of what it wraps) and joined once per
request.

Attribute encodings repeat heavily (method, status code, port, scheme,
protocol version...), so each complete `attributes` field is cached per
(key, value) in bounded per-key dicts; high-cardinality keys merely churn
their own dict.  Fields are written in field-number order, as protobuf's own
serialisers do.
"""
from __future__ import annotations

import struct

from agent import DISTRO_NAME, __version__
from agent.export.protobuf_wire import (ANY_STRING as _ANY_STRING, KV_KEY as _KV_KEY,
                                       KV_VALUE as _KV_VALUE, VARINT_TABLE_SIZE as _VTABLE_SIZE,
                                       VARINTS as _V, any_value as _any_value, encode_key_value,
                                       ld as _ld, varint as _varint)
from agent.spans.model import TemplatedSpan


_SPAN_ATTR = b"\x4a"
_KEY_CACHE_MAX = 1024       # distinct attribute keys (parsers emit a fixed set)
_VALUES_PER_KEY_MAX = 512   # distinct cached values per key before a reset
# key -> encoded KeyValue.key field.
_key_fields: dict[str, bytes] = {}
# key -> {value: encoded Span.attributes field}; only str and exact-int values
# are cached since True == 1 == 1.0 would otherwise share an entry.
_attr_cache: dict[str, dict] = {}


def _key_field(key: str) -> bytes:
    if len(_key_fields) >= _KEY_CACHE_MAX:
        _key_fields.clear()
    encoded = _key_fields[key] = _ld(_KV_KEY, key.encode("utf-8", "replace"))
    return encoded


def _span_attribute(key: str, value) -> bytes:
    """The Span.attributes field for one pair, caching it when the value
    is cacheable (the hot loop has already missed the cache)."""
    key_field = _key_fields.get(key) or _key_field(key)
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8", "replace")
        n = len(raw)
        any_value = _ANY_STRING + (_V[n] if n < _VTABLE_SIZE else _varint(n)) + raw
    else:
        any_value = _any_value(value)
    n = len(any_value)
    kv = key_field + _KV_VALUE + (_V[n] if n < _VTABLE_SIZE else _varint(n)) + any_value
    n = len(kv)
    encoded = _SPAN_ATTR + (_V[n] if n < _VTABLE_SIZE else _varint(n)) + kv
    if kind is str or kind is int:
        per_key = _attr_cache.get(key)
        if per_key is None:
            if len(_attr_cache) >= _KEY_CACHE_MAX:
                _attr_cache.clear()
            per_key = _attr_cache[key] = {}
        elif len(per_key) >= _VALUES_PER_KEY_MAX:
            per_key.clear()
        per_key[value] = encoded
    return encoded


_NAME_CACHE_MAX = 4096
_name_cache: dict[str, bytes] = {}


def _span_name(name: str) -> bytes:
    if len(_name_cache) >= _NAME_CACHE_MAX:
        _name_cache.clear()
    encoded = _name_cache[name] = _ld(b"\x2a", name.encode("utf-8", "replace"))
    return encoded


# Span.flags (fixed32, field 16): W3C flags in the low byte; the parent's
# is_remote is always known here (HAS_IS_REMOTE), and a parent id always
# came from the wire, so it is remote (IS_REMOTE).  Same bits as the SDK.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_ROOT = [b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | f) for f in range(256)]
_FLAGS_CHILD = [b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE | f)
                for f in range(256)]

# kind (field 6, varint < 128), start (7, fixed64), end (8, fixed64).
_KIND_TIMES = struct.Struct("<BBBQBQ")
_KIND_TAG, _START_TAG, _END_TAG = 0x30, 0x39, 0x41

# Status (field 15): always present, as the SDK writes it.
_STATUS_BY_CODE = [_ld(b"\x7a", b"" if code == 0 else b"\x18" + _varint(code))
                   for code in range(3)]


def _status(code: int, message: str) -> bytes:
    body = b""
    if message:
        body = _ld(b"\x12", message.encode("utf-8", "replace"))
    if code:
        body += b"\x18" + _varint(code)
    return _ld(b"\x7a", body)


def encode_resource(resource) -> bytes:
    """ResourceSpans.resource field for one ProcessResource."""
    attrs = b"".join([encode_key_value(b"\x0a", k, v) for k, v in resource.attributes])
    return _ld(b"\x0a", attrs)


_SCOPE = _ld(b"\x0a", _ld(b"\x0a", DISTRO_NAME.encode()) + _ld(b"\x12", __version__.encode()))
_SCOPE_LEN = len(_SCOPE)


# A TemplatedSpan's fields are written with one struct.pack per span, of a
# format made for its template: the field's tag and length (constant: ids
# are always 16 and 8 bytes), trace_id (1), span_id (2), parent (4) if any,
# the template's name and kind (5, 6), start and end (7, 8), the template's
# attributes and status (9, 15), then flags (16).
_TRACE_ID_TAG, _SPAN_ID_TAG, _PARENT_TAG = 0x100A, 0x0812, 0x0822
_FLAGS_LEN = len(_FLAGS_ROOT[0])


def _encode_template(template) -> tuple:
    """(pack for a child span, pack for a root span, their tag-and-length
    heads, name and kind fields, attributes and status fields) of a
    SpanTemplate, kept in its slot."""
    name_kind = _ld(b"\x2a", template.name.encode("utf-8", "replace")) + bytes(
        (_KIND_TAG, template.kind))
    attributes = [_span_attribute(key, value) for key, value in template.attributes]
    if template.status_message:
        attributes.append(_status(template.status_code, template.status_message))
    else:
        attributes.append(_STATUS_BY_CODE[template.status_code])
    tail = b"".join(attributes)
    encoded = []
    for ids_format, ids_size in (("H16sH8sH8s", 38), ("H16sH8s", 28)):
        size = ids_size + len(name_kind) + 18 + len(tail) + _FLAGS_LEN
        head = b"\x12" + _varint(size)
        encoded.append((struct.Struct(f"<{len(head)}s{ids_format}{len(name_kind)}sBQBQ"
                                      f"{len(tail)}s{_FLAGS_LEN}s").pack, head))
    (child, child_head), (root, root_head) = encoded
    encoded = template.encoded = (child, root, child_head, root_head, name_kind, tail)
    return encoded


def _span_with_state(span) -> bytes:
    """A TemplatedSpan with a trace state (field 3, between span_id and
    parent_span_id): the root form's bytes cut open."""
    template = span.template
    encoded = template.encoded or _encode_template(template)
    _, root, _, root_head, name_kind, tail = encoded
    body = root(root_head, _TRACE_ID_TAG, span.trace_id, _SPAN_ID_TAG, span.span_id, name_kind,
                _START_TAG, span.start_ns, _END_TAG, span.end_ns, tail,
                b"")[len(root_head):-_FLAGS_LEN]
    middle = _ld(b"\x1a", span.trace_state.encode("utf-8", "replace"))
    parent = span.parent_span_id
    if parent:
        middle += b"\x22" + _V[len(parent)] + parent
    flags = (_FLAGS_CHILD if parent else _FLAGS_ROOT)[span.trace_flags & 0xFF]
    return _ld(b"\x12", body[:28] + middle + body[28:] + flags)


def encode_export_request(spans) -> bytes:
    """Serialised ExportTraceServiceRequest: one ResourceSpans per resource
    object (identity), one ScopeSpans each."""
    V = _V
    vmax = _VTABLE_SIZE
    attr_cache_get = _attr_cache.get
    name_get = _name_cache.get
    pack_kind_times = _KIND_TIMES.pack
    status_by_code = _STATUS_BY_CODE
    flags_root = _FLAGS_ROOT
    flags_child = _FLAGS_CHILD
    by_resource: dict = {}

    for span in spans:
        if span.__class__ is TemplatedSpan:
            trace_id, span_id, parent, trace_state, start, end, flags, resource, template = span
            child, root, child_head, root_head, name_kind, tail = \
                template.encoded or _encode_template(template)
            if trace_state:
                field = _span_with_state(span)
            elif parent:
                field = child(child_head, _TRACE_ID_TAG, trace_id, _SPAN_ID_TAG, span_id,
                              _PARENT_TAG, parent, name_kind, _START_TAG, start, _END_TAG, end,
                              tail, flags_child[flags & 0xFF])
            else:
                field = root(root_head, _TRACE_ID_TAG, trace_id, _SPAN_ID_TAG, span_id,
                             name_kind, _START_TAG, start, _END_TAG, end, tail,
                             flags_root[flags & 0xFF])
            group = by_resource.get(resource)
            if group is None:
                by_resource[resource] = [field]
            else:
                group.append(field)
            continue
        trace_id = span.trace_id
        span_id = span.span_id
        parent = span.parent_span_id
        parts = [b"\x0a", V[len(trace_id)], trace_id, b"\x12", V[len(span_id)], span_id]
        append = parts.append
        if span.trace_state:
            append(_ld(b"\x1a", span.trace_state.encode("utf-8", "replace")))
        if parent:
            append(b"\x22")
            append(V[len(parent)])
            append(parent)
        name = span.name
        append(name_get(name) or _span_name(name))
        append(pack_kind_times(_KIND_TAG, span.kind, _START_TAG, span.start_ns,
                               _END_TAG, span.end_ns))
        for key, value in span.attributes:
            kind = type(value)
            if kind is str or kind is int:
                per_key = attr_cache_get(key)
                encoded = per_key.get(value) if per_key is not None else None
                append(encoded or _span_attribute(key, value))
            else:
                append(_span_attribute(key, value))
        if span.status_message:
            append(_status(span.status_code, span.status_message))
        else:
            append(status_by_code[span.status_code])
        append((flags_child if parent else flags_root)[span.trace_flags & 0xFF])
        body = b"".join(parts)
        n = len(body)
        field = b"\x12" + (V[n] if n < vmax else _varint(n)) + body
        resource = span.resource
        group = by_resource.get(resource)
        if group is None:
            by_resource[resource] = [field]
        else:
            group.append(field)

    out = []
    for resource, fields in by_resource.items():
        encoded_resource = resource.encoded
        if encoded_resource is None:
            encoded_resource = resource.encoded = encode_resource(resource)
        spans_len = sum(map(len, fields))
        scope_spans_len = _SCOPE_LEN + spans_len
        scope_spans_head = b"\x12" + _varint(scope_spans_len)
        resource_spans_len = len(encoded_resource) + len(scope_spans_head) + scope_spans_len
        out.append(b"\x0a" + _varint(resource_spans_len))
        out.append(encoded_resource)
        out.append(scope_spans_head)
        out.append(_SCOPE)
        out.extend(fields)
    return b"".join(out)
