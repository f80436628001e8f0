#!/usr/bin/env bash
# Install the Debian 12 packages otel-ebpf needs to build, run and test.
#
# Idempotent and fast when everything is there: it asks dpkg what is missing
# and runs apt-get (update + install) only for that.  Services the packages
# ship (nginx, PostgreSQL, MariaDB) are NOT started by the install: the tests
# start their own throwaway instances on loopback.
#
# Usage: scripts/install-system-deps.sh [--check]
#   --check   only list what is missing; exit 1 when something is.
set -euo pipefail

PACKAGES=(
    # BPF toolchain: clang-19 (clang-14's output trips the verifier), libbpf, bpftool
    clang-19 llvm-19 libbpf-dev bpftool
    make curl iproute2 linux-perf
    # Python venv for Debian's python3 (pyenv/other pythons ship venv already)
    python3-venv
    # BCC front end (Debian's, not PyPI's unrelated `bcc`), and kernel headers for
    # it to compile against: Debian's own kernel's, which the BCC build accepts
    # on any kernel (it reads no kernel struct)
    python3-bpfcc bpfcc-tools "linux-headers-$(dpkg --print-architecture)"
    # Peers for the end-to-end tests and benchmarks
    nginx-light wrk nghttp2-client prometheus postgresql-15 mariadb-server openssl
    # Cache servers and their tools (redis-cli, redis-benchmark)
    redis-server redis-tools memcached
    # OpenSSL headers and static libraries: the statically linked TLS client test peer
    libssl-dev
    # Go toolchain: the Go crypto/tls test peers are built at test time (standard
    # library, and Debian's packaged grpc-go for the gRPC-over-TLS peer)
    golang-go golang-google-grpc-dev
    # `vagrant validate` checks the Vagrantfile offline (tests/test_deploy.py)
    vagrant
    # Node.js: peer of the HTTP/2 kernel tests (its `http2` server) and of
    # the memory-BIO TLS tests (its `https` server and client)
    nodejs
    # nft: the NAT kernel tests build a "Service" address with a DNAT rule
    nftables
    # Apache 2.4 with mod_ssl and mod_http2: the TLS kernel tests run a private
    # instance (their own config and port), never the system service
    apache2
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: all ${#PACKAGES[@]} system packages present"
    exit 0
fi

if [[ "${1:-}" == "--check" ]]; then
    echo "install-system-deps: missing: ${missing[*]}"
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-system-deps: missing ${missing[*]}; run as root (or install sudo)" >&2
        exit 1
    fi
fi

echo "install-system-deps: installing ${missing[*]}"

# Keep package post-install scripts from starting daemons (nginx on :80,
# PostgreSQL, MariaDB): there is no init system here and the tests start
# their own instances.  Only add the policy when none exists, remove ours after.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    added_policy=1
fi
cleanup() {
    if [[ $added_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-system-deps: done"
