"""HTTP/1.x exchange records (struct http_exchange, bpf/events.h): what the
probes paired, decoded with one struct unpack, and the fallback counters
(bpf/http_exchange.h's http_fallbacks map)."""
from __future__ import annotations

import struct
from typing import NamedTuple

from agent.capture import records
from agent.capture.libbpf import ffi
from agent.capture import libbpf

C = records.C

# --http-exchanges -> capture_config.http_exchanges.
EXCHANGE_MODES = {"off": C["HTTP_EXCHANGES_OFF"], "on": C["HTTP_EXCHANGES_ALWAYS"],
                  "by-load": C["HTTP_EXCHANGES_BY_LOAD"]}
# The record's fixed part, through request.present; the request's values
# follow it, values_len bytes (bpf/events.h: the record is variable-length).
HTTP_EXCHANGE = records.prefix_struct("struct http_exchange", "present")
HTTP_EXCHANGE_FIELDS = records.struct_format("struct http_exchange")[1]
_INDEX = {name: i for i, name in enumerate(HTTP_EXCHANGE_FIELDS)}
_HEADER_FIELDS = len(records.EVENT_HEADER_FIELDS)
VALUES_OFFSET = HTTP_EXCHANGE.size
# What a span needs of the fixed part after the event header, in one
# unpack_from(record, SPAN_FIELDS_OFFSET) (agent/protocols/http1_records.py).
SPAN_FIELD_NAMES = ("serving_conn_id", "status", "values_len", "target_off", "target_len",
                    "host_off", "user_agent_off", "traceparent_off", "tracestate_off",
                    "method_len", "host_len", "user_agent_len", "traceparent_len",
                    "tracestate_len", "version_minor", "present")
SPAN_FIELDS_OFFSET = records.EVENT_HEADER_SIZE
# From values_len to the values' end: the lengths, offsets, version and
# flags of the request's values, and the values.  Two records whose bytes
# there are equal carry the same request (the status aside).
REQUEST_SHAPE_OFFSET = records.ffi.offsetof("struct http_exchange", "request", "values_len")
SPAN_FIELDS = records.fields_struct("struct http_exchange", SPAN_FIELD_NAMES, SPAN_FIELDS_OFFSET)
# The traceparent the probes decoded (HTTP_HAS_TRACE_IDS): one unpack gives
# (trace_id, parent_id, flags), the form the linker takes.
TRACE_IDS_OFFSET = records.ffi.offsetof("struct http_exchange", "request", "trace_id")
TRACE_IDS = records.fields_struct("struct http_exchange", ("trace_id", "parent_id", "trace_flags"),
                                  TRACE_IDS_OFFSET)

# EVENT_HTTP_SERVING's note: the served exchange's connection id.
SERVING_NOTE_OFFSET = records.ffi.offsetof("struct http_serving_note", "serving_conn_id")
SERVING_NOTE = records.fields_struct("struct http_serving_note", ("serving_conn_id",),
                                     SERVING_NOTE_OFFSET)
SERVING_NOTE_SIZE = records.ffi.sizeof("struct http_serving_note")

# What a held record's copy changes (agent/protocols/http1_records.py):
# each struct packs its one field at its offset.
SERVING_OFFSET = records.ffi.offsetof("struct http_exchange", "serving_conn_id")
SERVING = records.fields_struct("struct http_exchange", ("serving_conn_id",), SERVING_OFFSET)
SEQ_OFFSET = records.ffi.offsetof("struct event_header", "seq")
SEQ = records.fields_struct("struct event_header", ("seq",), SEQ_OFFSET)

FALLBACK_NAMES = {C[name]: name.removeprefix("HTTP_FALLBACK_").lower()
                  for name in C if name.startswith("HTTP_FALLBACK_") and name != "HTTP_FALLBACK_COUNT"}
_FALLBACK_STATS = struct.Struct("<QQ")
SHED_NAMES = {C[name]: name.removeprefix("HTTP_SHED_").lower()
              for name in C if name.startswith("HTTP_SHED_") and name != "HTTP_SHED_COUNT"}
# The probes shed new exchanges once this share of the ring is unread
# (capture_config.http_shed_bytes): the rest is room for the exchanges
# already started, whose records must all arrive.
SHED_AT_FILL = 1 / 2


class HttpExchangeRecord(NamedTuple):
    """One paired exchange: the record's header (as event_header's fields)
    and the request's split-out values as userspace decodes them (trace
    context latin-1, the rest UTF-8 with replacement; absent fields None)."""
    header: tuple
    method: str
    target: str
    version: str
    host: str | None
    user_agent: str | None
    traceparent: str | None
    tracestate: str | None
    status_code: int
    response_version: str
    truncated: int
    request_bytes: int
    response_bytes: int
    serving_conn_id: int


def _value(values: bytes, offset: int, length: int, present: int, bit: int, encoding: str):
    if not present & bit:
        return None
    return values[offset:offset + length].decode(encoding, "replace")


def traceparent_text(trace_id: bytes, parent_id: bytes, flags: int) -> str:
    """The header value of ids the probes decoded: they decode only the
    common form, which this gives back byte for byte."""
    return "00-%s-%s-%02x" % (trace_id.hex(), parent_id.hex(), flags)


def _traceparent(record: bytes, values: bytes, v: tuple, present: int) -> str | None:
    """The traceparent as its header carried it: decoded by the probes, or
    kept as text."""
    if present & C["HTTP_HAS_TRACE_IDS"]:
        return traceparent_text(*TRACE_IDS.unpack_from(record, TRACE_IDS_OFFSET))
    return _value(values, v[_INDEX["traceparent_off"]], v[_INDEX["traceparent_len"]], present,
                  C["HTTP_HAS_TRACEPARENT"], "latin-1")


def decode(record: bytes) -> HttpExchangeRecord:
    """Raises ValueError when the values overrun the record."""
    v = HTTP_EXCHANGE.unpack_from(record)
    f = _INDEX
    present = v[f["present"]]
    end = VALUES_OFFSET + v[f["values_len"]]
    if end > len(record):
        raise ValueError("exchange record shorter than its values")
    values = bytes(record[VALUES_OFFSET:end])
    method_len, target_off = v[f["method_len"]], v[f["target_off"]]
    return HttpExchangeRecord(
        v[:_HEADER_FIELDS],
        values[:method_len].decode("ascii", "replace"),
        values[target_off:target_off + v[f["target_len"]]].decode("utf-8", "replace"),
        "1.%d" % v[f["version_minor"]],
        _value(values, v[f["host_off"]], v[f["host_len"]], present, C["HTTP_HAS_HOST"], "utf-8"),
        _value(values, v[f["user_agent_off"]], v[f["user_agent_len"]], present,
               C["HTTP_HAS_USER_AGENT"], "utf-8"),
        _traceparent(record, values, v, present),
        _value(values, v[f["tracestate_off"]], v[f["tracestate_len"]], present,
               C["HTTP_HAS_TRACESTATE"], "latin-1"),
        v[f["status"]], "1.%d" % v[f["response_version_minor"]], v[f["truncated"]],
        v[f["request_bytes"]], v[f["response_bytes"]], v[f["serving_conn_id"]])


def read_fallbacks(map_fd: int, ncpus: int) -> dict[str, tuple[int, int]]:
    """reason -> (connections, requests dropped), summed over CPUs."""
    lib = libbpf.lib()
    buf = ffi.new("char[]", ncpus * _FALLBACK_STATS.size)
    key = ffi.new("uint32_t *")
    out = {}
    for index, name in FALLBACK_NAMES.items():
        key[0] = index
        if lib.bpf_map_lookup_elem(map_fd, key, buf) != 0:
            continue
        raw = ffi.buffer(buf)
        totals = [0, 0]
        for cpu in range(ncpus):
            connections, dropped = _FALLBACK_STATS.unpack_from(raw, cpu * _FALLBACK_STATS.size)
            totals[0] += connections
            totals[1] += dropped
        out[name] = tuple(totals)
    return out


def read_counts(map_fd: int, ncpus: int, names: dict) -> dict[str, int]:
    """A per-CPU array of counters (http_shed, http_moves): names[index] ->
    count, summed over CPUs."""
    lib = libbpf.lib()
    buf = ffi.new("uint64_t[]", ncpus)
    key = ffi.new("uint32_t *")
    out = {}
    for index, name in names.items():
        key[0] = index
        if lib.bpf_map_lookup_elem(map_fd, key, buf) == 0:
            out[name] = sum(buf[cpu] for cpu in range(ncpus))
    return out


# bpf/http_exchange.h's http_moves: connections moved by load, by where to.
MOVE_NAMES = {0: "records", 1: "payload"}


# struct http_pending (bpf/http_exchange.h): phase, three flags, padding,
# body_remaining, then the record.
_PENDING_BYTES = 16 + records.ffi.sizeof("struct http_exchange")


def count_held(map_fd: int) -> int:
    """Slots of http_pending (an array) holding an exchange on its way:
    those whose first byte, the phase, is not idle (0)."""
    lib = libbpf.lib()
    key, next_key = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    value = ffi.new("uint8_t[]", _PENDING_BYTES)
    held = 0
    previous = ffi.NULL
    while lib.bpf_map_get_next_key(map_fd, previous, next_key) == 0:
        key[0] = next_key[0]
        previous = key
        if lib.bpf_map_lookup_elem(map_fd, key, value) == 0 and value[0]:
            held += 1
    return held
