"""The doctor's TLS runtime lines: for each TLS stack found on this node
(running processes' executables and mapped libraries, and the `node` and
`java` commands on PATH), one line saying what the agent covers of it.

Coverage is read from the files themselves (their ELF symbols), not from a
trial attachment, so the lines hold for programs started later as well:
- OpenSSL over a socket BIO: SSL_read/SSL_write make the socket call;
- OpenSSL over memory BIOs (Node.js with OpenSSL in its executable, Python
  asyncio with the system libssl): bound by SSL_set_bio + BIO_write
  (agent/capture/tls_membio.py);
- out of reach: BoringSSL inside grpcio or Envoy, rustls, Java.
"""
from __future__ import annotations

import mmap
import os
import shutil

from agent.capture.elf import function_symbols
from agent.capture.tls import REQUIRED_SYMBOLS, mapped_libssl_paths, system_libssl_paths
from agent.capture.tls_membio import BIO_FUNCTIONS, SSL_FUNCTIONS, libcrypto_beside

MEMBIO_SSL = tuple(SSL_FUNCTIONS)
MEMBIO_BIO = tuple(BIO_FUNCTIONS)
# Files that carry a stack the agent cannot read, by what their path holds.
GRPCIO_MARKER = "cygrpc"        # grpcio's extension module, BoringSSL linked in
JVM_MARKER = "libjvm.so"
RUSTLS_MARKER = b"rustls"       # crate paths in panic messages and symbols
MAX_LISTED = 3


def _has_all(path: str, names) -> bool:
    offsets, _ = function_symbols(path, names)
    return all(name in offsets for name in names)


def _listed(paths) -> str:
    paths = sorted(paths)
    shown = ", ".join(paths[:MAX_LISTED])
    return shown + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


def _contains(path: str, marker: bytes) -> bool:
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(marker) >= 0
    except (OSError, ValueError):
        return False


class NodeFiles:
    """What the running processes use: executables and mapped files, each
    real path once."""

    def __init__(self, proc: str = "/proc"):
        self.executables: set[str] = set()
        self.mapped: set[str] = set()
        self.libssl = {os.path.realpath(path) for path in system_libssl_paths()}
        own = os.getpid()
        for entry in os.scandir(proc):
            if not entry.name.isdigit() or int(entry.name) == own:
                continue
            try:
                self.executables.add(os.path.realpath(f"{entry.path}/exe", strict=True))
                with open(f"{entry.path}/maps") as f:
                    maps = f.read()
            except OSError:
                continue   # gone, or a kernel thread
            self.libssl |= {os.path.realpath(p) for p in mapped_libssl_paths(maps)}
            self.mapped |= {line[line.find("/"):] for line in maps.splitlines()
                            if "/" in line and (GRPCIO_MARKER in line or JVM_MARKER in line)}
        for command in ("node", "nodejs", "java"):
            found = shutil.which(command)
            if found:
                self.executables.add(os.path.realpath(found))

    def named(self, *names: str) -> set[str]:
        return {path for path in self.executables if os.path.basename(path) in names}


def _openssl_lines(files: NodeFiles) -> list[str]:
    libssl = {path for path in files.libssl if _has_all(path, REQUIRED_SYMBOLS)}
    if not libssl:
        return ["  OpenSSL, socket BIO: no libssl found",
                "  OpenSSL, memory BIO (Python asyncio, system libssl): no libssl found"]
    membio = {path for path in libssl if _has_all(path, MEMBIO_SSL[:1])
              and (crypto := libcrypto_beside(path)) and _has_all(crypto, MEMBIO_BIO[:1])}
    lines = [f"  OpenSSL, socket BIO (curl, nginx, libpq, Python ssl on blocking sockets): "
             f"traced, SSL_read/SSL_write make the socket call; {_listed(libssl)}"]
    if membio:
        lines.append(f"  OpenSSL, memory BIO (Python asyncio: uvicorn, aiohttp, asyncpg): traced, "
                     f"SSL bound to its socket by its TLS records; {_listed(membio)}")
    else:
        lines.append("  OpenSSL, memory BIO (Python asyncio): not traced, no libssl here has "
                     "SSL_set_bio with a libcrypto holding BIO_write beside it")
    return lines


def _node_line(files: NodeFiles) -> str:
    nodes = files.named("node", "nodejs")
    if not nodes:
        return "  OpenSSL, memory BIO (Node.js): no node executable found"
    inside = {path for path in nodes if _has_all(path, REQUIRED_SYMBOLS + MEMBIO_SSL[:1]
                                                 + MEMBIO_BIO[:1])}
    if not inside:
        return (f"  OpenSSL, memory BIO (Node.js): not traced, {_listed(nodes)} has no OpenSSL "
                "symbols of its own (SSL_read, SSL_set_bio, BIO_write)")
    return (f"  OpenSSL, memory BIO (Node.js, OpenSSL inside the executable): traced, SSL bound "
            f"to its socket by its TLS records; {_listed(inside)}")


def _out_of_reach_lines(files: NodeFiles) -> list[str]:
    grpcio = {path for path in files.mapped if GRPCIO_MARKER in path}
    envoy = files.named("envoy")
    java = files.named("java") | {path for path in files.mapped if JVM_MARKER in path}
    rustls = {path for path in files.executables - files.named("node", "nodejs", "java")
              if _contains(path, RUSTLS_MARKER)}

    def found(paths) -> str:
        return f"found: {_listed(paths)}" if paths else "none found"
    return [f"  BoringSSL inside grpcio/Envoy: out of reach (linked in and stripped: no "
            f"symbols to probe); {found(grpcio | envoy)}",
            f"  rustls: out of reach (no stable symbols); {found(rustls)}",
            f"  Java (JSSE): out of reach (TLS inside the JVM, in JIT-compiled code); "
            f"{found(java)}"]


def tls_runtime_lines(proc: str = "/proc") -> list[str]:
    """The doctor's block: one line per TLS runtime, what the agent covers
    (alike under both loaders)."""
    files = NodeFiles(proc)
    return (["TLS runtimes on this node:"] + _openssl_lines(files) + [_node_line(files)]
            + _out_of_reach_lines(files))
