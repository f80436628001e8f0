"""Which TLS stacks the node's running processes use, for `otel-ebpf doctor`.

The TLS probes (agent/capture/tls.py, go_tls.py) read OpenSSL and Go's
crypto/tls.  Other stacks are out of reach; a user deciding whether to trust
the agent with a node needs to know which of its processes use one, so the
doctor names them from the files each process maps.  Static stacks that
leave no file behind (rustls, BoringSSL linked into an executable other
than Envoy's) cannot be recognised this way and are only listed as limits.
"""
from __future__ import annotations

import os
from typing import NamedTuple


class TlsRuntime(NamedTuple):
    name: str
    why_not: str             # why the agent cannot read it


# (marker in a mapped file's name, or in the executable's name) -> runtime.
MAPPED_MARKERS: tuple[tuple[str, TlsRuntime], ...] = (
    ("cygrpc", TlsRuntime("BoringSSL in grpcio",
                          "statically linked and stripped: no symbols to probe")),
    ("libgrpc", TlsRuntime("BoringSSL in gRPC C-core",
                           "statically linked and stripped: no symbols to probe")),
    ("libjvm.so", TlsRuntime("Java (JSSE)",
                             "TLS runs in JIT-compiled code, which moves")),
    ("libgnutls", TlsRuntime("GnuTLS", "no probes for GnuTLS's functions")),
)
EXECUTABLE_MARKERS: tuple[tuple[str, TlsRuntime], ...] = (
    ("envoy", TlsRuntime("BoringSSL in Envoy",
                         "statically linked and stripped: no symbols to probe")),
)


def runtimes_of(maps_text: str, executable: str) -> set[TlsRuntime]:
    """The out-of-reach TLS stacks one process uses, from its maps' text and
    its executable's file name."""
    found = set()
    for line in maps_text.splitlines():
        slash = line.find("/")
        if slash < 0:
            continue
        name = line[slash:].rpartition("/")[2]
        for marker, runtime in MAPPED_MARKERS:
            if marker in name:
                found.add(runtime)
    for marker, runtime in EXECUTABLE_MARKERS:
        if executable == marker:
            found.add(runtime)
    return found


def scan(proc: str = "/proc") -> dict[TlsRuntime, list[str]]:
    """Out-of-reach TLS stack -> the executable names of the processes using it."""
    users: dict[TlsRuntime, set[str]] = {}
    own = os.getpid()
    for entry in os.scandir(proc):
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            with open(f"{entry.path}/maps") as f:
                maps_text = f.read()
            executable = os.path.basename(os.readlink(f"{entry.path}/exe"))
        except OSError:
            continue   # gone, or a kernel thread
        for runtime in runtimes_of(maps_text, executable):
            users.setdefault(runtime, set()).add(executable)
    return {runtime: sorted(names) for runtime, names in users.items()}


def describe(found: dict[TlsRuntime, list[str]], shown: int = 5) -> list[str]:
    """Doctor lines: each out-of-reach stack in use, and who uses it."""
    lines = []
    for runtime in sorted(found, key=lambda r: r.name):
        names = found[runtime]
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        lines.append(f"{runtime.name}: NOT covered ({runtime.why_not}); used by "
                     f"{', '.join(names[:shown])}{more}: their TLS traffic gives no spans")
    if not found:
        lines.append("No running process uses a TLS stack known to be out of reach "
                     "(BoringSSL in grpcio/Envoy, Java, GnuTLS); rustls and other "
                     "static stacks cannot be recognised from outside")
    return lines
