"""Go crypto/tls plaintext: attach bpf/go_tls.h's uprobes to Go executables.

agent/capture/tls.py's TlsProbes looks at every traced process's executable
(at start, after each exec, and at its slow rescan) and hands Go ones here.
Each distinct file gets a number (its index in the kernel's go_tls_binaries
and go_tls_counts), its socket layout from DWARF, and uprobes at the entry
and every RET of crypto/tls.(*Conn).Read and .Write, cookies naming both.
"""
from __future__ import annotations

import logging
import os
import struct

from prometheus_client.core import CounterMetricFamily

from agent.capture import go_binaries, libbpf, records
from agent.capture.go_binaries import inspect
from agent.capture.libbpf import check_ret, ffi
from agent.capture.records import C, struct_format

log = logging.getLogger(__name__)

_BINARY = struct.Struct(struct_format("struct go_tls_binary")[0])
_COUNTS = struct.Struct(struct_format("struct go_tls_counts")[0])
_INDEX = struct.Struct("<I")
_CALL_KEY_SIZE = records.ffi.sizeof("struct go_call_key")
_CALL_KEY_TGID = records.ffi.offsetof("struct go_call_key", "tgid")
_SHIFT = C["GO_TLS_BINARY_SHIFT"]
MAX_BINARIES = C["GO_TLS_MAX_BINARIES"]
ENTRY_PROGRAM = "tls_go_enter"
RETURN_PROGRAM = "tls_go_exit"

SKIP_NOT_LOADED = "capture_without_go_tls"
SKIP_TOO_MANY = "too_many_binaries"
SKIP_ATTACH_FAILED = "attach_failed"
SOCKET_FROM_DWARF = "dwarf"
SOCKET_FROM_THREAD = "thread_io"


def _cookie(index: int, function: int) -> int:
    return (index << _SHIFT) | function


def supported(capture) -> str | None:
    """None when the loaded capture has the Go TLS programs, else why not."""
    try:
        capture.front_end.program_fd(ENTRY_PROGRAM)
    except KeyError:
        return (f"the {capture.front_end.name} build has no Go TLS probes "
                "(bpf/go_tls.h reads x86-64 registers; TLS capture may be off)")
    return None


class GoTlsMaps:
    """The Go TLS probes' kernel tables (bpf/go_tls.h) of a loaded capture."""

    def __init__(self, capture):
        self.binaries = capture.optional_map_fd("go_tls_binaries")
        self.counts = capture.optional_map_fd("go_tls_counts")
        self.calls = capture.optional_map_fd("go_tls_calls")

    def set_binary(self, index: int, layout: bytes) -> None:
        check_ret(libbpf.lib().bpf_map_update_elem(self.binaries, _INDEX.pack(index), layout, 0),
                  "update go_tls_binaries")

    def binary_counts(self, index: int) -> tuple[int, int]:
        """(calls, unmapped) of the binary numbered index."""
        value = ffi.new("char[]", _COUNTS.size)
        check_ret(libbpf.lib().bpf_map_lookup_elem(self.counts, _INDEX.pack(index), value),
                  "lookup go_tls_counts")
        return _COUNTS.unpack(ffi.buffer(value))

    def forget_process(self, pid: int) -> None:
        """Drop the calls an exited process left in flight (a goroutine
        parked in a Read when it ended never reaches a RET)."""
        lib = libbpf.lib()
        key, next_key = ffi.new("char[]", _CALL_KEY_SIZE), ffi.new("char[]", _CALL_KEY_SIZE)
        stale, previous = [], ffi.NULL
        while lib.bpf_map_get_next_key(self.calls, previous, next_key) == 0:
            raw = ffi.buffer(next_key)[:]
            if _INDEX.unpack_from(raw, _CALL_KEY_TGID)[0] == pid:
                stale.append(raw)
            ffi.memmove(key, raw, _CALL_KEY_SIZE)
            previous = key
        for raw in stale:
            lib.bpf_map_delete_elem(self.calls, raw)


class GoTlsProbes:
    """Probes each Go executable once; counts per binary what it did."""

    def __init__(self, capture, maps=None):
        self.capture = capture
        self.unavailable = supported(capture)
        if maps is None and not self.unavailable:
            maps = GoTlsMaps(capture)
            capture.process_exit_hooks.append(self.forget_process)
        self.maps = maps
        # Probed binaries: (index, path, go version, socket source), by index.
        self.binaries: list[tuple[int, str, str, str]] = []
        # outcome (SOCKET_FROM_* when probed, else a skip reason) -> binaries
        self.outcomes: dict[str, int] = {}
        self.skipped: list[tuple[str, str]] = []   # the first few (path, reason)
        self.probes_attached = 0

    def _count(self, outcome: str, path: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome not in (SOCKET_FROM_DWARF, SOCKET_FROM_THREAD) and len(self.skipped) < 32:
            self.skipped.append((path, outcome))

    def probe(self, path: str) -> bool:
        """Attach to the Go executable at path; False if skipped (counted)."""
        real = os.path.realpath(path)
        if self.unavailable:
            self._count(SKIP_NOT_LOADED, real)
            return False
        # /proc/PID/exe goes with its process, which may exit while the
        # DWARF is read: hold the file open and reach it through the fd.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._count(go_binaries.SKIP_UNREADABLE, real)
            return False
        try:
            return self._probe(f"/proc/self/fd/{fd}", real)
        finally:
            os.close(fd)

    def _probe(self, path: str, real: str) -> bool:
        inspection = inspect(path)
        targets = inspection.targets
        if targets is None:
            self._count(inspection.skip_reason, real)
            return False
        index = len(self.binaries)
        if index >= MAX_BINARIES:
            self._count(SKIP_TOO_MANY, real)
            return False
        layout = targets.layout
        self.maps.set_binary(index, _BINARY.pack(
            targets.tcp_conn_itab, *(layout or (0, 0, 0)), 1 if layout else 0, b""))
        read, write = C["GO_TLS_FN_READ"], C["GO_TLS_FN_WRITE"]
        entries = [(targets.read_entry, _cookie(index, read)),
                   (targets.write_entry, _cookie(index, write))]
        returns = ([(offset, _cookie(index, read)) for offset in targets.read_returns]
                   + [(offset, _cookie(index, write)) for offset in targets.write_returns])
        attached = self.capture.attach_uprobes(ENTRY_PROGRAM, path, entries, False)
        if attached == len(entries):
            attached += self.capture.attach_uprobes(RETURN_PROGRAM, path, returns, False)
        if attached != len(entries) + len(returns):
            # Entries without all their returns: calls stay in flight until
            # the kernel's LRU table evicts them; the binary counts as failed.
            self._count(SKIP_ATTACH_FAILED, real)
            return False
        source = SOCKET_FROM_DWARF if layout else SOCKET_FROM_THREAD
        self.binaries.append((index, real, targets.go_version, source))
        self.probes_attached += attached
        self._count(source, real)
        log.info("go tls: %d probes on %s (%s, socket from %s)", attached, real,
                 targets.go_version, source)
        return True

    def forget_process(self, pid: int) -> None:
        """An exited process's calls in flight go; the table is walked only
        on a node where some Go executable was probed."""
        if self.binaries:
            self.maps.forget_process(pid)

    def counts(self) -> list[tuple[str, str, int, int]]:
        """(path, socket source, plaintext calls, calls not tied to a socket)
        of each probed binary, from the kernel's counters."""
        out = []
        for index, path, _, source in self.binaries:
            calls, unmapped = self.maps.binary_counts(index)
            out.append((path, source, calls, unmapped))
        return out


def metric_families(go: GoTlsProbes, prefix: str):
    """The Go TLS counts as Prometheus metric families."""
    binaries = CounterMetricFamily(
        f"{prefix}_go_tls_binaries",
        "Go executables looked at for crypto/tls, by outcome: probed with the socket found "
        "from DWARF or from the thread's socket I/O, or the reason they were skipped.",
        labels=["outcome"])
    for outcome, count in sorted(go.outcomes.items()):
        binaries.add_metric([outcome], count)
    yield binaries
    calls = CounterMetricFamily(
        f"{prefix}_go_tls_calls",
        "crypto/tls Read/Write calls that moved plaintext in a probed Go executable, by "
        "whether the call was tied to its socket (untied ones are not copied).",
        labels=["executable", "socket"])
    for path, _, total, unmapped in go.counts():
        calls.add_metric([path, "tied"], total - unmapped)
        calls.add_metric([path, "unmapped"], unmapped)
    yield calls


def go_tls_coverage(go: GoTlsProbes) -> str:
    """The doctor's line: what of Go's crypto/tls the agent reads here."""
    if go.unavailable:
        return f"Go TLS: not covered: {go.unavailable}"
    dwarf = go.outcomes.get(SOCKET_FROM_DWARF, 0)
    thread = go.outcomes.get(SOCKET_FROM_THREAD, 0)
    skipped = {why: n for why, n in go.outcomes.items()
               if why not in (SOCKET_FROM_DWARF, SOCKET_FROM_THREAD)}
    text = (f"Go TLS: covered for running Go executables: {dwarf + thread} probed "
            f"({dwarf} with DWARF, {thread} without: sockets from thread I/O, some calls lost)")
    if skipped:
        text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
    return text
