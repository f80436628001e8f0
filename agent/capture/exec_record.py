"""EVENT_PROCESS_EXEC records (struct process_exec_record, bpf/events.h):
what the kernel knew of a process when it called exec."""
from __future__ import annotations

import struct
from typing import NamedTuple

from agent.capture.records import C, EVENT_HEADER_SIZE, ffi

_EXTRA = struct.Struct(f"<Q{C['EXEC_PATH_BYTES']}s")
_EXTRA_OFFSET = ffi.offsetof("struct process_exec_record", "start_boottime_ns")
assert _EXTRA_OFFSET == EVENT_HEADER_SIZE
RECORD_SIZE = ffi.sizeof("struct process_exec_record")
_PID = struct.Struct("<4xI")


class ExecFacts(NamedTuple):
    pid: int
    start_boottime_ns: int   # 0: unknown (the BCC front end)
    filename: str            # as executed; "" unknown


def parse_exec_record(record) -> ExecFacts | None:
    """None for a record without the exec part (too short)."""
    if len(record) < RECORD_SIZE:
        return None
    (pid,) = _PID.unpack_from(record)
    start, raw = _EXTRA.unpack_from(record, _EXTRA_OFFSET)
    filename = raw.split(b"\0", 1)[0].decode(errors="replace")
    return ExecFacts(pid, start, filename)
