"""Function symbols of an ELF file, as the file offsets uprobes attach at.

Only what the TLS probes need: 64-bit little-endian ELF (x86-64, arm64),
defined STT_FUNC symbols from .dynsym and .symtab (and which of the names
are only imported), and the translation of a
symbol's virtual address to its offset in the file through the PT_LOAD
segment that holds it.  Bad or foreign files give an empty answer.
"""
from __future__ import annotations

import mmap
import struct

_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
_PROGRAM = struct.Struct("<IIQQQQQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
_SHT_SYMTAB = 2
_SHT_DYNSYM = 11
_PT_LOAD = 1
_STT_FUNC = 2
_SHN_UNDEF = 0


def function_symbols(path: str, names) -> tuple[dict[str, int], set[str]]:
    """({name: file offset} of the defined functions among names, the names
    the file only imports: undefined symbols a shared library provides)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _function_symbols(m, frozenset(names))
    except (OSError, ValueError, OverflowError, struct.error, IndexError):
        return {}, set()


def _function_symbols(m, wanted: frozenset) -> tuple[dict[str, int], set[str]]:
    imported: set[str] = set()
    if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:   # ELFCLASS64, little-endian
        return {}, imported
    (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
     _) = _ELF_HEADER.unpack_from(m, 0)
    loads = []
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = _PROGRAM.unpack_from(m, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_vaddr + p_filesz, p_offset))
    sections = [_SECTION.unpack_from(m, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, int] = {}
    encoded = {name.encode(): name for name in wanted}
    for sh_name, sh_type, _, _, sh_offset, sh_size, sh_link, _, _, sh_entsize in sections:
        if sh_type not in (_SHT_DYNSYM, _SHT_SYMTAB) or not sh_entsize:
            continue
        strtab = sections[sh_link][4]
        for pos in range(sh_offset, sh_offset + sh_size, sh_entsize):
            st_name, st_info, _, st_shndx, st_value, _ = _SYMBOL.unpack_from(m, pos)
            if st_shndx == _SHN_UNDEF:
                if sh_type == _SHT_DYNSYM and st_name:
                    start = strtab + st_name
                    name = m[start:m.find(b"\0", start)]
                    if name in encoded:
                        imported.add(encoded[name])
                continue
            if st_info & 0xF != _STT_FUNC or not st_value:
                continue
            start = strtab + st_name
            name = m[start:m.find(b"\0", start)]
            if name in encoded and encoded[name] not in found:
                for low, high, offset in loads:
                    if low <= st_value < high:
                        found[encoded[name]] = st_value - low + offset
                        break
        if len(found) == len(wanted):
            break
    return found, imported - found.keys()
