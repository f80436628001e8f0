"""Kernel headers for the BCC front end: where they are, and which kernel
they were made for.

BCC compiles the capture at start and needs the kernel's headers: a
configured directory, else /lib/modules/<release>/build, else the newest
headers package under /usr/src for this architecture.  Distributions
split them in two (Debian: linux-headers-<release> holds the generated
files and points at linux-headers-<version>-common for the rest); BCC takes
one directory, so a split tree is joined in a private directory of symlinks.
Headers for another kernel are accepted: the BCC build reads no kernel
struct (bpf/frontend.h), so only user-ABI types come from them.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MODULES_DIR = Path("/lib/modules")
SOURCES_DIR = Path("/usr/src")
_KCONFIG = Path("include/linux/kconfig.h")
_GENERATED = Path("include/generated/autoconf.h")
_UTS_RELEASE = Path("include/generated/utsrelease.h")
_MAKEFILE_INCLUDE = re.compile(r"^include\s+(\S+)/Makefile\s*$", re.MULTILINE)
_RELEASE = re.compile(rb'#define\s+UTS_RELEASE\s+"([^"]+)"')


class KernelHeadersError(RuntimeError):
    pass


@dataclass
class KernelHeaders:
    path: Path                 # the one directory BCC is given
    release: str               # the kernel the headers were made for
    running: str               # the kernel this machine runs
    origin: Path               # where they were found
    _joined: str | None = field(default=None, repr=False)

    @property
    def match_running_kernel(self) -> bool:
        return self.release == self.running

    def describe(self) -> str:
        where = f"{self.origin} (kernel {self.release})"
        if self.match_running_kernel:
            return where
        return (f"{where}, not the running {self.running}: fine for the BCC build, "
                "which reads tracepoint arguments and user memory only")

    def close(self) -> None:
        if self._joined:
            shutil.rmtree(self._joined, ignore_errors=True)
            self._joined = None


def _source_dir(build: Path) -> Path | None:
    """The other half of a split header tree; build as given, unresolved
    (/lib/modules/<release>/build and source are links side by side)."""
    source = build.parent / "source"
    if build.name == "build" and (source / _KCONFIG).exists():
        return source.resolve()
    try:
        makefile = (build / "Makefile").read_text(errors="replace")
    except OSError:
        return None
    match = _MAKEFILE_INCLUDE.search(makefile)
    if match and (Path(match.group(1)) / _KCONFIG).exists():
        return Path(match.group(1))
    return None


def _join(build: Path, source: Path) -> str:
    """One tree of symlinks: the source tree with the build tree's generated
    files beside it, at the two levels where both have files.  The build
    tree's entries win: a source tree configured in place has stale ones."""
    joined = tempfile.mkdtemp(prefix="otel-ebpf-kernel-headers-")
    for entry in source.iterdir():
        if entry.name not in ("include", "arch"):
            os.symlink(entry, os.path.join(joined, entry.name))
    for level in [Path("include")] + [Path("arch") / a.name / "include"
                                      for a in (source / "arch").iterdir()
                                      if (a / "include").is_dir()]:
        target = Path(joined) / level
        target.mkdir(parents=True, exist_ok=True)
        for tree in (build, source):
            if not (tree / level).is_dir():
                continue
            for entry in (tree / level).iterdir():
                if not (target / entry.name).exists():
                    os.symlink(entry, target / entry.name)
    return joined


def _release(tree: Path) -> str:
    try:
        match = _RELEASE.search((tree / _UTS_RELEASE).read_bytes())
    except OSError:
        match = None
    return match.group(1).decode() if match else "unknown"


def _kernel_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "x86", "aarch64": "arm64"}.get(machine, machine)


def _installed_trees(arch: str) -> list[Path]:
    """Configured header trees of this architecture under /usr/src, newest last."""
    trees = [p.parents[3] for p in SOURCES_DIR.glob(f"*/arch/{arch}/include/generated")
             if (p.parents[3] / _GENERATED).exists()]
    return sorted(trees, key=lambda tree: os.stat(tree).st_mtime)


def find(configured: str | None = None, running: str | None = None) -> KernelHeaders:
    """The kernel headers BCC will compile against, or a clear error."""
    running = running or os.uname().release
    default = MODULES_DIR / running / "build"
    if configured:
        tree = Path(configured)
        if not tree.is_dir():
            raise KernelHeadersError(f"kernel headers: {tree} is not a directory")
    elif default.is_dir():
        tree = default
    else:
        installed = _installed_trees(_kernel_arch())
        if not installed:
            raise KernelHeadersError(
                f"the BCC loader needs kernel headers and found none at {default} or in "
                f"{SOURCES_DIR}. Install the distribution's package (Debian/Ubuntu: "
                f"linux-headers-{running}; Fedora/RHEL: kernel-devel), or pass "
                "--kernel-headers DIR (headers of another kernel version work: the BCC build "
                "reads no kernel struct)")
        tree = installed[-1]
    given, tree = tree, tree.resolve()
    if not (tree / _GENERATED).exists():
        raise KernelHeadersError(
            f"kernel headers at {tree} lack {_GENERATED}: point --kernel-headers at a "
            "configured tree (the build directory of a headers package)")
    if (tree / _KCONFIG).exists():
        return KernelHeaders(tree, _release(tree), running, tree)
    source = _source_dir(given)
    if source is None:
        raise KernelHeadersError(
            f"kernel headers at {tree} hold only generated files and name no source tree "
            f"with {_KCONFIG} (neither a 'source' link beside it nor a Makefile include)")
    joined = _join(tree, source)
    return KernelHeaders(Path(joined), _release(tree), running, tree, joined)
