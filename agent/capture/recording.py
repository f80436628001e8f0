"""Recorded kernel events: raw ring-buffer records saved to a file, so that
the userspace pipeline can be replayed without privileges (unit tests from
real captures, the pipeline benchmark, bug reports).

Format: MAGIC, the event header size (u32, to refuse files from another
layout), then per record a u32 length and the record's bytes.
"""
from __future__ import annotations

import struct

from agent.capture.records import EVENT_HEADER_SIZE

MAGIC = b"OTEBPF1\n"
_U32 = struct.Struct("<I")


def write_records(path, records) -> int:
    count = 0
    with open(path, "wb") as f:
        f.write(MAGIC + _U32.pack(EVENT_HEADER_SIZE))
        for record in records:
            f.write(_U32.pack(len(record)))
            f.write(record)
            count += 1
    return count


def read_records(path) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path}: not an otel-ebpf recording")
    (header_size,) = _U32.unpack_from(data, len(MAGIC))
    if header_size != EVENT_HEADER_SIZE:
        raise ValueError(f"{path}: recorded with a {header_size}-byte event header, "
                         f"this build uses {EVENT_HEADER_SIZE}")
    records, pos = [], len(MAGIC) + 4
    while pos + 4 <= len(data):
        (length,) = _U32.unpack_from(data, pos)
        records.append(data[pos + 4:pos + 4 + length])
        pos += 4 + length
    return records
