"""Which front end and which hook family this kernel gets: the families in
their order of preference, why one cannot be used here, and the kernel
support the loaders need (agent/capture/loader.py tries them in turn)."""
from __future__ import annotations

from dataclasses import dataclass

from agent.capture import libbpf
from agent.capture.kernel_features import KernelFeatures
from agent.capture.kernel_features import detect as detect_features
from agent.capture.libbpf import ffi


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
# machinery.  Of the tracepoints, the per-syscall ones run a program only on
# the syscalls the capture needs, where the two raw ones run one on every
# syscall of every process on the node (benchmarks/hook_cost.py; figures in
# docs/performance.md).  The per-syscall ones cost at stop instead: a link
# per hooked call, each removed after a grace period, and they need tracefs;
# the raw ones are the fallback (docs/decisions/hook-order.md).  A
# family that fails to load or attach (fentry is refused where the function
# tracer is locked down) is skipped with its reason.
HOOK_FAMILIES = {
    "fentry": HookFamily("fentry", "fe_", "fentry/fexit on the syscall functions"),
    "kprobe": HookFamily("kprobe", "ks_", "kprobes on the syscall entry points (ksyscall)"),
    "tracepoint": HookFamily("tracepoint", "tp_", "per-syscall tracepoints"),
    "raw_tracepoint": HookFamily("raw_tracepoint", "rtp_", "raw sys_enter/sys_exit tracepoints"),
}


LOADERS = ("auto", "core", "bcc")


def candidate_hooks(choice: str, features: KernelFeatures | None = None
                    ) -> list[tuple[HookFamily, str | None]]:
    """Hook families in the order to try, each with why it cannot be used."""
    features = features or detect_features()
    names = list(HOOK_FAMILIES) if choice == "auto" else [choice]
    return [(HOOK_FAMILIES[n], HOOK_FAMILIES[n].unavailable_reason(features)) for n in names]


def ring_buffer_support() -> tuple[bool, str]:
    """(supported, what to tell the user): BPF ring buffers, Linux 5.8+."""
    try:
        ret = libbpf.lib().libbpf_probe_bpf_map_type(libbpf.BPF_MAP_TYPE_RINGBUF, ffi.NULL)
    except OSError as exc:
        return False, str(exc)
    if ret == 1:
        return True, "yes"
    return False, ("no: BPF ring buffers need Linux 5.8 or later" if ret == 0
                   else f"probe failed ({ret})")


def bpf_loop_support() -> tuple[bool, str]:
    """The CO-RE object copies iovecs with bpf_loop (Linux 5.17+)."""
    try:
        ret = libbpf.lib().libbpf_probe_bpf_helper(libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT,
                                                   libbpf.BPF_FUNC_LOOP, ffi.NULL)
    except OSError as exc:
        return False, str(exc)
    if ret == 1:
        return True, "yes"
    return False, ("no: the CO-RE object needs bpf_loop (Linux 5.17 or later); the BCC "
                   "loader does without" if ret == 0 else f"probe failed ({ret})")


def choose_loader(choice: str, features: KernelFeatures) -> str:
    """core or bcc: auto takes CO-RE wherever the kernel can load it (BTF,
    and bpf_loop from 5.17), BCC on the kernels before or without BTF."""
    if choice != "auto":
        return choice
    return "core" if features.btf and bpf_loop_support()[0] else "bcc"
