"""Which processes to trace: by pid, executable, cgroup or container.

Selectors add up (a process picked by any one is traced).  Executables
become pids and containers become cgroups here, in userspace; the kernel
checks pids and cgroup v2 ids (bpf_get_current_cgroup_id), so a process
that starts inside a selected cgroup is traced from its first syscall.  The
resolution is redone at each housekeeping pass, so new processes of a
selected executable, new containers and new child cgroups join.
"""
from __future__ import annotations

import os


def cgroup2_root(mounts_text: str | None = None) -> str | None:
    """Where the cgroup v2 hierarchy is mounted (pure systems: /sys/fs/cgroup;
    hybrid ones: /sys/fs/cgroup/unified)."""
    if mounts_text is None:
        try:
            with open("/proc/mounts") as f:
                mounts_text = f.read()
        except OSError:
            return None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return fields[1]
    return None


def process_cgroup2_path(cgroup_text: str) -> str | None:
    """The v2 path ("0::/a/b") from a /proc/PID/cgroup text."""
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


class Selection:
    def __init__(self, pids=(), exes=(), cgroups=(), containers=(), cgroup_root: str | None = None):
        self.pids = set(pids)
        self.exes = set(exes)
        self.cgroup_paths = list(cgroups)
        self.containers = [c.lower() for c in containers]
        self.cgroup_root = cgroup_root or cgroup2_root()
        if (self.cgroup_paths or self.containers) and self.cgroup_root is None:
            raise ValueError("--cgroup and --container need the cgroup v2 hierarchy, "
                             "which is not mounted (no cgroup2 entry in /proc/mounts)")
        for container in self.containers:
            if len(container) < 12 or any(c not in "0123456789abcdef" for c in container):
                raise ValueError(f"--container {container!r}: give at least 12 hex digits "
                                 "of the container id")
        self.known_pids: set[int] = set()
        self.known_cgroups: set[int] = set()

    @property
    def by_process(self) -> bool:
        return bool(self.pids or self.exes)

    @property
    def by_cgroup(self) -> bool:
        return bool(self.cgroup_paths or self.containers)

    def _scan_proc(self) -> tuple[set[int], set[str]]:
        """Pids of the selected executables, and cgroup paths of the
        selected containers, from one pass over /proc."""
        pids = set(self.pids)
        container_paths: set[str] = set()
        if not self.exes and not self.containers:
            return pids, container_paths
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            if self.exes and self._selected_exe(entry.name):
                pids.add(int(entry.name))
            if self.containers:
                try:
                    with open(f"/proc/{entry.name}/cgroup") as f:
                        path = process_cgroup2_path(f.read())
                except OSError:
                    continue
                if path and any(c in path for c in self.containers):
                    container_paths.add(path)
        return pids, container_paths

    def _selected_exe(self, pid) -> bool:
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            return False
        return exe.removesuffix(" (deleted)") in self.exes

    def exec_seen(self, pids, capture) -> None:
        """Processes that just started a program (the kernel's exec reports):
        select those running a selected executable now, not at the next scan."""
        if not self.exes:
            return
        for pid in pids:
            if pid in self.known_pids:
                continue
            if self._selected_exe(pid):
                capture.allow_pid(pid)
                self.known_pids.add(pid)
            else:
                # The kernel selects by the name it keeps (exe_filter), which
                # a symlink's name can also match; and a process that already
                # exited leaves its entry: the executable decides.
                capture.disallow_pid(pid)

    def _cgroup_ids(self, paths) -> set[int]:
        """Inode numbers (the cgroup ids) of these cgroups and their descendants."""
        ids = set()
        for path in paths:
            directory = path if path.startswith(self.cgroup_root) else \
                os.path.join(self.cgroup_root, path.lstrip("/"))
            for root, _, _ in os.walk(directory):
                try:
                    ids.add(os.stat(root).st_ino)
                except OSError:
                    continue
        return ids

    def resolve(self) -> tuple[set[int] | None, set[int] | None]:
        """(pids, cgroup ids) for the kernel filters; None where that kind
        of selector is not in use."""
        pids, container_paths = self._scan_proc()
        cgroups = self._cgroup_ids(self.cgroup_paths + sorted(container_paths)) \
            if self.by_cgroup else None
        return (pids if self.by_process else None), cgroups

    def install_exes(self, capture) -> None:
        """Let the kernel select processes that exec a selected executable."""
        for exe in self.exes:
            capture.allow_exe(exe)

    def refresh(self, capture) -> None:
        pids, cgroups = self.resolve()
        if pids is not None:
            for pid in pids - self.known_pids:
                capture.allow_pid(pid)
            for pid in self.known_pids - pids:
                capture.disallow_pid(pid)
            self.known_pids = pids
        if cgroups is not None:
            for cgroup_id in cgroups - self.known_cgroups:
                capture.allow_cgroup(cgroup_id)
            for cgroup_id in self.known_cgroups - cgroups:
                capture.disallow_cgroup(cgroup_id)
            self.known_cgroups = cgroups
