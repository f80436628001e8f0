"""One OpenTelemetry Resource per traced process, read once from /proc.

service.name follows the process's own OTEL_SERVICE_NAME (or the service.name
in its OTEL_RESOURCE_ATTRIBUTES), else the spec fallback
`unknown_service:<executable>`, never the agent's name.
"""
from __future__ import annotations

import os
import datetime
import re
import socket
import time
from typing import NamedTuple

from agent import DISTRO_NAME, __version__

_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessResource:
    """Resource attributes of one process; `encoded` is a cache slot that an
    exporter may fill with its own serialised form (one encoding per process)."""

    __slots__ = ("pid", "service_name", "attributes", "encoded", "used")

    def __init__(self, pid: int, attributes: list):
        self.pid = pid
        self.attributes = attributes
        self.service_name = next(v for k, v in attributes if k == "service.name")
        self.encoded = None
        self.used = False   # since the last forget_gone()


def _read(path: str, binary: bool = False):
    """A /proc file's bytes (or text), None when it cannot be read.  Plain
    os calls: half the cost of open()'s buffered file, on a path run at
    every exec."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    return raw if binary else raw.decode(errors="replace")


def _parse_resource_attributes(text: str) -> list:
    pairs = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs.append((key.strip(), value.strip()))
    return pairs


_OTEL_VARIABLE = re.compile(rb"(?:^|\0)(OTEL_[^=\0]*)=([^\0]*)")


def process_environment(pid: int) -> dict:
    """The process's OTEL_* variables ({} once it has exited: a zombie's
    environment reads empty).  Read at every exec the kernel reports, so
    most processes, which have none, cost a read and one substring search."""
    raw = _read(f"/proc/{pid}/environ", binary=True)
    if not raw or b"OTEL_" not in raw:
        return {}
    return {key.decode(errors="replace"): value.decode(errors="replace")
            for key, value in _OTEL_VARIABLE.findall(raw)}


def container_id(pid: int) -> str | None:
    text = _read(f"/proc/{pid}/cgroup")
    if text:
        for line in text.splitlines():
            match = _CONTAINER_ID.search(line)
            if match:
                return match.group(1)
    return None


class AtExec(NamedTuple):
    """What a process was when the kernel reported its exec: a short-lived
    client is often gone by the time its first connection is drained."""
    path: str
    env: dict        # its OTEL_* variables
    started: float | None = None   # Unix time of its start, from the exec record


def executable(pid: int, exited_name=None, exec_path: str | None = None) -> tuple[str, str]:
    """(executable path, executable name), falling back to the path read
    when the process called exec (exec_path), to comm for kernel threads
    and processes whose exe link is unreadable, and to exited_name(pid)
    (the name the kernel kept, 15 characters at most) for processes already
    gone."""
    try:
        path = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        path = exec_path
        if not path:
            comm = (_read(f"/proc/{pid}/comm") or "").strip()
            if not comm and exited_name is not None:
                comm = exited_name(pid) or ""
            return "", comm or f"pid-{pid}"
    return path, os.path.basename(path.removesuffix(" (deleted)"))


def _creation_time_unix(pid: int) -> float | None:
    stat = _read(f"/proc/{pid}/stat")
    uptime = _read("/proc/uptime")
    if not stat or not uptime:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    start_ticks = int(fields[19])
    boot = time.time() - float(uptime.split()[0])
    return boot + start_ticks / _CLOCK_TICKS


def _iso8601(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


class ResourceCache:
    """pid -> ProcessResource, bounded; entries are dropped when a process exits."""

    def __init__(self, host_attributes: list | None = None, max_entries: int = 16384,
                 k8s=None, exited_name=None):
        self._by_pid: dict[int, ProcessResource] = {}
        self.k8s = k8s   # agent.spans.k8s.PodMetadata inside a cluster
        self.exited_name = exited_name   # pid -> name the kernel kept, for exited processes
        self._max_entries = max_entries
        self._host = host_attributes if host_attributes is not None else default_host_attributes()
        self.evicted = 0
        self._at_exec: dict[int, AtExec] = {}
        # Boot clock -> Unix time, taken once: the kernel stamps process
        # starts on the boot clock, which the wall clock's steps do not move.
        self._boot_to_unix = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)

    def _keep_at_exec(self, pid: int, facts: AtExec) -> None:
        at_exec = self._at_exec
        at_exec[pid] = facts
        if len(at_exec) > self._max_entries:
            del at_exec[next(iter(at_exec))]

    def exec_recorded(self, records) -> None:
        """What the kernel's exec records say (agent.capture.exec_record
        ExecFacts, None for a record without it): the start time and the
        program's path, which a process that exits before /proc is read
        keeps nonetheless.  A relative filename is not a path to report."""
        for facts in records:
            if facts is None:
                continue
            started = (self._boot_to_unix + facts.start_boottime_ns / 1e9
                       if facts.start_boottime_ns else None)
            path = facts.filename if facts.filename.startswith("/") else ""
            self._keep_at_exec(facts.pid, AtExec(path, {}, started))

    def exec_seen(self, pids) -> None:
        """Read the executables and OTEL_* variables of processes that just
        called exec, while they surely live (a readlink and a read each;
        bounded)."""
        at_exec = self._at_exec
        for pid in pids:
            try:
                path = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            known = at_exec.get(pid)
            self._keep_at_exec(pid, AtExec(path, process_environment(pid),
                                           known.started if known else None))

    def exited(self, pid: int) -> None:
        self._at_exec.pop(pid, None)

    def __len__(self) -> int:
        return len(self._by_pid)

    def get(self, pid: int) -> ProcessResource:
        resource = self._by_pid.get(pid)
        if resource is None:
            resource = self._add(ProcessResource(pid, self.attributes_of(pid)))
        resource.used = True
        return resource

    def put(self, pid: int, attributes: list) -> None:
        """A resource read elsewhere while the process lived (the capture
        loop reads it when it first sees the process; a short-lived client
        is often gone by the time its spans are built)."""
        # Marked used: the spans it came for may arrive in a later message,
        # after the process is gone; forget_gone() must not drop it first.
        self._add(ProcessResource(pid, attributes)).used = True

    def announced(self) -> list[tuple[int, list]]:
        """(pid, attributes) of every process held: what a span stage
        started later needs of the processes seen before it."""
        return [(pid, resource.attributes) for pid, resource in list(self._by_pid.items())]

    def attributes_of(self, pid: int) -> list:
        return build_resource(pid, self._host, self.k8s, self.exited_name,
                              self._at_exec.get(pid)).attributes

    def _add(self, resource: ProcessResource) -> ProcessResource:
        if resource.pid not in self._by_pid and len(self._by_pid) >= self._max_entries:
            self._by_pid.pop(next(iter(self._by_pid)))
            self.evicted += 1
        self._by_pid[resource.pid] = resource
        return resource

    def forget_gone(self) -> None:
        """Drop processes that have exited and whose resource went unused
        since the last call: spans of theirs may still be on their way."""
        for pid, resource in list(self._by_pid.items()):
            if not os.path.exists(f"/proc/{pid}"):
                if resource.used:
                    resource.used = False
                else:
                    del self._by_pid[pid]


def default_host_attributes() -> list:
    attrs = [("host.name", os.environ.get("NODE_NAME") or socket.gethostname())]
    machine_id = (_read("/etc/machine-id") or "").strip()
    if machine_id:
        attrs.append(("host.id", machine_id))
    if os.environ.get("NODE_NAME"):
        attrs.append(("k8s.node.name", os.environ["NODE_NAME"]))
    return attrs


def build_resource(pid: int, host_attributes: list, k8s=None,
                   exited_name=None, at_exec: AtExec | None = None) -> ProcessResource:
    exe_path, exe_name = executable(pid, exited_name, at_exec.path if at_exec else None)
    env = process_environment(pid) or (at_exec.env if at_exec else {})
    declared = _parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    service = env.get("OTEL_SERVICE_NAME") or dict(declared).get("service.name") \
        or f"unknown_service:{exe_name}"
    attrs = [("service.name", service)]
    attrs += [(k, v) for k, v in declared if k != "service.name"]
    attrs += [
        ("process.pid", pid),
        ("process.executable.name", exe_name),
    ]
    if exe_path:
        attrs.append(("process.executable.path", exe_path))
    created = at_exec.started if at_exec is not None and at_exec.started else None
    if created is None:
        created = _creation_time_unix(pid)
    if created is not None:
        attrs.append(("process.creation.time", _iso8601(created)))
    cid = container_id(pid)
    if cid:
        attrs.append(("container.id", cid))
        if k8s is not None:
            attrs += k8s.lookup(cid) or ()
    attrs += host_attributes
    attrs += [
        ("telemetry.distro.name", DISTRO_NAME),
        ("telemetry.distro.version", __version__),
    ]
    return ProcessResource(pid, attrs)
