"""otel-ebpf: eBPF zero-instrumentation tracing agent (userspace pipeline)."""

__version__ = "0.1.0"
DISTRO_NAME = "otel-ebpf"
