"""Kernel event records built by name, for tests that feed the tracker
records no kernel wrote (fuzzing, captures replayed as events).  Fields not
named are zero: seq 0 means "not numbered", so no gap is ever seen."""
import ipaddress

from agent.capture.records import C, EVENT_HEADER, EVENT_HEADER_FIELDS

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
