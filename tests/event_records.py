"""Kernel event records built by name, for tests that feed the tracker
records no kernel wrote (fuzzing, captures replayed as events).  Fields not
named are zero: seq 0 means "not numbered", so no gap is ever seen."""
import ipaddress

from agent.capture.records import C, EVENT_HEADER, EVENT_HEADER_FIELDS
from agent.parsers.tracecontext import traceparent_ids

_BYTES_FIELDS = {"local_addr", "remote_addr"}


def make_record(payload: bytes = b"", **fields) -> bytes:
    unknown = set(fields) - set(EVENT_HEADER_FIELDS)
    if unknown:
        raise KeyError(f"not event_header fields: {sorted(unknown)}")
    values = [fields.get(name, b"" if name in _BYTES_FIELDS else 0) for name in EVENT_HEADER_FIELDS]
    return EVENT_HEADER.pack(*values) + payload


def ipv4_mapped(address: str) -> bytes:
    """An IPv4 address as the kernel records it: IPv4-mapped IPv6."""
    return b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(address).packed


def http1_record(conn_id: int, pid: int, role: int, direction: int, payload: bytes, ts: int,
                 local: tuple, remote: tuple) -> bytes:
    """One HTTP/1 data record of connection conn_id between IPv4 endpoints
    (address, port), on fd 5 of the process's only thread."""
    return make_record(payload, type=C["EVENT_DATA"], pid=pid, tid=pid, fd=5, conn_id=conn_id,
                       start_ns=ts, end_ns=ts + 10, length=len(payload), captured=len(payload),
                       direction=direction, role=role, protocol=C["PROTOCOL_HTTP1"],
                       local_addr=ipv4_mapped(local[0]), remote_addr=ipv4_mapped(remote[0]),
                       local_port=local[1], remote_port=remote[1], family=10)


def decoded_traceparent(value: bytes):
    """(trace_id, parent_id, flags) of a traceparent the probes decode
    (bpf/http_values.h: a version-00 value userspace reads as valid; the
    host-build tests hold the probes to that), or None for one they keep as
    text."""
    return traceparent_ids(value) if len(value) == 55 and value[:2] == b"00" else None


def http_exchange_record(conn_id: int, pid: int, role: int, direction: int, start: int, end: int,
                         local: tuple, remote: tuple, method: bytes = b"GET",
                         target: bytes = b"/", host: bytes | None = None,
                         user_agent: bytes | None = None, traceparent: bytes | None = None,
                         tracestate: bytes | None = None, status: int = 200,
                         version_minor: int = 1, serving: int = 0, tid: int | None = None,
                         seq: int = 0, kept: bool = False) -> bytes:
    """One EVENT_HTTP_EXCHANGE record (struct http_exchange, variable
    length) as the probes write it: the request's values packed in head
    order, each absent header left out of `present`.  kept: an
    EVENT_HTTP_KEPT_REQUEST instead (the request alone, handed over)."""
    from agent.capture import exchange_records
    from agent.capture.records import ffi
    x = ffi.new("struct http_exchange *")
    h = x.hdr
    h.type = C["EVENT_HTTP_KEPT_REQUEST" if kept else "EVENT_HTTP_EXCHANGE"]
    h.pid, h.tid, h.fd, h.conn_id = pid, tid or pid, 5, conn_id
    h.start_ns, h.end_ns, h.direction, h.role = start, end, direction, role
    h.protocol, h.seq = C["PROTOCOL_HTTP1"], seq
    h.tuple.family = 10
    h.tuple.local_addr, h.tuple.remote_addr = ipv4_mapped(local[0]), ipv4_mapped(remote[0])
    h.tuple.local_port, h.tuple.remote_port = local[1], remote[1]
    r = x.request
    values = method + target
    r.method_len, r.target_off, r.target_len = len(method), len(method), len(target)
    ids = decoded_traceparent(traceparent) if traceparent is not None else None
    if ids is not None:
        r.trace_id, r.parent_id, r.trace_flags = ids
        r.present |= C["HTTP_HAS_TRACE_IDS"]
        traceparent = None
    for value, name, bit in ((host, "host", "HTTP_HAS_HOST"),
                             (user_agent, "user_agent", "HTTP_HAS_USER_AGENT"),
                             (traceparent, "traceparent", "HTTP_HAS_TRACEPARENT"),
                             (tracestate, "tracestate", "HTTP_HAS_TRACESTATE")):
        if value is not None:
            setattr(r, name + "_off", len(values))
            setattr(r, name + "_len", len(value))
            r.present |= C[bit]
            values += value
    r.values[0:len(values)], r.values_len = values, len(values)
    r.version_minor = version_minor
    x.status, x.response_version_minor, x.serving_conn_id = status, version_minor, serving
    return bytes(ffi.buffer(x))[:exchange_records.VALUES_OFFSET + len(values)]


def http_serving_note(conn_id: int, pid: int, serving: int, start: int, local: tuple,
                      remote: tuple) -> bytes:
    """One EVENT_HTTP_SERVING note: a request sent on client connection
    conn_id (on the payload path) while its thread serves `serving`."""
    from agent.capture.records import ffi
    note = ffi.new("struct http_serving_note *")
    h = note.hdr
    h.type, h.pid, h.tid, h.fd, h.conn_id = C["EVENT_HTTP_SERVING"], pid, pid, 5, conn_id
    h.start_ns, h.direction, h.role = start, C["DIRECTION_EGRESS"], C["ROLE_CLIENT"]
    h.protocol = C["PROTOCOL_HTTP1"]
    h.tuple.family = 10
    h.tuple.local_addr, h.tuple.remote_addr = ipv4_mapped(local[0]), ipv4_mapped(remote[0])
    h.tuple.local_port, h.tuple.remote_port = local[1], remote[1]
    note.serving_conn_id = serving
    return bytes(ffi.buffer(note))
