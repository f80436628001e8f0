"""Loads the capture object with the best hook family this kernel offers
(agent/capture/hook_choice.py), attaches, and tears down.

Two front ends build the same programs (bpf/frontend.h): CO-RE, the object
compiled ahead of time and loaded with libbpf, for kernels with BTF; and
BCC (agent/capture/bcc_loader.py), compiled at start against kernel headers, for
kernels without.  `--loader auto` picks CO-RE when BTF and bpf_loop exist.

The kernel settings are load-time constants: the loader writes them into
the object's read-only data (struct capture_config, declared in
bpf/events.h) before loading, so the verifier sees them as constants.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import os
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.capture import exchange_records, libbpf
from agent.capture import records
from agent.capture.libbpf import LibbpfError, check_ptr, check_ret, ffi
from agent.capture.hook_choice import (HOOK_FAMILIES, LOADERS, HookFamily, candidate_hooks,
                                       choose_loader, ring_buffer_support)
from agent.capture.kernel_features import detect as detect_features
from agent.capture.uprobe_links import perf_event_uprobe_link, uprobe_multi_link
from agent.capture.ringbuf import WAKE_AT_FILL, RingBuffer

DEFAULT_OBJECT_DIR = Path(__file__).resolve().parents[2] / "build"
_ENDPOINT = struct.Struct("<16sHH")
_PORT = struct.Struct("<H")
_PID = struct.Struct("<I")
_CGROUP = struct.Struct("<Q")
_ONE = b"\x01"


@dataclass
class CaptureSettings:
    capture_bytes: int = 2048
    ring_buffer_bytes: int = 16 << 20
    pids: set[int] | None = None          # None: no pid selector
    cgroups: set[int] | None = None       # cgroup v2 ids; None: no cgroup selector
    ports: set[int] | None = None         # None: every port
    excluded_endpoints: list[tuple[str, int]] = field(default_factory=list)
    hooks: str = "auto"                   # auto | a HOOK_FAMILIES name
    loader: str = "auto"                  # auto | core | bcc
    kernel_headers: str | None = None     # BCC: headers directory; None: /lib/modules
    agent_pid: int = field(default_factory=os.getpid)
    tls: bool = True                      # load the TLS uprobe programs
    report_execs: int = records.C["EXECS_TRACED"]   # EXECS_*: which execs are reported
    http_exchanges: int = 0               # HTTP_EXCHANGES_*: pair HTTP/1 in the probes (CO-RE only)

    def validate(self) -> None:
        limit = records.C["MAX_CAPTURE_BYTES"]
        if not 64 <= self.capture_bytes <= limit:
            raise ValueError(f"capture size must be between 64 and {limit} bytes, "
                             f"got {self.capture_bytes}")
        size = self.ring_buffer_bytes
        if size < 65536 or size & (size - 1):
            raise ValueError("ring buffer size must be a power of two of at least "
                             f"65536 bytes, got {size}")
        if self.hooks not in HOOK_FAMILIES and self.hooks != "auto":
            raise ValueError(f"hooks must be auto, {', '.join(HOOK_FAMILIES)}; got {self.hooks!r}")
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {', '.join(LOADERS)}; got {self.loader!r}")


# Programs every hook family loads (process exit: one raw tracepoint).
COMMON_PROGRAM_PREFIX = b"common_"
# Uprobe programs: loaded with any family, attached per TLS library file (agent/capture/tls.py).
TLS_PROGRAM_PREFIX = b"tls_"
# Syscall tracepoints that watch for TLS libraries being opened
# (bpf/tls_library_watch.h): loaded with the TLS probes, attached where
# tracefs allows; the exec rescans cover the rest.
WATCH_PROGRAM_PREFIX = b"watch_"


def _address_bytes(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def resolve_endpoint(host: str, port: int) -> list[bytes]:
    """Every address host resolves to, as the kernel stores it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({_address_bytes(info[4][0]) for info in infos})


def object_path(name: str = "capture") -> Path:
    directory = Path(os.environ.get("OTEL_EBPF_BPF_DIR", DEFAULT_OBJECT_DIR))
    path = directory / f"{name}.bpf.o"
    if not path.exists():
        raise FileNotFoundError(f"BPF object {path} not found: run `make setup` (or `make bpf`) "
                                "to compile bpf/*.bpf.c")
    return path


class CoreObject:
    """The CO-RE front end's loaded object (libbpf)."""

    name = "core"
    # The ring's reader is woken when the unread bytes cross the fill mark.
    wakes_reader_at_fill = True
    # Its programs run bpf_loop: they can parse HTTP/1.x heads (--http-exchanges).
    pairs_http_exchanges = True

    def __init__(self, obj):
        self._obj = obj
        # watch_ programs whose tracepoint could not be attached (no tracefs).
        self.unattached_watches: list[str] = []

    def describe(self) -> str:
        return "core (CO-RE, libbpf)"

    def map_fd(self, name: str) -> int:
        lib = libbpf.lib()
        return lib.bpf_map__fd(check_ptr(lib.bpf_object__find_map_by_name(self._obj, name.encode()),
                                         name))

    def program_fd(self, name: str) -> int:
        lib = libbpf.lib()
        prog = lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if prog == ffi.NULL or not lib.bpf_program__autoload(prog):
            raise KeyError(f"no program {name} loaded")
        return lib.bpf_program__fd(prog)

    def hook_programs(self) -> list:
        """The loaded programs that attach where their section says (every
        one but the TLS uprobes, attached per library): libbpf pointers."""
        lib = libbpf.lib()
        out = []
        prog = lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            if lib.bpf_program__autoload(prog) and \
                    not ffi.string(lib.bpf_program__name(prog)).startswith(TLS_PROGRAM_PREFIX):
                out.append(prog)
            prog = lib.bpf_object__next_program(self._obj, prog)
        return out

    def close(self) -> None:
        if self._obj is not None:
            libbpf.lib().bpf_object__close(self._obj)
            self._obj = None


def _return_freed_heap() -> None:
    """The front end's load has freed its working memory (the kernel's BTF,
    the object's ELF, verifier logs; BCC's compiler too), but glibc keeps
    freed memory in the heap until told otherwise: about 10 MB that stayed
    resident for the agent's life.  Handed back before the ring's pages are
    mapped, the agent's peak memory is its steady one."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)    # glibc's; musl has none
    if trim is not None:
        trim(0)


class LoadedCapture:
    """The loaded, attached capture programs and their ring buffer, whichever
    front end built them: `front_end` gives map and program fds; `detachers`
    undo one attachment each."""

    def __init__(self, front_end, detachers: list[Callable[[], object]], hook_family: HookFamily,
                 settings: CaptureSettings, skipped: list[tuple[str, str]],
                 uprobe_multi: bool = False):
        self.front_end = front_end
        self._detachers = detachers
        # Uprobe links go slowly (a grace period each, one at a time in the
        # kernel): detach() starts them, close() waits for them.
        self._uprobe_fds: list[int] = []   # uprobe_multi links; perf-event links and events
        self._uprobe_detach = None
        self.uprobe_multi = uprobe_multi
        self.hook_family = hook_family
        self.skipped_hooks = skipped
        self.settings = settings
        _return_freed_heap()
        self._map_fds = {name: front_end.map_fd(name) for name in (
            "events", "probe_stats", "pid_filter", "exe_filter", "cgroup_filter", "port_filter",
            "excluded_endpoints", "conns", "traced_processes")}
        self.ring = RingBuffer(self._map_fds["events"], settings.ring_buffer_bytes)
        self._ncpus = check_ret(libbpf.lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
        self.attached_programs = len(detachers)
        # Called with the pid of each traced process that exited, after the
        # capture's own tables forgot it (agent/capture/go_tls.py adds one).
        self.process_exit_hooks: list[Callable[[int], None]] = []

    def _update(self, map_name: str, key: bytes, value: bytes) -> None:
        check_ret(libbpf.lib().bpf_map_update_elem(self._map_fds[map_name], key, value, 0),
                  f"update {map_name}")

    def _delete(self, map_name: str, key: bytes) -> None:
        libbpf.lib().bpf_map_delete_elem(self._map_fds[map_name], key)

    def allow_pid(self, pid: int) -> None:
        self._update("pid_filter", _PID.pack(pid), _ONE)

    def disallow_pid(self, pid: int) -> None:
        self._delete("pid_filter", _PID.pack(pid))

    def allow_exe(self, name: str) -> None:
        """Processes that exec this executable are selected by the kernel
        itself (struct comm_key: the comm the kernel sets from its name)."""
        key = name.encode()[:records.C["TASK_COMM_BYTES"] - 1]
        self._update("exe_filter", key.ljust(records.C["TASK_COMM_BYTES"], b"\0"), _ONE)

    def allow_cgroup(self, cgroup_id: int) -> None:
        self._update("cgroup_filter", _CGROUP.pack(cgroup_id), _ONE)

    def disallow_cgroup(self, cgroup_id: int) -> None:
        self._delete("cgroup_filter", _CGROUP.pack(cgroup_id))

    def process_name(self, pid: int) -> str | None:
        """The name the kernel kept for a traced process (it may have exited)."""
        value = records.ffi.new("struct traced_process *")
        if libbpf.lib().bpf_map_lookup_elem(self._map_fds["traced_processes"], _PID.pack(pid),
                                            value) != 0:
            return None
        return records.ffi.string(value.comm).decode("utf-8", "replace") or None

    def forget_process(self, pid: int) -> None:
        self._delete("traced_processes", _PID.pack(pid))
        for forget in self.process_exit_hooks:
            forget(pid)

    def allow_port(self, port: int) -> None:
        self._update("port_filter", _PORT.pack(port), _ONE)

    def exclude_endpoint(self, address: bytes, port: int) -> None:
        self._update("excluded_endpoints", _ENDPOINT.pack(address, port, 0), _ONE)

    def attach_uprobes(self, program: str, path: str, targets: list[tuple[int, int]],
                       retprobe: bool) -> int:
        """Attach one of the object's uprobe programs at file offsets of the
        ELF file at path, each with its BPF cookie, for every process that
        maps the file; returns how many attached.  One uprobe_multi link
        where the kernel has them (a single grace period to detach), else
        one perf-event link per offset."""
        prog_fd = self.front_end.program_fd(program)
        if self.uprobe_multi:
            fd = uprobe_multi_link(prog_fd, path, targets, retprobe)
            if fd < 0:
                return 0
            self._uprobe_fds.append(fd)
            self.attached_programs += 1
            return len(targets)
        attached = 0
        for offset, cookie in targets:
            fds = perf_event_uprobe_link(prog_fd, path, offset, cookie, retprobe)
            if fds:
                self._uprobe_fds.extend(fds)
                self.attached_programs += 1
                attached += 1
        return attached

    def optional_map_fd(self, name: str) -> int | None:
        """The fd of a map that not every build has (None where absent)."""
        if name not in self._map_fds:
            try:
                self._map_fds[name] = self.front_end.map_fd(name)
            except (KeyError, LibbpfError):
                return None
        return self._map_fds[name]

    def probe_stats(self) -> dict[str, tuple[int, ...]]:
        """probe name -> (events, lost, truncated, unclassified, unmapped, untracked),
        summed over CPUs.  Read by the /metrics thread and the capture loop
        alike: each call has a buffer of its own."""
        lib = libbpf.lib()
        fd = self._map_fds["probe_stats"]
        out = {}
        size = records.PROBE_STATS.size
        buf = ffi.new("char[]", self._ncpus * size)
        key = ffi.new("uint32_t *")
        for index, name in records.PROBE_NAMES.items():
            key[0] = index
            if lib.bpf_map_lookup_elem(fd, key, buf) != 0:
                continue
            raw = ffi.buffer(buf)
            totals = [0] * len(records.PROBE_STATS_FIELDS)
            for cpu in range(self._ncpus):
                for i, value in enumerate(records.PROBE_STATS.unpack_from(raw, cpu * size)):
                    totals[i] += value
            out[name] = tuple(totals)
        return out

    @property
    def http_exchanges(self) -> bool:
        """Whether the probes pair HTTP/1.x exchanges: asked for, and the
        front end can (the BCC build keeps the payload path)."""
        return bool(self.settings.http_exchanges) and self.front_end.pairs_http_exchanges

    def http_fallbacks(self) -> dict[str, tuple[int, int]]:
        """HTTP_FALLBACK_* reason -> (connections turned over to the payload
        path, requests kept then dropped), summed over CPUs."""
        return exchange_records.read_fallbacks(self.front_end.map_fd("http_fallbacks"),
                                               self._ncpus)

    def http_shed(self) -> dict[str, int]:
        """HTTP_SHED_* reason -> exchanges shed whole, summed over CPUs."""
        return exchange_records.read_counts(self.front_end.map_fd("http_shed"), self._ncpus,
                                            exchange_records.SHED_NAMES)

    def http_moves(self) -> dict[str, int]:
        """Connections moved by load (--http-exchanges by-load), by where
        to (records, payload), summed over CPUs."""
        return exchange_records.read_counts(self.front_end.map_fd("http_moves"), self._ncpus,
                                            exchange_records.MOVE_NAMES)

    def detach(self) -> None:
        """Stop capturing; the ring keeps what was already written.  Links go
        in parallel: the kernel waits for an RCU grace period on each."""
        uprobes, self._uprobe_fds = self._uprobe_fds, []
        if uprobes:
            self._uprobe_detach = threading.Thread(
                target=lambda: [os.close(fd) for fd in uprobes], name="uprobe-detach")
            self._uprobe_detach.start()
        detachers, self._detachers = self._detachers, []
        if detachers:
            with ThreadPoolExecutor(min(len(detachers), 32)) as pool:
                list(pool.map(lambda detach: detach(), detachers))

    def close(self) -> None:
        self.detach()
        if self._uprobe_detach is not None:
            self._uprobe_detach.join()
            self._uprobe_detach = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.front_end.close()


def capture_config(settings: CaptureSettings) -> dict[str, int]:
    """struct capture_config's fields for these settings."""
    return {
        "agent_tgid": settings.agent_pid,
        "capture_bytes": settings.capture_bytes,
        "filter_pids": int(settings.pids is not None),
        "filter_cgroups": int(settings.cgroups is not None),
        "filter_ports": int(settings.ports is not None),
        "report_execs": settings.report_execs,
        "tls": int(settings.tls),
        "ring_wake_bytes": int(settings.ring_buffer_bytes * WAKE_AT_FILL),
        "http_exchanges": int(settings.http_exchanges),
        "http_shed_bytes": int(settings.ring_buffer_bytes * exchange_records.SHED_AT_FILL),
    }


def _write_capture_config(obj, settings: CaptureSettings) -> None:
    lib = libbpf.lib()
    btf = check_ptr(lib.bpf_object__btf(obj), "object BTF")
    datasec_id = check_ret(lib.btf__find_by_name_kind(btf, b".rodata", libbpf.BTF_KIND_DATASEC),
                           ".rodata section")
    datasec = lib.btf__type_by_id(btf, datasec_id)
    secinfos = ffi.cast("struct btf_var_secinfo *", datasec + 1)
    offset = None
    for i in range(datasec.info & 0xFFFF):
        var = lib.btf__type_by_id(btf, secinfos[i].type)
        if ffi.string(lib.btf__name_by_offset(btf, var.name_off)) == b"capture_config":
            offset = secinfos[i].offset
    if offset is None:
        raise RuntimeError("capture_config not found in the object's .rodata")
    rodata = None
    bpf_map = lib.bpf_object__next_map(obj, ffi.NULL)
    while bpf_map != ffi.NULL:
        if ffi.string(lib.bpf_map__name(bpf_map)).endswith(b".rodata"):
            rodata = bpf_map
        bpf_map = lib.bpf_object__next_map(obj, bpf_map)
    size = ffi.new("size_t *")
    initial = check_ptr(lib.bpf_map__initial_value(rodata, size), ".rodata initial value")
    config = records.ffi.new("struct capture_config *", capture_config(settings))
    raw = bytes(records.ffi.buffer(config))
    assert offset + len(raw) <= size[0]
    ffi.memmove(ffi.cast("char *", initial) + offset, raw, len(raw))


def _open_and_attach(path: Path, family: HookFamily, settings: CaptureSettings,
                     uprobe_multi: bool = False):
    lib = libbpf.lib()
    obj = check_ptr(lib.bpf_object__open_file(str(path).encode(), ffi.NULL), f"open {path}")
    links = []
    try:
        _write_capture_config(obj, settings)
        events = check_ptr(lib.bpf_object__find_map_by_name(obj, b"events"), "events map")
        check_ret(lib.bpf_map__set_max_entries(events, settings.ring_buffer_bytes),
                  "ring buffer size")
        prog = lib.bpf_object__next_program(obj, ffi.NULL)
        prefix = family.program_prefix.encode()
        while prog != ffi.NULL:
            name = ffi.string(lib.bpf_program__name(prog))
            uprobe = name.startswith(TLS_PROGRAM_PREFIX)
            wanted = name.startswith(prefix) or name.startswith(COMMON_PROGRAM_PREFIX) \
                or (uprobe or name.startswith(WATCH_PROGRAM_PREFIX)) and settings.tls
            lib.bpf_program__set_autoload(prog, wanted)
            if wanted and uprobe and uprobe_multi:
                lib.bpf_program__set_expected_attach_type(prog, libbpf.BPF_TRACE_UPROBE_MULTI)
            prog = lib.bpf_object__next_program(obj, prog)
        check_ret(lib.bpf_object__load(obj), f"load {path.name} with {family.name} hooks")
        front_end = CoreObject(obj)
        for prog in front_end.hook_programs():
            name = ffi.string(lib.bpf_program__name(prog)).decode()
            link = lib.bpf_program__attach(prog)
            if link == ffi.NULL and name.startswith(WATCH_PROGRAM_PREFIX.decode()):
                libbpf.take_log()
                front_end.unattached_watches.append(name)
                continue
            links.append(check_ptr(link, f"attach {name}"))
        return front_end, [functools.partial(lib.bpf_link__destroy, link) for link in links]
    except BaseException:
        for link in links:
            lib.bpf_link__destroy(link)
        lib.bpf_object__close(obj)
        raise


def _load_failure(family: HookFamily, exc: LibbpfError) -> str:
    """Why a family did not load, with the log lines that say so (the
    verifier's last words), without libbpf's per-program chatter."""
    if family.name == "fentry" and exc.errno == errno.EPERM:
        return ("the kernel refused fentry programs (EPERM): its function tracer is "
                "unavailable or locked down here; libbpf's 'ulimit -l' hint does not apply")
    lines = [line for line in exc.log if line.strip() and "skipped loading" not in line
             and "ulimit -l" not in line]
    return "\n    ".join([str(exc)] + lines[-8:])


class CaptureLoadError(RuntimeError):
    pass


def _apply_selectors(capture: LoadedCapture, settings: CaptureSettings) -> LoadedCapture:
    try:
        for pid in settings.pids or ():
            capture.allow_pid(pid)
        for cgroup_id in settings.cgroups or ():
            capture.allow_cgroup(cgroup_id)
        for port in settings.ports or ():
            capture.allow_port(port)
        for host, port in settings.excluded_endpoints:
            for address in resolve_endpoint(host, port):
                capture.exclude_endpoint(address, port)
    except BaseException:
        capture.close()
        raise
    return capture


def load_capture(settings: CaptureSettings, path: Path | None = None) -> LoadedCapture:
    """Load and attach with the front end and the best hook family this
    kernel offers."""
    settings.validate()
    features = detect_features()
    ring_ok, ring_text = ring_buffer_support()
    if not ring_ok:
        raise CaptureLoadError(f"BPF ring buffer: {ring_text}")
    uprobe_multi = settings.tls and features.uprobe_multi
    if choose_loader(settings.loader, features) == "bcc":
        from agent.capture import bcc_loader
        return _apply_selectors(bcc_loader.load(settings, features, uprobe_multi), settings)
    path = path or object_path("capture")
    skipped: list[tuple[str, str]] = []
    for family, reason in candidate_hooks(settings.hooks, features):
        if reason:
            skipped.append((family.name, reason))
            continue
        try:
            front_end, detachers = _open_and_attach(path, family, settings, uprobe_multi)
        except LibbpfError as exc:
            skipped.append((family.name, _load_failure(family, exc)))
            continue
        return _apply_selectors(LoadedCapture(front_end, detachers, family, settings, skipped,
                                              uprobe_multi), settings)
    lines = "\n".join(f"  - {name}: {why}" for name, why in skipped)
    raise CaptureLoadError(f"no hook family could be loaded and attached:\n{lines}\n"
                           "Run `otel-ebpf doctor` for what this kernel offers.")
