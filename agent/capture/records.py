"""Kernel-to-userspace record layouts, read from bpf/events.h.

The header is the single definition: cffi parses it, and the struct formats
used on the hot path are derived from cffi's view of the layout, so a field
added on the kernel side shows up here or fails loudly at import.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import cffi

HEADER_PATH = Path(__file__).resolve().parents[2] / "bpf" / "events.h"
_DEFINE = re.compile(r"^#define\s+([A-Z_][A-Z0-9_]*)\s+(\d+)\s*$")


def _cdef_source(text: str) -> str:
    """The header without the preprocessor lines cffi cannot parse."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not _DEFINE.match(stripped):
            continue
        lines.append(line)
    return "\n".join(lines)


def _load_header() -> tuple[cffi.FFI, dict]:
    text = HEADER_PATH.read_text()
    ffi = cffi.FFI()
    ffi.cdef("typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32;"
             " typedef uint64_t __u64;\n" + _cdef_source(text))
    constants = {m.group(1): int(m.group(2))
                 for m in map(_DEFINE.match, (line.strip() for line in text.splitlines())) if m}
    return ffi, constants


ffi, C = _load_header()

_STRUCT_CODES = {"uint8_t": "B", "uint16_t": "H", "uint32_t": "I", "uint64_t": "Q"}


def _flatten(ctype, base: int = 0):
    """(offset, struct code, name) of every scalar leaf of a struct."""
    for name, field in ctype.fields:
        ftype, offset = field.type, base + field.offset
        if ftype.kind == "struct":
            yield from _flatten(ftype, offset)
        elif ftype.kind == "array":
            yield offset, f"{ftype.length}s", name
        else:
            yield offset, _STRUCT_CODES[ftype.cname], name


def struct_format(cname: str) -> tuple[str, tuple[str, ...]]:
    """A little-endian struct format equal to the C layout, and its field names."""
    ctype = ffi.typeof(cname)
    fmt, names = _leading_format(ctype, None)
    size = struct.calcsize(fmt)
    if ffi.sizeof(ctype) > size:
        fmt += f"{ffi.sizeof(ctype) - size}x"
    assert struct.calcsize(fmt) == ffi.sizeof(ctype), cname
    return fmt, names


def prefix_struct(cname: str, last_field: str) -> struct.Struct:
    """The leading fields of a struct, through last_field: for hot loops
    that need only those."""
    fmt, names = _leading_format(ffi.typeof(cname), last_field)
    if names[-1] != last_field:
        raise KeyError(last_field)
    return struct.Struct(fmt)


def fields_struct(cname: str, names: tuple[str, ...], start: int = 0) -> struct.Struct:
    """Only the named fields of a struct, in layout order, from byte
    `start` on (the rest padding): one unpack_from(record, start) gives
    what a hot loop reads and nothing else."""
    fmt, pos, found = "<", start, []
    for offset, code, name in _flatten(ffi.typeof(cname)):
        if name not in names or offset < start:
            continue
        if offset > pos:
            fmt += f"{offset - pos}x"
        fmt += code
        found.append(name)
        pos = offset + struct.calcsize("<" + code)
    if tuple(found) != tuple(names):
        raise KeyError(f"{cname}: fields {names} not in layout order or missing: {found}")
    return struct.Struct(fmt)


def _leading_format(ctype, last_field: str | None) -> tuple[str, tuple[str, ...]]:
    """Format and names of the fields up to last_field (all when None),
    with the padding between them."""
    fmt, names, pos = "<", [], 0
    for offset, code, name in _flatten(ctype):
        if offset > pos:
            fmt += f"{offset - pos}x"
        fmt += code
        names.append(name)
        pos = offset + struct.calcsize("<" + code)
        if name == last_field:
            break
    return fmt, tuple(names)


EVENT_HEADER_FORMAT, EVENT_HEADER_FIELDS = struct_format("struct event_header")
EVENT_HEADER = struct.Struct(EVENT_HEADER_FORMAT)
EVENT_HEADER_SIZE = EVENT_HEADER.size
PROBE_STATS_FORMAT, PROBE_STATS_FIELDS = struct_format("struct probe_stats")
PROBE_STATS = struct.Struct(PROBE_STATS_FORMAT)

PROBE_NAMES = {C[name]: name.removeprefix("PROBE_").lower()
               for name in C if name.startswith("PROBE_") and name != "PROBE_COUNT"}
