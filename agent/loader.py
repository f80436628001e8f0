"""Loads the capture object, chooses its hooks, attaches, and tears down.

The kernel settings are load-time constants: the loader writes them into
the object's read-only data (struct capture_config, declared in
bpf/events.h) before loading, so the verifier sees them as constants.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agent import libbpf, records
from agent.libbpf import LibbpfError, check_ptr, check_ret, ffi
from agent.kernel_features import KernelFeatures
from agent.kernel_features import detect as detect_features
from agent.ringbuf import RingBuffer

DEFAULT_OBJECT_DIR = Path(__file__).resolve().parent.parent / "build"
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
    hooks: str = "auto"                   # auto | kprobe | tracepoint
    agent_pid: int = field(default_factory=os.getpid)
    tls: bool = True                      # load the TLS uprobe programs
    report_execs: int = records.C["EXECS_TRACED"]   # EXECS_*: which execs are reported

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


@dataclass(frozen=True)
class HookFamily:
    name: str
    program_prefix: str
    description: str

    def unavailable_reason(self, features: KernelFeatures) -> str | None:
        if self.name == "fentry" and not features.btf:
            return "fentry needs kernel BTF (/sys/kernel/btf/vmlinux)"
        if self.name == "kprobe" and not features.kprobes:
            return "this kernel offers no kprobes (no kprobe PMU, no kprobe_events)"
        if self.name == "tracepoint" and not features.tracefs_mounted:
            return "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing"
        if self.name == "tracepoint" and features.syscall_tracepoints is False:
            return "this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)"
        return None


# Order of preference.  fentry/fexit trampolines are the cheapest entry to
# the syscall functions, kprobes the next; both skip the tracepoint
# machinery.  The two raw syscall tracepoints need no tracefs and only two
# links (per-syscall hooks take 26, and the kernel synchronises on each one
# it removes: about 70 ms apiece here).  Per-syscall tracepoints are the
# fallback every kernel with tracefs has.  A family that fails to load or
# attach (fentry is refused where the function tracer is locked down) is
# skipped with its reason.
HOOK_FAMILIES = {
    "fentry": HookFamily("fentry", "fe_", "fentry/fexit on the syscall functions"),
    "kprobe": HookFamily("kprobe", "ks_", "kprobes on the syscall entry points (ksyscall)"),
    "raw_tracepoint": HookFamily("raw_tracepoint", "rtp_", "raw sys_enter/sys_exit tracepoints"),
    "tracepoint": HookFamily("tracepoint", "tp_", "per-syscall tracepoints"),
}


# Programs every hook family loads (process exit: one raw tracepoint).
COMMON_PROGRAM_PREFIX = b"common_"
# Uprobe programs: loaded with any family, attached per TLS library file (agent/tls.py).
TLS_PROGRAM_PREFIX = b"tls_"


def candidate_hooks(choice: str, features: KernelFeatures | None = None
                    ) -> list[tuple[HookFamily, str | None]]:
    """Hook families in the order to try, each with why it cannot be used."""
    features = features or detect_features()
    names = list(HOOK_FAMILIES) if choice == "auto" else [choice]
    return [(HOOK_FAMILIES[n], HOOK_FAMILIES[n].unavailable_reason(features)) for n in names]


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


def object_path(name: str = "http") -> Path:
    directory = Path(os.environ.get("OTEL_EBPF_BPF_DIR", DEFAULT_OBJECT_DIR))
    path = directory / f"{name}.bpf.o"
    if not path.exists():
        raise FileNotFoundError(f"BPF object {path} not found: run `make setup` (or `make bpf`) "
                                "to compile bpf/*.bpf.c")
    return path


class LoadedCapture:
    """The loaded, attached capture object and its ring buffer."""

    def __init__(self, obj, links, hook_family: HookFamily, settings: CaptureSettings,
                 skipped: list[tuple[str, str]], uprobe_multi: bool = False):
        self._obj = obj
        self._links = links
        # Uprobe links go slowly (a grace period each, one at a time in the
        # kernel): detach() starts them, close() waits for them.
        self._uprobe_links = []    # bpf_link pointers, or uprobe_multi link fds
        self._uprobe_detach = None
        self.uprobe_multi = uprobe_multi
        self.hook_family = hook_family
        self.skipped_hooks = skipped
        self.settings = settings
        lib = libbpf.lib()
        self._map_fds = {}
        for name in ("events", "probe_stats", "pid_filter", "cgroup_filter", "port_filter",
                     "excluded_endpoints", "conns", "traced_processes"):
            bpf_map = check_ptr(lib.bpf_object__find_map_by_name(obj, name.encode()), name)
            self._map_fds[name] = lib.bpf_map__fd(bpf_map)
        self.ring = RingBuffer(self._map_fds["events"], settings.ring_buffer_bytes)
        self._ncpus = check_ret(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
        self._stats_buf = ffi.new("char[]", self._ncpus * records.PROBE_STATS.size)
        self.attached_programs = len(links)

    def _update(self, map_name: str, key: bytes, value: bytes) -> None:
        check_ret(libbpf.lib().bpf_map_update_elem(self._map_fds[map_name], key, value, 0),
                  f"update {map_name}")

    def _delete(self, map_name: str, key: bytes) -> None:
        libbpf.lib().bpf_map_delete_elem(self._map_fds[map_name], key)

    def allow_pid(self, pid: int) -> None:
        self._update("pid_filter", _PID.pack(pid), _ONE)

    def disallow_pid(self, pid: int) -> None:
        self._delete("pid_filter", _PID.pack(pid))

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
        lib = libbpf.lib()
        prog = lib.bpf_object__find_program_by_name(self._obj, program.encode())
        if prog == ffi.NULL:
            raise KeyError(f"no program {program} in the capture object")
        if self.uprobe_multi:
            fd = _uprobe_multi_link(lib.bpf_program__fd(prog), path, targets, retprobe)
            if fd < 0:
                return 0
            self._uprobe_links.append(fd)
            self.attached_programs += 1
            return len(targets)
        attached = 0
        for offset, cookie in targets:
            opts = ffi.new("struct bpf_uprobe_opts *")
            opts.sz = ffi.sizeof("struct bpf_uprobe_opts")
            opts.retprobe = retprobe
            opts.bpf_cookie = cookie
            link = lib.bpf_program__attach_uprobe_opts(prog, -1, path.encode(), offset, opts)
            libbpf.take_log()
            if link != ffi.NULL:
                self._uprobe_links.append(link)
                self.attached_programs += 1
                attached += 1
        return attached

    def probe_stats(self) -> dict[str, tuple[int, ...]]:
        """probe name -> (events, lost, truncated, unclassified, unmapped), summed over CPUs."""
        lib = libbpf.lib()
        fd = self._map_fds["probe_stats"]
        out = {}
        size = records.PROBE_STATS.size
        key = ffi.new("uint32_t *")
        for index, name in records.PROBE_NAMES.items():
            key[0] = index
            if lib.bpf_map_lookup_elem(fd, key, self._stats_buf) != 0:
                continue
            raw = ffi.buffer(self._stats_buf)
            totals = [0] * len(records.PROBE_STATS_FIELDS)
            for cpu in range(self._ncpus):
                for i, value in enumerate(records.PROBE_STATS.unpack_from(raw, cpu * size)):
                    totals[i] += value
            out[name] = tuple(totals)
        return out

    def detach(self) -> None:
        """Stop capturing; the ring keeps what was already written.  Links go
        in parallel: the kernel waits for an RCU grace period on each."""
        destroy = libbpf.lib().bpf_link__destroy
        uprobes, self._uprobe_links = self._uprobe_links, []
        if uprobes:
            self._uprobe_detach = threading.Thread(
                target=lambda: [os.close(link) if isinstance(link, int) else destroy(link)
                                for link in uprobes], name="uprobe-detach")
            self._uprobe_detach.start()
        links, self._links = self._links, []
        if links:
            with ThreadPoolExecutor(min(len(links), 32)) as pool:
                list(pool.map(destroy, links))

    def close(self) -> None:
        self.detach()
        if self._uprobe_detach is not None:
            self._uprobe_detach.join()
            self._uprobe_detach = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self._obj is not None:
            libbpf.lib().bpf_object__close(self._obj)
            self._obj = None


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
    config = records.ffi.new("struct capture_config *", {
        "agent_tgid": settings.agent_pid,
        "capture_bytes": settings.capture_bytes,
        "filter_pids": settings.pids is not None,
        "filter_cgroups": settings.cgroups is not None,
        "filter_ports": settings.ports is not None,
        "report_execs": settings.report_execs,
        "tls": settings.tls,
    })
    raw = bytes(records.ffi.buffer(config))
    assert offset + len(raw) <= size[0]
    ffi.memmove(ffi.cast("char *", initial) + offset, raw, len(raw))


def _uprobe_multi_link(prog_fd: int, path: str, targets: list[tuple[int, int]],
                       retprobe: bool) -> int:
    """BPF_LINK_CREATE of a uprobe_multi link: its fd, or -1."""
    count = len(targets)
    attr = ffi.new("struct uprobe_multi_link_attr *")
    c_path = ffi.new("char[]", path.encode())
    offsets = ffi.new("uint64_t[]", [offset for offset, _ in targets])
    cookies = ffi.new("uint64_t[]", [cookie for _, cookie in targets])
    attr.prog_fd = prog_fd
    attr.attach_type = libbpf.BPF_TRACE_UPROBE_MULTI
    attr.path = int(ffi.cast("uintptr_t", c_path))
    attr.offsets = int(ffi.cast("uintptr_t", offsets))
    attr.cookies = int(ffi.cast("uintptr_t", cookies))
    attr.cnt = count
    attr.multi_flags = libbpf.BPF_F_UPROBE_MULTI_RETURN if retprobe else 0
    number = libbpf.SYS_BPF.get(os.uname().machine)
    if number is None:
        return -1
    return libbpf.libc().syscall(number, libbpf.BPF_LINK_CREATE, attr,
                                 ffi.sizeof("struct uprobe_multi_link_attr"))


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
        programs = []
        prog = lib.bpf_object__next_program(obj, ffi.NULL)
        prefix = family.program_prefix.encode()
        while prog != ffi.NULL:
            name = ffi.string(lib.bpf_program__name(prog))
            uprobe = name.startswith(TLS_PROGRAM_PREFIX)
            wanted = name.startswith(prefix) or name.startswith(COMMON_PROGRAM_PREFIX) \
                or uprobe and settings.tls
            lib.bpf_program__set_autoload(prog, wanted)
            if wanted and uprobe and uprobe_multi:
                lib.bpf_program__set_expected_attach_type(prog, libbpf.BPF_TRACE_UPROBE_MULTI)
            if wanted and not uprobe:
                programs.append(prog)
            prog = lib.bpf_object__next_program(obj, prog)
        check_ret(lib.bpf_object__load(obj), f"load {path.name} with {family.name} hooks")
        for prog in programs:
            name = ffi.string(lib.bpf_program__name(prog)).decode()
            links.append(check_ptr(lib.bpf_program__attach(prog), f"attach {name}"))
        return obj, links
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


def load_capture(settings: CaptureSettings, path: Path | None = None) -> LoadedCapture:
    """Load and attach with the best hook family this kernel offers."""
    settings.validate()
    path = path or object_path("http")
    skipped: list[tuple[str, str]] = []
    features = detect_features()
    uprobe_multi = settings.tls and features.uprobe_multi
    for family, reason in candidate_hooks(settings.hooks, features):
        if reason:
            skipped.append((family.name, reason))
            continue
        try:
            obj, links = _open_and_attach(path, family, settings, uprobe_multi)
        except LibbpfError as exc:
            skipped.append((family.name, _load_failure(family, exc)))
            continue
        capture = LoadedCapture(obj, links, family, settings, skipped, uprobe_multi)
        try:
            if settings.pids is not None:
                for pid in settings.pids:
                    capture.allow_pid(pid)
            if settings.cgroups is not None:
                for cgroup_id in settings.cgroups:
                    capture.allow_cgroup(cgroup_id)
            if settings.ports is not None:
                for port in settings.ports:
                    capture.allow_port(port)
            for host, port in settings.excluded_endpoints:
                for address in resolve_endpoint(host, port):
                    capture.exclude_endpoint(address, port)
        except BaseException:
            capture.close()
            raise
        return capture
    lines = "\n".join(f"  - {name}: {why}" for name, why in skipped)
    raise CaptureLoadError(f"no hook family could be loaded and attached:\n{lines}\n"
                           "Run `otel-ebpf doctor` for what this kernel offers.")
