"""`otel-ebpf doctor`: what this kernel offers, and what the agent will use."""
from __future__ import annotations

from agent.capture.kernel_features import detect, ensure_tracefs
from agent.capture.kernel_headers import KernelHeadersError, find as find_kernel_headers
from agent.capture.hook_choice import (bpf_loop_support, candidate_hooks, choose_loader,
                                       ring_buffer_support)
from agent.capture.loader import CaptureLoadError, CaptureSettings, load_capture
from agent.capture.go_tls import go_tls_coverage
from agent.capture import tls_runtimes
from agent.capture.tls import TlsProbes
from agent.capture.conntrack import doctor_text as conntrack_text


def _kernel_headers_text(configured: str | None) -> str:
    try:
        headers = find_kernel_headers(configured)
    except KernelHeadersError as exc:
        return f"none usable: {exc}"
    headers.close()
    return headers.describe()


def loader_reason(choice: str, front_end: str, btf: bool, loop_ok: bool) -> tuple[bool, str]:
    """Whether what was checked allows this front end, and the reason to
    print.  CO-RE needs kernel BTF and bpf_loop; BCC needs neither (it
    compiles against kernel headers, reported on their own line, and copies
    with bounded loops)."""
    found = (f"kernel BTF {'present' if btf else 'absent'}, "
             f"bpf_loop {'present' if loop_ok else 'absent'}")
    if front_end == "core":
        if btf and loop_ok:
            return True, "kernel BTF and bpf_loop present"
        return False, f"{found}: the CO-RE object needs both and cannot load"
    if choice == "bcc":
        return True, f"chosen with --loader bcc; {found}, neither needed by BCC"
    missing = "no kernel BTF" if not btf else "kernel BTF present but no bpf_loop"
    return True, f"{missing}: the CO-RE object cannot load; BCC needs neither BTF nor bpf_loop"


def exchange_records_text(front_end: str, loader_ok: bool) -> str:
    """What --http-exchanges gives with this front end: the probes parse
    HTTP/1.x heads with bpf_loop, which only the CO-RE build's programs run."""
    line = "HTTP/1.x exchange records (--http-exchanges on or by-load, off by default): "
    if front_end != "core":
        return line + ("not with the BCC loader (its programs have no bpf_loop): "
                       "HTTP/1.x takes the payload path")
    if not loader_ok:
        return line + "need the CO-RE loader, which cannot load here"
    return line + "available: the probes pair requests with responses"


def report(loader: str = "auto", kernel_headers: str | None = None) -> tuple[str, bool]:
    """The doctor's text and whether the agent can run here."""
    lines = []
    mounted, mount_message = ensure_tracefs()
    features = detect()
    lines.append(features.report())
    if mount_message:
        lines.append(f"tracefs: {mount_message}")
    ring_ok, ring_text = ring_buffer_support()
    lines.append(f"BPF ring buffer: {ring_text}")
    front_end = choose_loader(loader, features)
    loop_ok, loop_text = bpf_loop_support()
    lines.append(f"bpf_loop helper: {loop_text}")
    loader_ok, why = loader_reason(loader, front_end, features.btf, loop_ok)
    lines.append(f"Loader: {front_end} ({why})")
    lines.append(exchange_records_text(front_end, loader_ok))
    lines.append(f"Kernel headers for the BCC loader: {_kernel_headers_text(kernel_headers)}")
    lines.append("")
    lines.append("Hooks, in order of preference:")
    for family, reason in candidate_hooks("auto", features):
        lines.append(f"  {family.name:<11} {family.description}: "
                     f"{'available' if reason is None else 'unavailable: ' + reason}")
    ok = ring_ok and loader_ok
    try:
        capture = load_capture(CaptureSettings(ring_buffer_bytes=1 << 20, loader=loader,
                                               kernel_headers=kernel_headers))
    except (CaptureLoadError, FileNotFoundError, OSError) as exc:
        lines.append(f"\nThe agent cannot attach here:\n{exc}")
        ok = False
    else:
        try:
            lines.append(f"\nThe agent will use: {capture.hook_family.name} hooks "
                         f"({capture.attached_programs} programs loaded and attached in a trial), "
                         f"loader {capture.front_end.describe()}")
            for name, why in capture.skipped_hooks:
                lines.append(f"  skipped {name}: {why}")
            tls = TlsProbes(capture)
            tls.start()
            attach = "uprobe_multi links" if capture.uprobe_multi else "perf-event uprobes"
            lines.append(f"\nTLS: {tls.counts['files_probed']} OpenSSL file(s) probed in a trial "
                         f"({tls.counts['probes_attached']} probes, {attach})")
            lines += [f"  {path}" for path in tls.probed_files]
            lines.append(tls.membio.describe())
            unwatched = getattr(capture.front_end, "unattached_watches", [])
            lines.append("  libssl files opened later: " + (
                "found by the exec rescans only (the openat tracepoints did not attach: "
                "no tracefs?)" if unwatched else
                "probed when a traced process opens one (openat tracepoints)"))
            if not tls.counts["files_probed"]:
                lines.append("  no OpenSSL found: OpenSSL-based TLS traffic stays unreadable "
                             "(BoringSSL, rustls and Java are out of reach anyway)")
            lines.append(go_tls_coverage(tls.go))
            lines += tls_runtimes.describe(tls_runtimes.scan())
        finally:
            capture.close()
    lines.append(f"\n{conntrack_text()}")
    return "\n".join(lines), ok
