"""`otel-ebpf doctor`: what this kernel offers, and what the agent will use."""
from __future__ import annotations

from agent import libbpf
from agent.kernel_features import detect, ensure_tracefs
from agent.loader import CaptureLoadError, CaptureSettings, candidate_hooks, load_capture
from agent.tls import TlsProbes


def _ring_buffer_supported() -> tuple[bool, str]:
    try:
        ret = libbpf.lib().libbpf_probe_bpf_map_type(libbpf.BPF_MAP_TYPE_RINGBUF, libbpf.ffi.NULL)
    except OSError as exc:
        return False, str(exc)
    if ret == 1:
        return True, "yes"
    return False, "no: BPF ring buffers need Linux 5.8 or later" if ret == 0 else f"probe failed ({ret})"


def _bpf_loop_supported() -> tuple[bool, str]:
    """The capture copies iovecs with bpf_loop (Linux 5.17+)."""
    try:
        ret = libbpf.lib().libbpf_probe_bpf_helper(libbpf.BPF_PROG_TYPE_RAW_TRACEPOINT,
                                                   libbpf.BPF_FUNC_LOOP, libbpf.ffi.NULL)
    except OSError as exc:
        return False, str(exc)
    if ret == 1:
        return True, "yes"
    return False, ("no: the capture object needs bpf_loop (Linux 5.17 or later)" if ret == 0
                   else f"probe failed ({ret})")


def report() -> tuple[str, bool]:
    """The doctor's text and whether the agent can run here."""
    lines = []
    mounted, mount_message = ensure_tracefs()
    features = detect()
    lines.append(features.report())
    if mount_message:
        lines.append(f"tracefs: {mount_message}")
    ring_ok, ring_text = _ring_buffer_supported()
    lines.append(f"BPF ring buffer: {ring_text}")
    loop_ok, loop_text = _bpf_loop_supported()
    lines.append(f"bpf_loop helper: {loop_text}")
    lines.append("")
    lines.append("Hooks, in order of preference:")
    for family, reason in candidate_hooks("auto", features):
        lines.append(f"  {family.name:<11} {family.description}: "
                     f"{'available' if reason is None else 'unavailable: ' + reason}")
    ok = ring_ok and loop_ok
    try:
        capture = load_capture(CaptureSettings(ring_buffer_bytes=1 << 20), )
    except (CaptureLoadError, FileNotFoundError, OSError) as exc:
        lines.append(f"\nThe agent cannot attach here:\n{exc}")
        ok = False
    else:
        try:
            lines.append(f"\nThe agent will use: {capture.hook_family.name} "
                         f"({capture.attached_programs} programs loaded and attached in a trial)")
            for name, why in capture.skipped_hooks:
                lines.append(f"  skipped {name}: {why}")
            tls = TlsProbes(capture)
            tls.start()
            attach = "uprobe_multi links" if capture.uprobe_multi else "perf-event uprobes"
            lines.append(f"\nTLS: {tls.counts['files_probed']} OpenSSL file(s) probed in a trial "
                         f"({tls.counts['probes_attached']} probes, {attach})")
            lines += [f"  {path}" for path in tls.probed_files]
            if not tls.counts["files_probed"]:
                lines.append("  no OpenSSL found: TLS traffic stays unreadable "
                             "(Go, BoringSSL, rustls and Java are out of reach anyway)")
        finally:
            capture.close()
    return "\n".join(lines), ok
