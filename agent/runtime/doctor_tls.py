"""The doctor's OpenSSL runtime lines: for each way OpenSSL is used on this
node (the libssl files the linker knows or processes map, node executables
running or on PATH), one line saying what the agent covers of it.

Coverage is read from the files themselves (their ELF symbols), not from a
trial attachment, so the lines hold for programs started later as well:
- OpenSSL over a socket BIO: SSL_read/SSL_write make the socket call;
- OpenSSL over memory BIOs (Node.js with OpenSSL in its executable, Python
  asyncio with the system libssl): bound by SSL_set_bio + BIO_write
  (agent/capture/tls_membio.py).
Stacks out of reach (BoringSSL inside grpcio or Envoy, rustls, Java) have
lines of their own, from the doctor's scan for them.
"""
from __future__ import annotations

import os
import shutil

from agent.capture.elf import function_symbols
from agent.capture.tls import REQUIRED_SYMBOLS, mapped_libssl_paths, system_libssl_paths
from agent.capture.tls_membio import BIO_FUNCTIONS, SSL_FUNCTIONS, libcrypto_beside

MEMBIO_SSL = tuple(SSL_FUNCTIONS)
MEMBIO_BIO = tuple(BIO_FUNCTIONS)
MAX_LISTED = 3


def _has_all(path: str, names) -> bool:
    offsets, _ = function_symbols(path, names)
    return all(name in offsets for name in names)


def _listed(paths) -> str:
    paths = sorted(paths)
    shown = ", ".join(paths[:MAX_LISTED])
    return shown + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


class NodeFiles:
    """What the running processes use: executables and mapped files, each
    real path once."""

    def __init__(self, proc: str = "/proc"):
        self.executables: set[str] = set()
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
        for command in ("node", "nodejs"):
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


def tls_runtime_lines(proc: str = "/proc") -> list[str]:
    """The doctor's block: one line per TLS runtime, what the agent covers
    (alike under both loaders)."""
    files = NodeFiles(proc)
    return ["OpenSSL runtimes on this node:"] + _openssl_lines(files) + [_node_line(files)]
