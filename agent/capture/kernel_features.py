"""What this kernel and this process can do for the agent, read without libbpf.

Pure detection from /proc, /sys and the kernel config: nothing is loaded into
the kernel here (the loader does the load and attach trials).  The one side
effect on offer is ensure_tracefs(), which mounts tracefs when it is missing.

    features = detect()
    for message in features.problems():
        print(message)

Every missing feature has a message that says what fails because of it and
what to do about it.  Detection never raises: what cannot be read is None
("unknown"), never a guess.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import gzip
import os
import platform
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Linux capability numbers (include/uapi/linux/capability.h).
CAPABILITY_NAMES: dict[int, str] = {
    0: "CAP_CHOWN",
    1: "CAP_DAC_OVERRIDE",
    2: "CAP_DAC_READ_SEARCH",
    3: "CAP_FOWNER",
    4: "CAP_FSETID",
    5: "CAP_KILL",
    6: "CAP_SETGID",
    7: "CAP_SETUID",
    8: "CAP_SETPCAP",
    9: "CAP_LINUX_IMMUTABLE",
    10: "CAP_NET_BIND_SERVICE",
    11: "CAP_NET_BROADCAST",
    12: "CAP_NET_ADMIN",
    13: "CAP_NET_RAW",
    14: "CAP_IPC_LOCK",
    15: "CAP_IPC_OWNER",
    16: "CAP_SYS_MODULE",
    17: "CAP_SYS_RAWIO",
    18: "CAP_SYS_CHROOT",
    19: "CAP_SYS_PTRACE",
    20: "CAP_SYS_PACCT",
    21: "CAP_SYS_ADMIN",
    22: "CAP_SYS_BOOT",
    23: "CAP_SYS_NICE",
    24: "CAP_SYS_RESOURCE",
    25: "CAP_SYS_TIME",
    26: "CAP_SYS_TTY_CONFIG",
    27: "CAP_MKNOD",
    28: "CAP_LEASE",
    29: "CAP_AUDIT_WRITE",
    30: "CAP_AUDIT_CONTROL",
    31: "CAP_SETFCAP",
    32: "CAP_MAC_OVERRIDE",
    33: "CAP_MAC_ADMIN",
    34: "CAP_SYSLOG",
    35: "CAP_WAKE_ALARM",
    36: "CAP_BLOCK_SUSPEND",
    37: "CAP_AUDIT_READ",
    38: "CAP_PERFMON",
    39: "CAP_BPF",
    40: "CAP_CHECKPOINT_RESTORE",
}
CAPABILITY_NUMBERS: dict[str, int] = {name: bit for bit, name in CAPABILITY_NAMES.items()}

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
DEBUGFS_PATH = "/sys/kernel/debug"
BTF_PATH = "/sys/kernel/btf/vmlinux"
# BPF memory is charged to the memory cgroup instead of RLIMIT_MEMLOCK from 5.11 on.
MEMCG_ACCOUNTING_SINCE = (5, 11)
# What the agent's maps need under RLIMIT_MEMLOCK on older kernels (ring buffer and hashes).
MEMLOCK_NEEDED = 128 << 20


# --- decoders (pure, tested on canned text) ---------------------------------------

def decode_capabilities(hex_mask: str | int) -> frozenset[str]:
    """Names of the capabilities set in a mask such as /proc/self/status CapEff."""
    mask = int(hex_mask, 16) if isinstance(hex_mask, str) else int(hex_mask)
    names = set()
    bit = 0
    while mask:
        if mask & 1:
            names.add(CAPABILITY_NAMES.get(bit, f"CAP_{bit}"))
        mask >>= 1
        bit += 1
    return frozenset(names)


def parse_status_capabilities(status_text: str) -> dict[str, frozenset[str]]:
    """{"CapEff": {...}, "CapPrm": {...}, ...} from the text of /proc/PID/status."""
    sets = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap") and value.strip():
            try:
                sets[key] = decode_capabilities(value.strip())
            except ValueError:
                continue
    return sets


def parse_kernel_config(text: str) -> dict[str, str]:
    """CONFIG_* options from a kernel .config: "y", "m", a value, or "n" when "is not set"."""
    options = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:-len(" is not set")].strip()] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            options[key.strip()] = value.strip().strip('"')
    return options


def parse_lockdown(text: str) -> str | None:
    """The active mode from /sys/kernel/security/lockdown ("none [integrity] confidentiality")."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def parse_mounts(text: str) -> list[tuple[str, str, str]]:
    """(source, mount point, fs type) from /proc/self/mounts; octal escapes decoded."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
                .replace("\\134", "\\")
            mounts.append((parts[0], point, parts[2]))
    return mounts


def parse_release(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release such as "6.18.44-fc-v669"; (0, 0) if unreadable."""
    numbers = []
    for part in release.split("-", 1)[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple((numbers + [0, 0])[:2]) if numbers else (0, 0)


# --- the features -----------------------------------------------------------------

@dataclass
class KernelFeatures:
    release: str
    machine: str
    btf: bool
    tracefs_path: str | None          # where tracefs is mounted, None when it is not
    debugfs_mounted: bool
    kprobes: bool                     # kprobe PMU or tracefs kprobe_events present
    kprobe_pmu: bool
    kprobe_events: bool | None        # None: tracefs not mounted or not readable, cannot tell
    config_kprobes: bool | None       # CONFIG_KPROBES; None: no readable kernel config
    uprobes: bool
    uprobe_multi: bool                # BPF uprobe_multi links (Linux 6.6+): one link, many probes
    syscall_tracepoints: bool | None  # None: tracefs not readable and no config to tell
    capabilities: frozenset[str]
    is_root: bool
    memlock_soft: int | None          # bytes; None means unlimited
    memlock_hard: int | None
    unprivileged_bpf_disabled: int | None
    lockdown: str | None              # none / integrity / confidentiality; None: unknown
    config_source: str | None = None
    config: dict[str, str] = field(default_factory=dict, repr=False)

    # -- derived --
    @property
    def tracefs_mounted(self) -> bool:
        return self.tracefs_path is not None

    def has_capability(self, name: str) -> bool:
        return name in self.capabilities

    @property
    def can_load_bpf(self) -> bool:
        return self.has_capability("CAP_BPF") or self.has_capability("CAP_SYS_ADMIN")

    @property
    def can_attach_perf_events(self) -> bool:
        """Tracepoints, kprobes and uprobes go through perf_event_open."""
        return self.has_capability("CAP_PERFMON") or self.has_capability("CAP_SYS_ADMIN")

    @property
    def memcg_accounting(self) -> bool:
        return parse_release(self.release) >= MEMCG_ACCOUNTING_SINCE

    def config_option(self, name: str) -> str | None:
        return self.config.get(name)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("config")
        data["capabilities"] = sorted(self.capabilities)
        return data

    def problems(self) -> list[str]:
        """One message per missing feature: what fails, and what to do."""
        out = []
        if not self.btf:
            out.append(
                f"BTF missing ({BTF_PATH} does not exist): the CO-RE programs cannot be relocated "
                "to this kernel's structures, so the CO-RE loader cannot load (the kernel needs "
                "CONFIG_DEBUG_INFO_BTF=y). The BCC loader "
                "(--loader bcc, which auto picks here) compiles at start against kernel headers: "
                "install your distribution's headers package (any version serves).")
        if not self.can_load_bpf:
            out.append(
                "No CAP_BPF or CAP_SYS_ADMIN: the kernel will refuse to load BPF programs (EPERM). "
                "Run the agent as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE "
                "and CAP_DAC_READ_SEARCH (for example `setcap` or a container's securityContext).")
        elif not self.can_attach_perf_events:
            out.append(
                "No CAP_PERFMON or CAP_SYS_ADMIN: tracepoints and uprobes cannot be attached "
                "(perf_event_open fails with EACCES). Grant CAP_PERFMON or run as root.")
        if not self.has_capability("CAP_SYS_PTRACE") and not self.is_root:
            out.append(
                "No CAP_SYS_PTRACE: /proc/PID/exe, /proc/PID/environ and /proc/PID/root of other "
                "users' processes are unreadable, so their service names and TLS libraries "
                "(uprobe targets) cannot be found. Grant CAP_SYS_PTRACE or run as root.")
        if self.tracefs_path is None:
            out.append(
                "tracefs is not mounted: syscall tracepoints cannot be resolved, so the capture "
                "hooks cannot attach. Mount it as root with `mount -t tracefs tracefs "
                "/sys/kernel/tracing` (`make setup` does; the agent tries at start).")
        elif self.syscall_tracepoints is False:
            out.append(
                f"No syscall tracepoints ({self.tracefs_path}/events/syscalls/sys_enter_write is "
                "missing): the kernel lacks CONFIG_FTRACE_SYSCALLS. The capture falls back to kprobes "
                "when the kernel has them; otherwise use a kernel with CONFIG_FTRACE_SYSCALLS=y.")
        if not self.kprobes:
            why = ("CONFIG_KPROBES is not set" if self.config_kprobes is False
                   else "neither the kprobe PMU nor tracefs kprobe_events exists")
            then = ("syscall tracepoints are used instead: nothing to do"
                    if self.syscall_tracepoints is not False
                    else "and syscall tracepoints are missing too: no capture hook can attach; "
                         "use a kernel with CONFIG_KPROBES=y or CONFIG_FTRACE_SYSCALLS=y")
            out.append(f"No kprobes ({why}): kprobe and ksyscall hooks cannot attach; {then}.")
        if not self.uprobes:
            out.append(
                "No uprobes (/sys/bus/event_source/devices/uprobe is missing): TLS capture "
                "(OpenSSL SSL_read/SSL_write) and Go function hooks cannot attach; plain-text "
                "capture still works. Use a kernel with CONFIG_UPROBE_EVENTS=y.")
        if not self.memcg_accounting and self.memlock_soft is not None \
                and self.memlock_soft < MEMLOCK_NEEDED:
            out.append(
                f"RLIMIT_MEMLOCK is {self.memlock_soft} bytes and kernel {self.release} charges BPF "
                "maps to it (before 5.11): map creation fails with EPERM. Run `ulimit -l unlimited` "
                "before the agent, or give it CAP_SYS_RESOURCE so it can raise the limit itself.")
        if self.lockdown == "confidentiality":
            out.append(
                "Kernel lockdown is in confidentiality mode: bpf_probe_read_kernel is refused, so "
                "kernel structures (socket checks, connection tuples) cannot be read. Boot with "
                "lockdown=integrity or none.")
        if self.unprivileged_bpf_disabled and not self.can_load_bpf:
            out.append(
                f"kernel.unprivileged_bpf_disabled={self.unprivileged_bpf_disabled}: without "
                "CAP_BPF no BPF program can be loaded at all. Run as root.")
        return out

    def report(self) -> str:
        """Multi-line summary for `otel-ebpf` diagnostics."""
        def yes(value):
            return "unknown" if value is None else ("yes" if value else "no")

        def limit(value):
            return "unlimited" if value is None else f"{value} bytes"

        lines = [
            f"kernel            {self.release} ({self.machine})",
            f"BTF               {yes(self.btf)}",
            f"tracefs           {self.tracefs_path or 'not mounted'}",
            f"debugfs           {yes(self.debugfs_mounted)}",
            f"kprobes           {yes(self.kprobes)} (pmu {yes(self.kprobe_pmu)}, kprobe_events "
            f"{yes(self.kprobe_events)}, CONFIG_KPROBES {yes(self.config_kprobes)})",
            f"uprobes           {yes(self.uprobes)}",
            f"uprobe_multi      {yes(self.uprobe_multi)}",
            f"syscall tracepts  {yes(self.syscall_tracepoints)}",
            f"capabilities      {', '.join(sorted(self.capabilities)) or 'none'}",
            f"RLIMIT_MEMLOCK    soft {limit(self.memlock_soft)}, hard {limit(self.memlock_hard)}",
            f"unpriv. BPF off   {self.unprivileged_bpf_disabled if self.unprivileged_bpf_disabled is not None else 'unknown'}",
            f"lockdown          {self.lockdown or 'unknown'}",
        ]
        problems = self.problems()
        if problems:
            lines.append("problems:")
            lines.extend(f"  - {message}" for message in problems)
        return "\n".join(lines)


# --- readers ------------------------------------------------------------------------

def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_kernel_config(release: str | None = None) -> tuple[dict[str, str], str | None]:
    """The running kernel's config and where it came from; ({}, None) when none is readable."""
    release = release or os.uname().release
    candidates = ["/proc/config.gz", f"/boot/config-{release}", f"/lib/modules/{release}/config"]
    for path in candidates:
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt", errors="replace") as handle:
                    text = handle.read()
            else:
                text = Path(path).read_text(errors="replace")
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        return parse_kernel_config(text), path
    return {}, None


def _mounts() -> list[tuple[str, str, str]]:
    return parse_mounts(_read("/proc/self/mounts") or "")


def find_tracefs(mounts: list[tuple[str, str, str]] | None = None) -> str | None:
    """Mount point of tracefs, preferring /sys/kernel/tracing; None when not mounted."""
    mounts = _mounts() if mounts is None else mounts
    points = [point for _, point, fstype in mounts if fstype == "tracefs"]
    for preferred in TRACEFS_PATHS:
        if preferred in points:
            return preferred
    return points[0] if points else None


def _memlock() -> tuple[int | None, int | None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)

    def norm(value):
        return None if value == resource.RLIM_INFINITY else value

    return norm(soft), norm(hard)


def _config_bool(config: dict[str, str], name: str) -> bool | None:
    if not config:
        return None
    return config.get(name, "n") in ("y", "m")


# A type the kernel has exactly when it has uprobe_multi links.
UPROBE_MULTI_BTF_NAME = b"bpf_uprobe_multi_link"


def btf_has_name(name: bytes, path: str = BTF_PATH) -> bool:
    """Whether the kernel's BTF string table holds name (a type the kernel
    was built with): one scan of a few MiB, no parsing."""
    try:
        with open(path, "rb") as f:   # sysfs: no mmap, and no size until read
            return f.read().find(b"\0" + name + b"\0") >= 0
    except OSError:
        return False


def detect() -> KernelFeatures:
    """Read what this kernel offers and what this process may do. Never raises."""
    uname = os.uname()
    config, config_source = read_kernel_config(uname.release)
    mounts = _mounts()
    tracefs = find_tracefs(mounts)
    debugfs = any(fstype == "debugfs" for _, _, fstype in mounts)

    kprobe_pmu = os.path.exists("/sys/bus/event_source/devices/kprobe/type")
    # tracefs is mode 700: an unprivileged process sees nothing inside and must not
    # conclude that the kernel lacks events; it falls back to the kernel config.
    tracefs_readable = bool(tracefs) and os.access(tracefs, os.R_OK | os.X_OK)
    kprobe_events = os.path.exists(os.path.join(tracefs, "kprobe_events")) if tracefs_readable else None
    uprobes = os.path.exists("/sys/bus/event_source/devices/uprobe/type") or bool(
        tracefs_readable and os.path.exists(os.path.join(tracefs, "uprobe_events")))

    if tracefs_readable:
        syscall_tps: bool | None = os.path.isdir(
            os.path.join(tracefs, "events", "syscalls", "sys_enter_write"))
    else:
        syscall_tps = _config_bool(config, "CONFIG_FTRACE_SYSCALLS")

    caps = parse_status_capabilities(_read("/proc/self/status") or "").get("CapEff", frozenset())
    soft, hard = _memlock()

    unpriv_text = _read("/proc/sys/kernel/unprivileged_bpf_disabled")
    try:
        unpriv = int(unpriv_text.strip()) if unpriv_text is not None else None
    except ValueError:
        unpriv = None
    lockdown_text = _read("/sys/kernel/security/lockdown")

    return KernelFeatures(
        release=uname.release,
        machine=platform.machine(),
        btf=os.path.exists(BTF_PATH),
        tracefs_path=tracefs,
        debugfs_mounted=debugfs,
        kprobes=kprobe_pmu or bool(kprobe_events),
        kprobe_pmu=kprobe_pmu,
        kprobe_events=kprobe_events,
        config_kprobes=_config_bool(config, "CONFIG_KPROBES"),
        uprobes=uprobes,
        uprobe_multi=btf_has_name(UPROBE_MULTI_BTF_NAME),
        syscall_tracepoints=syscall_tps,
        capabilities=caps,
        is_root=os.geteuid() == 0,
        memlock_soft=soft,
        memlock_hard=hard,
        unprivileged_bpf_disabled=unpriv,
        lockdown=parse_lockdown(lockdown_text) if lockdown_text else None,
        config_source=config_source,
        config=config,
    )


# --- side effects on request ----------------------------------------------------------

def raise_memlock() -> tuple[bool, str]:
    """Lift RLIMIT_MEMLOCK as far as allowed (only matters before kernel 5.11)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return True, "RLIMIT_MEMLOCK already unlimited"
    for target in ((resource.RLIM_INFINITY, resource.RLIM_INFINITY), (hard, hard)):
        if target[0] == soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, target)
        except (ValueError, OSError):
            continue
        value = "unlimited" if target[0] == resource.RLIM_INFINITY else f"{target[0]} bytes"
        return True, f"RLIMIT_MEMLOCK raised to {value}"
    return False, (f"RLIMIT_MEMLOCK stays at {soft} bytes: raising it needs CAP_SYS_RESOURCE "
                   "(or `ulimit -l unlimited` before starting the agent)")


def _filesystem_supported(name: str) -> bool | None:
    text = _read("/proc/filesystems")
    if text is None:
        return None
    return any(line.split()[-1] == name for line in text.splitlines() if line.split())


def _mount(source: str, target: str, fstype: str) -> int:
    """mount(2) through libc; 0 on success, else the errno."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) == 0:
        return 0
    return ctypes.get_errno()


def ensure_tracefs(target: str = TRACEFS_PATHS[0]) -> tuple[bool, str]:
    """Mount tracefs at `target` when no tracefs is mounted. Returns (ok, message)."""
    existing = find_tracefs()
    if existing:
        return True, f"tracefs mounted at {existing}"
    if _filesystem_supported("tracefs") is False:
        return False, ("this kernel has no tracefs (built without CONFIG_TRACING / CONFIG_FTRACE): "
                       "syscall tracepoints are unavailable; use a kernel with CONFIG_FTRACE=y")
    caps = parse_status_capabilities(_read("/proc/self/status") or "").get("CapEff", frozenset())
    if "CAP_SYS_ADMIN" not in caps:
        return False, (f"tracefs is not mounted and mounting it needs root (CAP_SYS_ADMIN): run "
                       f"`sudo mount -t tracefs tracefs {target}` or start the agent as root")
    if not os.path.isdir(target):
        return False, (f"{target} does not exist (kernel older than 4.1?): mount debugfs with "
                       f"`mount -t debugfs debugfs {DEBUGFS_PATH}`; tracefs then appears under "
                       f"{DEBUGFS_PATH}/tracing")
    err = _mount("tracefs", target, "tracefs")
    if err == 0:
        return True, f"mounted tracefs at {target}"
    if err == errno.EBUSY and find_tracefs():
        return True, f"tracefs mounted at {find_tracefs()}"
    hint = {
        errno.EPERM: "permission denied (a container without CAP_SYS_ADMIN in the host's user "
                     "namespace, or a seccomp profile): mount it on the host, or bind-mount the "
                     "host's /sys/kernel/tracing into the container",
        errno.ENODEV: "the kernel has no tracefs (CONFIG_TRACING off)",
        errno.EROFS: "/sys is read-only here (a container): bind-mount the host's "
                     "/sys/kernel/tracing instead",
    }.get(err, os.strerror(err))
    return False, f"could not mount tracefs at {target}: {hint}"


def ensure_debugfs(target: str = DEBUGFS_PATH) -> tuple[bool, str]:
    """Mount debugfs at `target` when it is missing. Returns (ok, message)."""
    if any(fstype == "debugfs" for _, _, fstype in _mounts()):
        return True, "debugfs mounted"
    caps = parse_status_capabilities(_read("/proc/self/status") or "").get("CapEff", frozenset())
    if "CAP_SYS_ADMIN" not in caps:
        return False, (f"debugfs is not mounted and mounting it needs root: run "
                       f"`sudo mount -t debugfs debugfs {target}`")
    err = _mount("debugfs", target, "debugfs")
    if err == 0:
        return True, f"mounted debugfs at {target}"
    return False, f"could not mount debugfs at {target}: {os.strerror(err)}"
