# otel-ebpf: build, run and test.
#
#   make setup   system packages, .venv, build/vmlinux.h, build/*.bpf.o, tracefs
#   make run     setup, then .venv/bin/otel-ebpf run $(ARGS)
#   make test    setup, then pytest over tests/ (tests/kernel/ included)
#   make bpf     only build/vmlinux.h and build/*.bpf.o
#   make lint    ruff over agent/ and tests/
#   make clean   remove build/ (the venv stays: `make distclean` removes it too)
#
# Every step is skipped when already done, so a second `make setup` takes
# seconds.  Run as root on Debian 12 (apt-get, mount and BPF loading need it).

SHELL := /bin/bash
.DEFAULT_GOAL := setup

CLANG    ?= clang-19
BPFTOOL  ?= bpftool
PYTHON   ?= python3
VENV     ?= .venv
BUILD    ?= build
BTF      ?= /sys/kernel/btf/vmlinux
ARGS     ?=
PYTEST_ARGS ?=
PIP_FLAGS ?=

ARCH := $(shell uname -m)
KERNEL_RELEASE := $(shell uname -r)
# bpf_tracing.h wants the kernel's name for the architecture.
BPF_ARCH := $(or $(strip \
    $(if $(filter x86_64 i%86,$(ARCH)),x86) \
    $(if $(filter aarch64 arm64,$(ARCH)),arm64) \
    $(if $(filter armv%,$(ARCH)),arm) \
    $(if $(filter ppc64%,$(ARCH)),powerpc) \
    $(if $(filter s390x,$(ARCH)),s390) \
    $(if $(filter riscv64,$(ARCH)),riscv) \
    $(if $(filter loongarch64,$(ARCH)),loongarch)),$(ARCH))
MULTIARCH_INCLUDE ?= /usr/include/$(ARCH)-linux-gnu

BPF_CFLAGS ?= -target bpf -g -O2 -Wall -Wno-unused-function \
    -D__TARGET_ARCH_$(BPF_ARCH) -I $(BUILD) -I bpf -I $(MULTIARCH_INCLUDE)

# One object holds the whole capture: bpf/capture.bpf.c includes the
# protocol units (bpf/http.bpf.c, grpc.bpf.c, sql.bpf.c), which are not
# compiled on their own (docs/decisions/kernel-units.md says why).
BPF_SRCS := bpf/capture.bpf.c
BPF_OBJS := $(patsubst bpf/%.bpf.c,$(BUILD)/%.bpf.o,$(BPF_SRCS))
BPF_HDRS := $(shell find bpf -name '*.h' -o -name '*.bpf.c' 2>/dev/null)

VENV_STAMP    := $(VENV)/.stamp-install
CONSTRAINTS   := requirements/constraints.txt

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test bpf no-btf lint clean distclean sysdeps venv mounts lock FORCE

setup: sysdeps venv bpf mounts
	@echo "setup: done (kernel $(KERNEL_RELEASE), $(words $(BPF_OBJS)) BPF object(s) in $(BUILD)/)"

run: setup
	$(VENV)/bin/otel-ebpf run $(ARGS)

# pytest exits non-zero on failure, and with 5 when no test ran: both fail `make test`.
test: setup lint
	$(VENV)/bin/pytest -ra --durations=25 $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check agent tests

# --- system packages --------------------------------------------------------
# The script asks dpkg (0.1 s) and runs apt-get only for what is missing.
sysdeps:
	@scripts/install-system-deps.sh

# --- Python virtual environment --------------------------------------------
# BCC's Python module comes from Debian (python3-bpfcc: PyPI's `bcc` is another
# project): the venv sees it through a link, not through all of dist-packages.
BCC_PYTHON ?= /usr/lib/python3/dist-packages/bcc

venv: $(VENV_STAMP)
	@site=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	    if [ -d $(BCC_PYTHON) ] && [ ! -e "$$site/bcc" ]; then ln -sfn $(BCC_PYTHON) "$$site/bcc"; fi

$(VENV_STAMP): pyproject.toml $(wildcard $(CONSTRAINTS)) | sysdeps
	@if ! $(VENV)/bin/python -c pass 2>/dev/null; then \
	    echo "venv: creating $(VENV) with $(PYTHON)"; \
	    rm -rf $(VENV); \
	    $(PYTHON) -m venv $(VENV); \
	fi
	$(VENV)/bin/pip install -q $(PIP_FLAGS) $(if $(wildcard $(CONSTRAINTS)),-c $(CONSTRAINTS)) -e '.[test,bench]'
	@touch $@

# Regenerate the constraints file from what the venv holds now.
lock: venv
	@mkdir -p $(dir $(CONSTRAINTS))
	@{ echo "# Versions tested together; used as pip constraints by 'make setup'."; \
	   echo "# Regenerate with 'make lock' after changing dependencies in pyproject.toml."; \
	   $(VENV)/bin/pip list --format=freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)=='; } > $(CONSTRAINTS)
	@echo "lock: wrote $(CONSTRAINTS)"

# --- BPF objects (CO-RE) -----------------------------------------------------
# Without BTF (and no vmlinux.h given) there is nothing to compile against:
# the agent's BCC loader compiles the same sources at start instead.
bpf: $(if $(or $(wildcard $(BTF)),$(wildcard $(BUILD)/vmlinux.h)),$(BPF_OBJS) $(BUILD)/vmlinux.h,no-btf)

no-btf:
	@echo "bpf: this kernel has no BTF ($(BTF)): CO-RE objects not built; the agent uses its BCC loader (kernel headers)"

# Rewritten only when the running kernel changes, so vmlinux.h follows the kernel.
$(BUILD)/.kernel-release: FORCE
	@mkdir -p $(BUILD)
	@if [ "$$(cat $@ 2>/dev/null)" != "$(KERNEL_RELEASE)" ]; then echo "$(KERNEL_RELEASE)" > $@; fi

$(BUILD)/vmlinux.h: $(BUILD)/.kernel-release | sysdeps
	@test -r $(BTF) || { echo "error: $(BTF) missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y is required for CO-RE)" >&2; exit 1; }
	$(BPFTOOL) btf dump file $(BTF) format c > $@.tmp
	@mv $@.tmp $@

$(BUILD)/%.bpf.o: bpf/%.bpf.c $(BUILD)/vmlinux.h $(BPF_HDRS) | sysdeps
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@.tmp
	@mv $@.tmp $@

# --- tracefs / debugfs ---------------------------------------------------------
# Syscall tracepoints need tracefs; a fresh machine does not mount it.  A failure
# here only warns: the agent explains at start what is missing.
mounts:
	@mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing \
	    || echo "warning: could not mount tracefs at /sys/kernel/tracing (root needed)" >&2
	@mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug \
	    || echo "warning: could not mount debugfs at /sys/kernel/debug (root needed)" >&2

FORCE:

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis .ruff_cache
