"""Kernel event records built by name, for tests that feed the tracker
records no kernel wrote (fuzzing, captures replayed as events).  Fields not
named are zero: seq 0 means "not numbered", so no gap is ever seen."""
from agent.capture.records import EVENT_HEADER, EVENT_HEADER_FIELDS

_BYTES_FIELDS = {"local_addr", "remote_addr"}


def make_record(payload: bytes = b"", **fields) -> bytes:
    unknown = set(fields) - set(EVENT_HEADER_FIELDS)
    if unknown:
        raise KeyError(f"not event_header fields: {sorted(unknown)}")
    values = [fields.get(name, b"" if name in _BYTES_FIELDS else 0) for name in EVENT_HEADER_FIELDS]
    return EVENT_HEADER.pack(*values) + payload
