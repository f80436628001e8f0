"""TLS over memory BIOs (Node.js, Python asyncio): attach the uprobe that
binds an SSL object to its socket by content (bpf/tls_membio.h).

SSL_set_bio / SSL_set0_wbio live in libssl; BIO_write / BIO_write_ex in
libcrypto, or both in one executable that links OpenSSL statically (Node).
Each file that TlsProbes probes for SSL_read/SSL_write is handed here: an
executable gets all four probes, a libssl gets the first two and its
libcrypto (the file beside it with the same version suffix) the other two.
"""
from __future__ import annotations

import logging
import os
import struct

from agent.capture import libbpf
from agent.capture.elf import function_symbols
from agent.capture.records import C
from agent.counters import Counter, Metric

log = logging.getLogger(__name__)

# Counted by bpf/tls_membio.h in membio_results, one slot per result.
BINDINGS = Metric(
    "kernel_tls_membio_bindings",
    "Attempts to bind an SSL object over memory BIOs (Node.js, Python asyncio) to its socket: "
    "bound; no_matching_record (a connection carried TLS records no SSL was seen writing: set "
    "up before the agent started, or its records pushed out of the table; counted once per "
    "connection); record_too_short / record_unreadable (a record not remembered); table_full.",
    "result")
RESULTS = {"bound": C["MEMBIO_BOUND"],
           "no_matching_record": C["MEMBIO_NO_MATCHING_RECORD"],
           "record_too_short": C["MEMBIO_RECORD_TOO_SHORT"],
           "record_unreadable": C["MEMBIO_RECORD_UNREADABLE"],
           "table_full": C["MEMBIO_TABLE_FULL"]}
COUNTERS = tuple(Counter(result, BINDINGS, result) for result in RESULTS)
_SLOT = struct.Struct("<I")
_COUNT = struct.Struct("<Q")

SSL_FUNCTIONS = {"SSL_set_bio": C["MEMBIO_FN_SET_BIO"],
                 "SSL_set0_wbio": C["MEMBIO_FN_SET0_WBIO"]}
BIO_FUNCTIONS = {"BIO_write": C["MEMBIO_FN_BIO_WRITE"],
                 "BIO_write_ex": C["MEMBIO_FN_BIO_WRITE"]}


def libcrypto_beside(libssl_path: str) -> str | None:
    """The libcrypto that ships with a libssl: same directory, same version
    suffix (libssl.so.3 -> libcrypto.so.3; a wheel's libssl-<hash>.so.3 ->
    its one libcrypto-<hash>.so.3)."""
    directory, _, name = libssl_path.rpartition("/")
    if not name.startswith("libssl"):
        return None
    plain = f"{directory}/libcrypto{name.removeprefix('libssl')}"
    if os.path.exists(plain):
        return plain
    suffix = name[name.index(".so"):] if ".so" in name else ""
    try:
        found = [entry for entry in os.listdir(directory or "/")
                 if entry.startswith("libcrypto") and entry.endswith(suffix)]
    except OSError:
        return None
    return f"{directory}/{found[0]}" if len(found) == 1 else None


class MemoryBioProbes:
    """Counts files given the memory-BIO probes; each file once."""

    def __init__(self, capture):
        self.capture = capture
        self._seen: set[tuple[int, int]] = set()
        self.counts = {"files_probed": 0, "probes_attached": 0, "files_incomplete": 0}

    def probe(self, path: str, executable: bool) -> int:
        """Attach to the OpenSSL in path (an executable holding all of it, or
        a libssl and its libcrypto); returns how many probes attached."""
        if executable:
            attached = self._attach(path, {**SSL_FUNCTIONS, **BIO_FUNCTIONS})
        else:
            attached = self._attach(path, SSL_FUNCTIONS)
            crypto = libcrypto_beside(path)
            attached = attached and crypto and self._attach(crypto, BIO_FUNCTIONS)
        if attached:
            self.counts["files_probed"] += 1
        else:
            self.counts["files_incomplete"] += 1
            log.info("tls: no memory-BIO probes for %s (symbols missing)", path)
        return attached or 0

    def _attach(self, path: str, functions: dict[str, int]) -> int:
        try:
            st = os.stat(path)
        except OSError:
            return 0
        key = (st.st_dev, st.st_ino)
        if key in self._seen:
            return 1   # already probed through another path: one probe per inode
        offsets, _ = function_symbols(path, functions)
        if not offsets:
            return 0
        attached = self.capture.attach_uprobes(
            "tls_membio_enter", path, [(offset, functions[name]) for name, offset in offsets.items()],
            False)
        if attached:
            self._seen.add(key)
            self.counts["probes_attached"] += attached
        return attached

    def describe(self) -> str:
        """The doctor's line: what memory-BIO programs get on this node."""
        probed, incomplete = self.counts["files_probed"], self.counts["files_incomplete"]
        if not probed and not incomplete:
            return "  memory BIOs (Node.js, Python asyncio): no OpenSSL found to probe"
        line = (f"  memory BIOs (Node.js, Python asyncio): {probed} OpenSSL file(s) bind SSL "
                f"objects to sockets by their TLS records")
        if incomplete:
            line += (f"; {incomplete} without SSL_set_bio/BIO_write (their memory-BIO "
                     "plaintext is counted in otel_ebpf_kernel_tls_unmapped_total, not traced)")
        return line


def binding_counts(capture) -> dict[str, int]:
    """Each result's count, summed over CPUs; 0 where the map cannot be read."""
    fd = capture.front_end.map_fd("membio_results")
    ncpus = libbpf.lib().libbpf_num_possible_cpus()
    buffer = libbpf.ffi.new("char[]", max(ncpus, 1) * _COUNT.size)
    counts = {}
    for result, slot in RESULTS.items():
        found = libbpf.lib().bpf_map_lookup_elem(fd, _SLOT.pack(slot), buffer) == 0
        raw = libbpf.ffi.buffer(buffer)
        counts[result] = sum(value for (value,) in _COUNT.iter_unpack(raw)) if found else 0
    return counts


def counter_values(capture) -> list:
    """(declaration, value) pairs for the self-metrics endpoint."""
    counts = binding_counts(capture)
    return [(declared, counts[declared.key]) for declared in COUNTERS]
