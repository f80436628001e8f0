"""TLS plaintext capture: find the OpenSSL copies processes use and attach
the capture object's uprobes (bpf/capture.bpf.c, "TLS plaintext") to each.

A uprobe belongs to a file, not a process: attached once to a library file
with pid -1, it fires in every process that maps that file, including
processes started later.  So each distinct file (device and inode, seen
through /proc/PID/root so that containers' own copies count) is probed once:
- the system's libssl (from the dynamic linker's cache) at start-up, mapped
  by anyone or not, so a process started later is traced from its first call;
- every libssl a running process maps (/proc/PID/maps) at start-up: wheels
  and containers bring their own copies;
- after an exec the kernel reports (EVENT_PROCESS_EXEC), that process's maps
  and executable, a few times over its first seconds (libraries are mapped
  after exec, some by dlopen much later), and every process again at a slow
  interval for libraries loaded later still;
- executables that link OpenSSL statically, when they keep the symbols;
- Go executables, whose crypto/tls agent/capture/go_tls.py probes.

The plaintext then enters the same pipeline as cleartext socket data, with
FLAG_TLS.  Memory-BIO users (Python's asyncio, Node) never do socket I/O
under SSL_read/SSL_write: agent/capture/tls_membio.py ties their SSL objects
to sockets by the bytes of their TLS records; calls still not tied to a
connection are counted in otel_ebpf_kernel_tls_unmapped_total.
"""
from __future__ import annotations

import heapq
import logging
import mmap
import os
import struct
import subprocess
import time

from agent.capture.elf import function_symbols
from agent.capture.go_binaries import is_go_executable
from agent.capture.go_tls import GoTlsProbes
from agent.capture.records import C, EVENT_HEADER_SIZE
from agent.capture.tls_membio import MemoryBioProbes

log = logging.getLogger(__name__)

# The functions probed and their cookies (bpf/events.h TLS_FN_*): tls_enter
# sits on each entry, tls_exit on the returns of those that move data.
OPENSSL_FUNCTIONS = {
    "SSL_write": C["TLS_FN_WRITE"], "SSL_read": C["TLS_FN_READ"],
    "SSL_write_ex": C["TLS_FN_WRITE_EX"], "SSL_read_ex": C["TLS_FN_READ_EX"],
    "SSL_set_fd": C["TLS_FN_SET_FD"],
}
_RETURNING = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex")
# Every OpenSSL since 0.9 has these two; the _ex variants came with 1.1.1.
REQUIRED_SYMBOLS = ("SSL_read", "SSL_write")
_SYMBOL_MARKERS = (b"\0SSL_read\0", b"\0SSL_write\0")

# Seconds after an exec at which that process is looked at again.
EXEC_RESCANS_S = (0.05, 0.5, 2.0, 8.0)
FULL_RESCAN_S = 30.0
_PID = struct.Struct("<4xI")
_PATH_BYTES = C["TLS_LIBRARY_PATH_BYTES"]


def system_libssl_paths() -> list[str]:
    """The libssl files the dynamic linker's cache knows."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.rpartition("=> ")[2].strip() for line in out.splitlines()
                   if "libssl.so" in line and "=> " in line})


def mapped_libssl_paths(maps_text: str) -> set[str]:
    """Paths of libssl files in the text of a /proc/PID/maps."""
    paths = set()
    for line in maps_text.splitlines():
        slash = line.find("/")
        if slash >= 0 and "libssl" in line:
            path = line[slash:]
            name = path.rpartition("/")[2]
            if name.startswith("libssl") and ".so" in name and not path.endswith(" (deleted)"):
                paths.add(path)
    return paths


def has_openssl_symbols(path: str) -> bool:
    """Cheap look for SSL_read and SSL_write in a file's string tables
    before asking libbpf for the symbols (it parses the ELF)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return all(m.find(marker) >= 0 for marker in _SYMBOL_MARKERS)
    except (OSError, ValueError):
        return False


def parse_library_record(record) -> tuple[int, str]:
    """(pid, path) of an EVENT_TLS_LIBRARY_OPEN record (its length checked
    by the router)."""
    (pid,) = _PID.unpack_from(record)
    raw = bytes(record[EVENT_HEADER_SIZE:EVENT_HEADER_SIZE + _PATH_BYTES])
    return pid, raw.split(b"\0", 1)[0].decode(errors="surrogateescape")


class TlsProbes:
    """Attaches the TLS uprobes to each OpenSSL file once; counts what it did."""

    def __init__(self, capture, proc: str = "/proc"):
        self.capture = capture
        self.proc = proc
        self._seen: dict[tuple[int, int], bool] = {}   # (dev, ino) -> probed
        self._due: list[tuple[float, int]] = []        # (monotonic time, pid)
        self._next_full = 0.0
        self.counts = {"files_probed": 0, "files_without_symbols": 0, "probes_attached": 0}
        self.probed_files: list[str] = []   # the first few, for the doctor and the log
        self.membio = MemoryBioProbes(capture)   # SSL <-> socket where BIOs are memory
        self.go = GoTlsProbes(capture)      # Go executables: crypto/tls, not OpenSSL

    def start(self) -> None:
        for path in system_libssl_paths():
            self._probe_file(path)
        self.scan_all()

    def scan_all(self) -> None:
        self._next_full = time.monotonic() + FULL_RESCAN_S
        own = os.getpid()
        for entry in os.scandir(self.proc):
            if entry.name.isdigit() and int(entry.name) != own:
                self.scan_process(int(entry.name))

    def scan_process(self, pid: int) -> None:
        root = f"{self.proc}/{pid}/root"
        try:
            with open(f"{self.proc}/{pid}/maps") as f:
                paths = mapped_libssl_paths(f.read())
        except OSError:
            return   # gone, or a kernel thread
        for path in paths:
            self._probe_file(root + path)
        self._probe_file(f"{self.proc}/{pid}/exe", executable=True)

    def libraries_opened(self, records) -> None:
        """Probe the libssl files traced processes just opened
        (EVENT_TLS_LIBRARY_OPEN records, bpf/tls_library_watch.h): the
        dynamic loader has not mapped them yet, and a probe on the file
        covers the mapping it is about to make."""
        for record in records:
            pid, path = parse_library_record(record)
            where = f"{self.proc}/{pid}/root" if path.startswith("/") else f"{self.proc}/{pid}/cwd/"
            self._probe_file(where + path)

    def exec_seen(self, pids) -> None:
        now = time.monotonic()
        for pid in pids:
            for delay in EXEC_RESCANS_S:
                heapq.heappush(self._due, (now + delay, pid))

    def poll(self, now: float) -> None:
        """Run the scans that are due; cheap when none is."""
        due = self._due
        while due and due[0][0] <= now:
            self.scan_process(heapq.heappop(due)[1])
        if now >= self._next_full:
            self.scan_all()

    def next_due(self) -> float:
        """When poll() next has a scan to run (monotonic seconds)."""
        return min(self._due[0][0], self._next_full) if self._due else self._next_full

    def _probe_file(self, path: str, executable: bool = False) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in self._seen:
            return
        if executable and is_go_executable(path):
            self._seen[key] = self.go.probe(path)
            return
        if executable and not has_openssl_symbols(path):
            self._seen[key] = False
            return
        # A uprobe belongs to the inode: a /proc/PID/root path reaches a
        # container's file while the process lives, and the probe stays.
        offsets, imported = function_symbols(path, OPENSSL_FUNCTIONS)
        if executable and not offsets and imported.issuperset(REQUIRED_SYMBOLS):
            # Linked against a shared libssl, whose own file is probed: not
            # a copy of OpenSSL the agent fails to trace.
            self._seen[key] = False
            return
        attached = 0
        if all(name in offsets for name in REQUIRED_SYMBOLS):
            attached = self.capture.attach_uprobes(
                "tls_enter", path,
                [(offset, OPENSSL_FUNCTIONS[name]) for name, offset in offsets.items()], False)
            if attached:
                attached += self.capture.attach_uprobes(
                    "tls_exit", path, [(offsets[name], OPENSSL_FUNCTIONS[name])
                                       for name in _RETURNING if name in offsets], True)
                self.membio.probe(path, executable)
        self._seen[key] = attached > 0
        if attached:
            self.counts["files_probed"] += 1
            self.counts["probes_attached"] += attached
            real = os.path.realpath(path)
            if len(self.probed_files) < 32:
                self.probed_files.append(real)
            log.info("tls: %d probes on %s", attached, real)
        else:
            self.counts["files_without_symbols"] += 1
