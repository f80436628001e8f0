# syntax=docker/dockerfile:1
#
# otel-ebpf container image (Debian 12).  Build from a checkout:
#
#   make bpf                 # writes build/vmlinux.h from this machine's kernel BTF
#   docker build -t otel-ebpf:dev .
#
# Why build/vmlinux.h comes from the build host: the BPF programs are CO-RE
# (compile once, run everywhere).  vmlinux.h only has to declare the kernel
# types the programs use; libbpf relocates every field access against the
# target node's own BTF (/sys/kernel/btf/vmlinux) at load time.  So a vmlinux.h
# dumped from any recent kernel of the same architecture serves every node
# with BTF, which is what libbpf-tools and Beyla ship.  A build step cannot
# rely on reading the build host's /sys, hence the file in the build context.
# To use another one: --build-arg VMLINUX_H=path/in/context/vmlinux.h (of the
# image's architecture; add the path to .dockerignore's allow list, which
# lets through only build/vmlinux.h).
#
# The container runs as root with a few capabilities (see
# deploy/daemonset.yaml); a non-root user is not possible: Kubernetes and
# Docker grant added capabilities only to UID 0 (no ambient capabilities for
# other users), and the alternative, file capabilities on the Python
# interpreter, would hand them to every Python program in the image.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---- builder: BPF objects and the Python virtual environment ----------------
FROM ${DEBIAN_IMAGE} AS builder

# Debian package versions are not pinned: the base image tag decides the
# release, and pinned point versions vanish from the mirrors on each update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        clang-19 llvm-19 libbpf-dev bpftool make python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
ARG VMLINUX_H=build/vmlinux.h
COPY Makefile ./
COPY bpf/ bpf/
COPY ${VMLINUX_H} build/vmlinux.h
# -o: take build/vmlinux.h as given (do not dump the build host's BTF) and
# skip `sysdeps` (the development packages of scripts/install-system-deps.sh).
# The sources go beside the objects: the BCC loader compiles them at start.
RUN make -o sysdeps -o build/vmlinux.h bpf \
    && mkdir -p /opt/otel-ebpf/bpf \
    && cp build/*.bpf.o bpf/*.bpf.c bpf/*.h /opt/otel-ebpf/bpf/

# --system-site-packages: the runtime stage's python3-bpfcc (Debian's BCC;
# PyPI's `bcc` is unrelated) is then importable from the venv.
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY agent/ agent/
RUN python3 -m venv --system-site-packages /opt/otel-ebpf/venv \
    && /opt/otel-ebpf/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        -c requirements/constraints.txt . \
    && find /opt/otel-ebpf/venv -name __pycache__ -prune -exec rm -rf {} +

# ---- runtime ------------------------------------------------------------------
FROM ${DEBIAN_IMAGE}

LABEL org.opencontainers.image.title="otel-ebpf" \
      org.opencontainers.image.description="eBPF zero-instrumentation tracing agent exporting OpenTelemetry spans" \
      org.opencontainers.image.licenses="Apache-2.0 AND GPL-2.0-only"

# python3 must be the builder's (same base image): the venv links to it.
# libbpf1: loaded through cffi.  python3-bpfcc: the BCC front end.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libbpf1 python3-bpfcc ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/otel-ebpf /opt/otel-ebpf

# The installed package does not sit beside build/ and bpf/: tell it where
# the objects and their sources are.
ENV PATH=/opt/otel-ebpf/venv/bin:$PATH \
    OTEL_EBPF_BPF_DIR=/opt/otel-ebpf/bpf \
    OTEL_EBPF_BPF_SOURCE_DIR=/opt/otel-ebpf/bpf \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# /metrics, /healthz, /readyz (set OTEL_EBPF_METRICS_ADDRESS=0.0.0.0:9464 to
# reach them from outside the container: the default is loopback).
EXPOSE 9464
# Kubernetes probes /healthz and /readyz (deploy/daemonset.yaml); no image health check.
HEALTHCHECK NONE

ENTRYPOINT ["otel-ebpf"]
CMD ["run"]
