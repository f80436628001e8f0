#!/usr/bin/env bash
# Run the kernel tests on another kernel, once per hook family: Debian 12's
# own kernel (linux-image-amd64: 6.1, with BTF, kprobes and fentry), booted in
# qemu through virtme-ng on a copy-on-write view of this machine's root.
#
# Usage: scripts/kernel-matrix.sh [options] [FAMILY...]
#
#   FAMILY          kprobe, fentry, raw_tracepoint, tracepoint (default: all four)
#   --full          every CO-RE test of the spine file for each family, not the
#                   quick subset (about 17 minutes instead of 10 here)
#   --tests "P.."   pytest paths run for each family ($KM_TESTS;
#                   default tests/kernel/test_http1_e2e.py)
#   -k EXPR         pytest -k for those ($KM_PYTEST_K; default: the quick subset,
#                   or "not bcc" with --full)
#   --once "P.."    pytest paths run once, with no family forced ($KM_ONCE;
#                   default tests/kernel/test_doctor.py; "" skips), with -k "not bcc"
#   --accel A       auto, kvm or tcg ($KM_ACCEL; default auto, see below)
#   --time-scale N  OTEL_EBPF_TEST_TIME_SCALE for the tests' waits
#                   ($KM_TIME_SCALE; default 5 under tcg, 1 under kvm)
#   --memory M      guest memory ($KM_MEMORY; default 4G)
#   --cpus N        guest CPUs ($KM_CPUS; default 2)
#   --timeout S     limit for the guest run, in seconds ($KM_TIMEOUT; default 2400)
#   --results DIR   logs, JUnit XML, doctor.txt and summary.tsv
#                   (default: a new /var/tmp/otel-ebpf-kernel-matrix.XXXXXX)
#   --kernel PKG    Debian kernel image package (default: what linux-image-amd64
#                   depends on, e.g. linux-image-6.1.0-56-amd64)
#   -h, --help
#
# Run it as root from a tree where `make setup` has been run: the guest uses
# this tree's .venv and build/*.bpf.o (CO-RE objects, so they load on the guest
# kernel too).  It installs what it needs, and only that:
#   - apt packages qemu-system-x86, busybox-static, kmod, file, e2fsprogs,
#     python3-venv, when missing;
#   - virtme-ng from PyPI into its own venv, $VNG_VENV (default /opt/virtme-ng),
#     never into the project's .venv;
#   - the kernel, with `apt-get download` and `dpkg -x` into $KM_CACHE (default
#     /opt/otel-ebpf-kernel-matrix/PKG): nothing goes to /boot or /lib/modules
#     and no bootloader hook runs.  When Debian's headers for that release are
#     installed (linux-headers-amd64), the guest's /lib/modules/RELEASE/build
#     points at them, for the BCC loader.
#
# Each run snapshots this tree (without .git) and the Python the .venv runs on
# into a read-only ext4 image that the guest mounts over the same paths: the
# run sees one version of files that others may be editing, and it reads them
# from a disk instead of through the shared 9p root, which costs a round trip
# per file operation (an agent start took 35 s that way under emulation, 13 s
# from the image).  Everything else (/usr: nginx, curl, libbpf, libssl) comes
# from the shared root; the guest's writes to /tmp, /var, /etc... go to a tmpfs
# overlay and vanish with it.  Only the results directory is shared read-write.
#
# In the guest (this script again, with --in-guest) it mounts tracefs, debugfs
# and bpffs, brings loopback up, prints `otel-ebpf doctor`, runs the --once
# tests, then for each family:
#   1. starts the agent with OTEL_EBPF_HOOKS=FAMILY for half a second and reads
#      from its log ("tracing: ... hooks=FAMILY (N programs)") which family it used;
#   2. runs pytest with OTEL_EBPF_HOOKS=FAMILY, which tests/kernel/conftest.py
#      passes to every agent the tests start (skipped when the doctor says the
#      kernel does not offer the family).
# The quick subset per family is the spine's tests that depend most on the
# hooks: server spans from Python and nginx with curl's client spans, the
# nginx proxy hop (connect, writev, sendfile), and SIGTERM detaching every
# program.  The doctor does not read OTEL_EBPF_HOOKS, so its test runs once.
#
# Acceleration: KVM when it can boot a stock kernel.  Where /dev/kvm comes
# from kvm-pvm (a nested, paravirtual KVM that runs only PVM-enabled guest
# kernels: a stock kernel is still in its decompressor after minutes) the
# script uses qemu's TCG emulation, 20 to 100 times slower than the host for
# this work, and stretches the tests' waits by --time-scale.
#
# At the end it prints one row per family (kernel release, family, whether the
# kernel offers it, the family the agent used, passed/failed/skipped/errors,
# seconds) and one for the --once tests.  It exits 1 when a family the kernel
# offers failed (a test failed or errored, no test passed, or the agent used
# another family), when the --once tests failed, or when the guest did not
# finish; 2 on a usage or setup error.
set -euo pipefail

ALL_FAMILIES=(kprobe fentry raw_tracepoint tracepoint)
QUICK_K="not bcc and (server_span_joins or two_hops or sigterm)"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VNG_VENV=${VNG_VENV:-/opt/virtme-ng}
# Not under /var/cache, /var/tmp or /tmp: the guest has tmpfs there, and
# virtme-ng links the kernel's modules from this directory into the guest.
KM_CACHE=${KM_CACHE:-/opt/otel-ebpf-kernel-matrix}
IMAGE_LABEL=otel-km-tree
TESTS=${KM_TESTS:-tests/kernel/test_http1_e2e.py}
PYTEST_K=${KM_PYTEST_K-}
ONCE_TESTS=${KM_ONCE-tests/kernel/test_doctor.py}
ONCE_K="not bcc"
FULL=0
ACCEL=${KM_ACCEL:-auto}
TIME_SCALE=${KM_TIME_SCALE:-}
MEMORY=${KM_MEMORY:-4G}
CPUS=${KM_CPUS:-2}
TIMEOUT=${KM_TIMEOUT:-2400}
RESULTS=""
KERNEL_PKG=""
WORKDIR=""

log() { printf 'kernel-matrix: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# --- in the guest ------------------------------------------------------------

# virtme-ng-init sends the command's output to the virtio console ports it
# finds under /dev/virtio-ports/, which only udev creates; without udev (none
# here) it falls back to the serial console, which vng discards.  Find the
# port by name in sysfs instead.
guest_redirect_output() {
    local port
    for port in /sys/class/virtio-ports/vport*; do
        [[ -r $port/name && $(<"$port/name") == virtme.stdout ]] || continue
        # Both streams to stdout: one port keeps the lines in order.
        exec 1>"/dev/${port##*/}" 2>&1
    done
}

guest_prepare() {
    mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
    mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true
    ip link set dev lo up
    ulimit -l unlimited || true
}

# The snapshot image (make_tree_image) is the guest's only virtio disk: mount
# it and bind its trees over the paths they were copied from.
guest_mount_tree() {
    local tree=/run/kernel-matrix/tree dev="" path i
    modprobe -q virtio_blk || true
    modprobe -q ext4 || true
    for ((i = 0; i < 100; i++)); do
        dev=$(blkid -L "$IMAGE_LABEL" 2>/dev/null || true)
        [[ -n $dev ]] && break
        sleep 0.1
    done
    [[ -n $dev ]] || die "guest: no disk labelled $IMAGE_LABEL (modules virtio_blk, ext4?)"
    mkdir -p "$tree"
    mount -t ext4 -o ro "$dev" "$tree"
    while read -r path; do
        [[ -n $path ]] && mount --bind "$tree$path" "$path"
    done <"$tree/.kernel-matrix-mounts"
}

# passed failed skipped errors, from a JUnit XML file (zeros when missing).
junit_counts() {
    python3 - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0, 0, 0, 0)
    sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) for s in suites)
errors = sum(int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(total - failed - errors - skipped, failed, skipped, errors)
EOF
}

# yes, no or ?, from the doctor's "Hooks, in order of preference" list.
doctor_offers() {
    local line
    line=$(grep -E "^  $1 " "$RESULTS/doctor.txt" || true)
    case $line in
        *": available"*) echo yes ;;
        "") echo "?" ;;
        *) echo no ;;
    esac
}

# guest_pytest NAME K PATHS...: pytest into $RESULTS/NAME.{log,xml}; sets
# PYTEST_RC, PYTEST_SECS and PYTEST_COUNTS.
guest_pytest() {
    local name=$1 k=$2 started
    shift 2
    log "guest: [$name] pytest $*${k:+ -k \"$k\"}"
    started=$SECONDS
    PYTEST_RC=0
    timeout 1800 .venv/bin/pytest -p no:cacheprovider -q -rfEs ${k:+-k "$k"} \
        --junitxml="$RESULTS/$name.xml" "$@" >"$RESULTS/$name.pytest.log" 2>&1 || PYTEST_RC=$?
    PYTEST_SECS=$((SECONDS - started))
    tail -n 25 "$RESULTS/$name.pytest.log" | sed "s/^/  [$name] | /"
    PYTEST_COUNTS=$(junit_counts "$RESULTS/$name.xml" | tr ' ' '\t')
}

guest_main() {
    guest_redirect_output
    guest_prepare
    guest_mount_tree
    cd "$ROOT"    # again: the snapshot is mounted over it now
    # The tests stretch their waits by OTEL_EBPF_TEST_TIME_SCALE (tests/loopback.py).
    export PYTHONDONTWRITEBYTECODE=1 OTEL_EBPF_TEST_TIME_SCALE=${TIME_SCALE:-1}
    unset OTEL_EBPF_HOOKS
    local release family offered used
    release=$(uname -r)
    log "guest: kernel $release, $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"

    log "guest: .venv/bin/otel-ebpf doctor"
    .venv/bin/otel-ebpf doctor >"$RESULTS/doctor.txt" 2>&1 || true
    sed 's/^/  | /' "$RESULTS/doctor.txt"
    : >"$RESULTS/summary.tsv"

    local -a tests once
    read -r -a once <<<"$ONCE_TESTS"
    if ((${#once[@]})); then
        guest_pytest once "$ONCE_K" "${once[@]}"
        printf '%s\t(none)\t-\tauto\t%s\t%s\t%s\n' "$release" "$PYTEST_COUNTS" "$PYTEST_RC" \
            "$PYTEST_SECS" >>"$RESULTS/summary.tsv"
    fi

    read -r -a tests <<<"$TESTS"
    for family in "${FAMILIES[@]}"; do
        offered=$(doctor_offers "$family")
        # 1. Which family does the agent use when told this one?
        OTEL_EBPF_HOOKS=$family timeout 300 .venv/bin/otel-ebpf run --exporter none \
            --metrics-address "" --no-tls --duration 0.5 \
            >"$RESULTS/$family.agent.log" 2>&1 || true
        used=$(sed -n 's/.*tracing: .*hooks=\([a-z_]*\).*/\1/p' "$RESULTS/$family.agent.log" | head -n 1)
        log "guest: [$family] agent: $(grep -m1 -E 'tracing: |Error' "$RESULTS/$family.agent.log" \
            || tail -n 1 "$RESULTS/$family.agent.log")"
        # 2. The tests, with every agent they start forced onto the family.
        if [[ $offered == no ]]; then
            log "guest: [$family] not offered by this kernel: tests not run"
            PYTEST_COUNTS=$'0\t0\t0\t0' PYTEST_RC=- PYTEST_SECS=0
        else
            OTEL_EBPF_HOOKS=$family guest_pytest "$family" "$PYTEST_K" "${tests[@]}"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$release" "$family" "$offered" "${used:--}" \
            "$PYTEST_COUNTS" "$PYTEST_RC" "$PYTEST_SECS" >>"$RESULTS/summary.tsv"
    done
    echo finished >"$RESULTS/guest-finished"
}

# --- on the host -------------------------------------------------------------

ensure_apt_packages() {
    local -a missing=()
    local pkg status
    for pkg in qemu-system-x86 busybox-static kmod file e2fsprogs python3-venv; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

ensure_virtme_ng() {
    if [[ ! -x $VNG_VENV/bin/vng ]]; then
        log "installing virtme-ng into $VNG_VENV"
        python3 -m venv "$VNG_VENV"
        "$VNG_VENV/bin/pip" install -q virtme-ng
    fi
}

# Sets KERNEL_IMAGE and KERNEL_RELEASE.  The kernel and its modules end up in
# $KM_CACHE/PKG/{boot,lib/modules}, where virtme-ng finds the modules next to
# the image and links them into the guest's /lib/modules.
ensure_kernel() {
    local dir headers
    if [[ -z $KERNEL_PKG ]]; then
        KERNEL_PKG=$(apt-cache depends linux-image-amd64 2>/dev/null \
            | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1)
        if [[ -z $KERNEL_PKG ]]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            KERNEL_PKG=$(apt-cache depends linux-image-amd64 \
                | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n 1)
        fi
        [[ -n $KERNEL_PKG ]] || die "cannot resolve linux-image-amd64 to a kernel package"
    fi
    KERNEL_RELEASE=${KERNEL_PKG#linux-image-}
    dir=$KM_CACHE/$KERNEL_PKG
    KERNEL_IMAGE=$dir/boot/vmlinuz-$KERNEL_RELEASE
    if [[ ! -r $KERNEL_IMAGE || ! -r $dir/lib/modules/$KERNEL_RELEASE/modules.dep ]]; then
        log "fetching $KERNEL_PKG into $dir"
        rm -rf "$dir" "$KM_CACHE/download"
        mkdir -p "$dir" "$KM_CACHE/download"
        # apt's _apt user cannot write to a root-only directory: download as root.
        (cd "$KM_CACHE/download" && apt-get download -qq -o APT::Sandbox::User=root "$KERNEL_PKG")
        dpkg -x "$KM_CACHE/download/${KERNEL_PKG}_"*.deb "$dir"
        rm -rf "$KM_CACHE/download"
        depmod -a -b "$dir" "$KERNEL_RELEASE"
    fi
    headers=/usr/src/linux-headers-$KERNEL_RELEASE
    if [[ -d $headers && ! -e $dir/lib/modules/$KERNEL_RELEASE/build ]]; then
        ln -s "$headers" "$dir/lib/modules/$KERNEL_RELEASE/build"
    fi
}

# The read-only ext4 image described in the header: this tree without .git,
# and the Python the .venv runs on unless that is the system's (/usr stays on
# the shared root).  Its /.kernel-matrix-mounts lists the paths to bind.
make_tree_image() {
    local image=$1 stage=$2 home prefix pyver size
    local -a excludes=()
    mkdir -p "$stage$ROOT"
    tar -C "$ROOT" --exclude=./.git --exclude=./.pytest_cache --exclude=./.hypothesis -cf - . \
        | tar -C "$stage$ROOT" -xf -
    echo "$ROOT" >"$stage/.kernel-matrix-mounts"
    # Byte-compile here what changed since the host last ran it: the guest
    # cannot write __pycache__ and would compile again in every process.
    "$ROOT/.venv/bin/python" -m compileall -q -j 0 -s "$stage" -p / \
        "$stage$ROOT/agent" "$stage$ROOT/tests" >/dev/null || true
    home=$(sed -n 's/^home *= *//p' "$ROOT/.venv/pyvenv.cfg")
    prefix=$(dirname "$home")
    if [[ $prefix != /usr && $prefix != /usr/local && -d $prefix/lib ]]; then
        pyver=$("$ROOT/.venv/bin/python" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
        excludes=(--exclude="./lib/$pyver/test" --exclude="./lib/$pyver/idlelib"
            --exclude="./lib/$pyver/tkinter" --exclude="./lib/$pyver/ensurepip"
            --exclude="./lib/$pyver/config-*")
        if ! grep -qE '^include-system-site-packages *= *true' "$ROOT/.venv/pyvenv.cfg"; then
            excludes+=(--exclude="./lib/$pyver/site-packages")
        fi
        mkdir -p "$stage$prefix"
        tar -C "$prefix" "${excludes[@]}" -cf - . | tar -C "$stage$prefix" -xf -
        echo "$prefix" >>"$stage/.kernel-matrix-mounts"
    fi
    size=$(du -sm "$stage" | cut -f1)
    mkfs.ext4 -q -F -L "$IMAGE_LABEL" -O ^has_journal -E root_owner=0:0 -d "$stage" \
        "$image" "$((size * 13 / 10 + 64))M"
    rm -rf "$stage"
}

# kvm only where a stock kernel boots under it (see the header).
choose_accel() {
    if [[ $ACCEL == auto ]]; then
        if [[ ! -w /dev/kvm ]]; then
            ACCEL=tcg
        elif [[ -d /sys/module/kvm_pvm ]]; then
            log "/dev/kvm is kvm-pvm, which cannot run a stock kernel: using TCG emulation"
            ACCEL=tcg
        else
            ACCEL=kvm
        fi
    fi
    case $ACCEL in kvm | tcg) ;; *) die "--accel must be auto, kvm or tcg" ;; esac
    if [[ -z $TIME_SCALE ]]; then
        if [[ $ACCEL == tcg ]]; then TIME_SCALE=5; else TIME_SCALE=1; fi
    fi
}

# ok or FAIL for one summary row; "not offered" rows never fail the run.
row_result() {
    local family=$1 offered=$2 used=$3 passed=$4 failed=$5 errors=$6 rc=$7
    if [[ $offered == no ]]; then
        echo "not offered"
    elif [[ $failed == 0 && $errors == 0 && $passed -gt 0 && $rc == 0 &&
        ($family == "(none)" || $used == "$family") ]]; then
        echo ok
    else
        echo FAIL
    fi
}

print_table() {
    local format='%-16s %-15s %-8s %-15s %6s %6s %7s %6s %5s  %s\n'
    local release family offered used passed failed skipped errors rc secs
    # shellcheck disable=SC2059
    printf "\n$format" kernel family offered agent_used passed failed skipped errors secs result
    while IFS=$'\t' read -r release family offered used passed failed skipped errors rc secs; do
        # shellcheck disable=SC2059
        printf "$format" "$release" "$family" "$offered" "$used" "$passed" "$failed" \
            "$skipped" "$errors" "$secs" \
            "$(row_result "$family" "$offered" "$used" "$passed" "$failed" "$errors" "$rc")"
    done <"$1"
    echo
}

host_main() {
    [[ $(id -u) -eq 0 ]] || die "run as root (apt-get, qemu, BPF in the guest)"
    [[ -x $ROOT/.venv/bin/otel-ebpf && -r $ROOT/build/capture.bpf.o ]] \
        || die "$ROOT/.venv or build/capture.bpf.o missing: run \`make setup\` first"
    local family
    for family in "${FAMILIES[@]}"; do
        [[ " ${ALL_FAMILIES[*]} " == *" $family "* ]] \
            || die "unknown hook family '$family' (one of: ${ALL_FAMILIES[*]})"
    done
    if [[ -z $PYTEST_K ]]; then
        if ((FULL)); then PYTEST_K="not bcc"; else PYTEST_K=$QUICK_K; fi
    fi
    ensure_apt_packages
    ensure_virtme_ng
    ensure_kernel
    choose_accel

    [[ -n $RESULTS ]] || RESULTS=$(mktemp -d /var/tmp/otel-ebpf-kernel-matrix.XXXXXX)
    mkdir -p "$RESULTS"
    RESULTS=$(cd "$RESULTS" && pwd)
    rm -f "$RESULTS/summary.tsv" "$RESULTS/guest-finished"

    local started=$SECONDS
    WORKDIR=$(mktemp -d /var/tmp/otel-ebpf-kernel-matrix-image.XXXXXX)
    trap 'rm -rf "$WORKDIR"' EXIT
    trap 'exit 130' INT TERM
    make_tree_image "$WORKDIR/tree.img" "$WORKDIR/stage"
    log "snapshot of $ROOT and its Python: $(du -sh "$WORKDIR/tree.img" | cut -f1) image in $((SECONDS - started))s"

    local -a vng=("$VNG_VENV/bin/vng" --run "$KERNEL_IMAGE" --user root
        --memory "$MEMORY" --cpus "$CPUS" --cwd "$ROOT"
        --rwdir "$RESULTS"
        --qemu-opts="-drive if=none,id=kmtree,format=raw,readonly=on,file=$WORKDIR/tree.img"
        --qemu-opts="-device virtio-blk-pci,drive=kmtree")
    if [[ $ACCEL == tcg ]]; then
        # With two emulated CPUs the kernel finds the TSC unstable and falls
        # back to HPET, every read of which is an emulated MMIO access: trust
        # the TSC.  The emulated CPU needs no Spectre/Meltdown mitigations.
        vng+=(--disable-kvm --append "tsc=reliable" --append "mitigations=off")
    fi
    local -a guest_cmd=("$ROOT/scripts/kernel-matrix.sh" --in-guest --results "$RESULTS"
        --tests "$TESTS" -k "$PYTEST_K" --once "$ONCE_TESTS" --time-scale "$TIME_SCALE"
        "${FAMILIES[@]}")
    local quoted
    printf -v quoted '%q ' "${guest_cmd[@]}"

    log "kernel $KERNEL_RELEASE ($KERNEL_IMAGE), accel $ACCEL, $CPUS CPUs, $MEMORY, time scale $TIME_SCALE"
    log "families: ${FAMILIES[*]}; each: $TESTS -k \"$PYTEST_K\"; once: ${ONCE_TESTS:-nothing}"
    log "results: $RESULTS"
    local vng_rc vng_started=$SECONDS
    # vng runs virtme-run from PATH.  timeout signals its whole process group,
    # qemu included.  No stdin: no terminal needed.  The pipe matters: qemu
    # reopens /proc/self/fd/1, which on a regular file would write from
    # offset 0 over what the script printed.
    set +e
    PATH=$VNG_VENV/bin:$PATH timeout --kill-after=30 "$TIMEOUT" \
        "${vng[@]}" --exec "$quoted" </dev/null 2>&1 | cat
    vng_rc=${PIPESTATUS[0]}
    set -e
    # vng's own status says little: without udev the guest cannot report the
    # command's status (255); the summary file is what counts.
    log "guest run: $((SECONDS - vng_started))s (vng exit status $vng_rc)"

    if [[ ! -s $RESULTS/summary.tsv ]]; then
        log "error: the guest wrote no results (output above; logs in $RESULTS)"
        exit 1
    fi
    print_table "$RESULTS/summary.tsv"
    local status=0 release offered used passed failed skipped errors rc secs
    while IFS=$'\t' read -r release family offered used passed failed skipped errors rc secs; do
        if [[ $(row_result "$family" "$offered" "$used" "$passed" "$failed" "$errors" "$rc") == FAIL ]]; then
            status=1
        fi
    done <"$RESULTS/summary.tsv"
    if [[ ! -e $RESULTS/guest-finished ]]; then
        log "error: the guest stopped before the last family (--timeout ${TIMEOUT}s?)"
        status=1
    fi
    log "total $((SECONDS - started))s; logs, JUnit XML and doctor.txt in $RESULTS"
    exit "$status"
}

# --- arguments ---------------------------------------------------------------

IN_GUEST=0
FAMILIES=()
while (($#)); do
    case $1 in
        --in-guest) IN_GUEST=1 ;;
        --full) FULL=1 ;;
        --tests) TESTS=$2; shift ;;
        -k) PYTEST_K=$2; shift ;;
        --once) ONCE_TESTS=$2; shift ;;
        --accel) ACCEL=$2; shift ;;
        --time-scale) TIME_SCALE=$2; shift ;;
        --memory) MEMORY=$2; shift ;;
        --cpus) CPUS=$2; shift ;;
        --timeout) TIMEOUT=$2; shift ;;
        --results) RESULTS=$2; shift ;;
        --kernel) KERNEL_PKG=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) FAMILIES+=("$1") ;;
    esac
    shift
done
((${#FAMILIES[@]})) || FAMILIES=("${ALL_FAMILIES[@]}")

if ((IN_GUEST)); then
    [[ -n $RESULTS ]] || die "--in-guest needs --results"
    guest_main
else
    host_main
fi
