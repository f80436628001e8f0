"""Go executables: what the Go TLS uprobes (bpf/go_tls.h) need to know of one.

- that it is Go, and which Go (the build info the linker writes);
- where crypto/tls.(*Conn).Read and .Write start and where each of their RET
  instructions is, as file offsets (symbols from .symtab, RETs by
  disassembling the function with capstone: Go gets no uretprobes);
- where a tls.Conn keeps its socket, from the binary's DWARF (the field
  offsets of tls.Conn.conn, net.conn.fd, net.netFD.pfd, poll.FD.Sysfd).

A binary built with `-ldflags=-s` has no .symtab and cannot be probed; one
built with `-w` (or stripped of .debug_*) keeps its symbols but loses the
DWARF: its calls are then tied to their socket by the thread's socket I/O
inside the call, which misses the calls a goroutine finishes on another
thread before its Conn was once seen doing I/O (see bpf/go_tls.h).
"""
from __future__ import annotations

import mmap
import re
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

BUILDINFO_MAGIC = b"\xff Go buildinf:"
_BUILDINFO_INLINE_STRINGS = 2
_BUILDINFO_HEADER = 32
READ_SYMBOL = "crypto/tls.(*Conn).Read"
WRITE_SYMBOL = "crypto/tls.(*Conn).Write"
# Go 1.20 renamed the linker's "go." symbols "go:".
TCP_CONN_ITABS = ("go:itab.*net.TCPConn,net.Conn", "go.itab.*net.TCPConn,net.Conn")
# The register ABI (arguments in RAX, RBX, RCX...) came with Go 1.17 on
# amd64; the build info holds its version inline from Go 1.18 on, and 1.17's
# pointer form is not read: 1.18 is the first Go probed.
FIRST_SUPPORTED_GO = (1, 18)
# The DWARF types the socket's path runs through: {type: {member: offset}}.
_LAYOUT_TYPES = {
    "crypto/tls.Conn": ("conn",),
    "net.conn": ("fd",),
    "net.netFD": ("pfd",),
    "internal/poll.FD": ("Sysfd",),
}
# Go's linker puts the types' DWARF in units named after the runtime package.
_TYPES_UNIT = b"runtime"

# Why a Go executable is not probed (the values are metric labels).
SKIP_NOT_X86_64 = "not_x86_64"
SKIP_OLD_GO = "go_before_1_18"
SKIP_NO_SYMBOLS = "stripped_symbols"
SKIP_NO_CRYPTO_TLS = "no_crypto_tls"
SKIP_NO_RETURNS = "returns_not_found"
SKIP_UNREADABLE = "unreadable"


@dataclass
class GoTlsTargets:
    """Offsets in one Go executable, ready to attach at."""
    go_version: str
    read_entry: int
    write_entry: int
    read_returns: list[int]
    write_returns: list[int]
    # (conn, fd, sysfd) offsets for bpf/events.h struct go_tls_binary, or None
    layout: tuple[int, int, int] | None = None
    # Address of the *net.TCPConn itab for net.Conn; 0 in a position-
    # independent executable (its addresses move) or when absent.
    tcp_conn_itab: int = 0


@dataclass
class Inspection:
    targets: GoTlsTargets | None
    skip_reason: str = ""
    go_version: str = ""
    notes: list[str] = field(default_factory=list)


def is_go_executable(path: str) -> bool:
    """Cheap look for the Go build info's magic before parsing the ELF."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m[:4] == b"\x7fELF" and m.find(BUILDINFO_MAGIC) >= 0
    except (OSError, ValueError):
        return False


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def go_version(elf: ELFFile) -> str:
    """"go1.19.8" from .go.buildinfo (Go >= 1.18 writes the strings inline);
    "" when the section is missing or in the older pointer form."""
    section = elf.get_section_by_name(".go.buildinfo")
    if section is None:
        return ""
    data = section.data()
    if not data.startswith(BUILDINFO_MAGIC) or len(data) < _BUILDINFO_HEADER + 1:
        return ""
    if not data[15] & _BUILDINFO_INLINE_STRINGS:
        return ""
    length, pos = _uvarint(data, _BUILDINFO_HEADER)
    return data[pos:pos + length].decode("ascii", "replace")


def version_tuple(version: str) -> tuple[int, int] | None:
    match = re.match(r"go(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def _file_offset(elf: ELFFile, vaddr: int) -> int | None:
    for segment in elf.iter_segments("PT_LOAD"):
        start = segment["p_vaddr"]
        if start <= vaddr < start + segment["p_filesz"]:
            return vaddr - start + segment["p_offset"]
    return None


def return_offsets(code: bytes, file_offset: int) -> list[int] | None:
    """File offsets of the RET instructions of a function's machine code;
    None when capstone cannot decode all of it (a RET could hide there)."""
    # Imported here: the disassembler's library costs every agent a few MB
    # of memory, and only nodes running Go executables need it.
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    decoder = Cs(CS_ARCH_X86, CS_MODE_64)
    returns = []
    decoded = 0
    for address, size, mnemonic, _ in decoder.disasm_lite(code, file_offset):
        decoded += size
        if mnemonic == "ret":
            returns.append(address)
    return returns if decoded == len(code) else None


def _function(elf: ELFFile, symtab, name: str) -> tuple[int, list[int]] | None:
    """(entry, RETs) of a function symbol, as file offsets."""
    symbols = symtab.get_symbol_by_name(name)
    if not symbols:
        return None
    symbol = symbols[0]
    entry = _file_offset(elf, symbol["st_value"])
    size = symbol["st_size"]
    if entry is None or not size:
        return None
    stream = elf.stream
    stream.seek(entry)
    returns = return_offsets(stream.read(size), entry)
    return (entry, returns) if returns else None


def socket_layout(elf: ELFFile) -> tuple[int, int, int] | None:
    """(tls.Conn.conn, net.conn.fd, netFD.pfd + poll.FD.Sysfd) from DWARF."""
    if not elf.has_dwarf_info():
        return None
    dwarf = elf.get_dwarf_info()
    offsets: dict[str, int] = {}
    wanted = {name.encode(): name for name in _LAYOUT_TYPES}
    for unit in dwarf.iter_CUs():
        name = unit.get_top_DIE().attributes.get("DW_AT_name")
        if name is None or name.value != _TYPES_UNIT:
            continue
        for die in unit.iter_DIEs():
            if die.tag != "DW_TAG_structure_type":
                continue
            type_name = die.attributes.get("DW_AT_name")
            if type_name is None or type_name.value not in wanted:
                continue
            struct = wanted[type_name.value]
            for member in die.iter_children():
                member_name = member.attributes.get("DW_AT_name")
                location = member.attributes.get("DW_AT_data_member_location")
                if member.tag == "DW_TAG_member" and member_name and location is not None \
                        and member_name.value.decode() in _LAYOUT_TYPES[struct]:
                    offsets[f"{struct}.{member_name.value.decode()}"] = location.value
            if len(offsets) == len(_LAYOUT_TYPES):
                break
        if len(offsets) == len(_LAYOUT_TYPES):
            break
    try:
        return (offsets["crypto/tls.Conn.conn"], offsets["net.conn.fd"],
                offsets["net.netFD.pfd"] + offsets["internal/poll.FD.Sysfd"])
    except KeyError:
        return None


def inspect(path: str) -> Inspection:
    """What the Go TLS probes need of the executable at path, or why it
    cannot be probed."""
    try:
        with open(path, "rb") as f:
            return _inspect(ELFFile(f))
    except (OSError, ELFError, ValueError, IndexError, KeyError) as exc:
        return Inspection(None, SKIP_UNREADABLE, notes=[str(exc)])


def _inspect(elf: ELFFile) -> Inspection:
    version = go_version(elf)
    if elf["e_machine"] != "EM_X86_64":
        return Inspection(None, SKIP_NOT_X86_64, version)
    parsed = version_tuple(version)
    if parsed is None or parsed < FIRST_SUPPORTED_GO:
        return Inspection(None, SKIP_OLD_GO, version)
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        return Inspection(None, SKIP_NO_SYMBOLS, version)
    if not symtab.get_symbol_by_name(READ_SYMBOL) and not symtab.get_symbol_by_name(WRITE_SYMBOL):
        return Inspection(None, SKIP_NO_CRYPTO_TLS, version)
    read, write = _function(elf, symtab, READ_SYMBOL), _function(elf, symtab, WRITE_SYMBOL)
    if read is None or write is None:
        return Inspection(None, SKIP_NO_RETURNS, version)
    targets = GoTlsTargets(version, read[0], write[0], read[1], write[1], socket_layout(elf))
    if elf["e_type"] == "ET_EXEC":
        for name in TCP_CONN_ITABS:
            symbols = symtab.get_symbol_by_name(name)
            if symbols:
                targets.tcp_conn_itab = symbols[0]["st_value"]
                break
    return Inspection(targets, go_version=version)
