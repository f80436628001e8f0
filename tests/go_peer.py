"""The Go test peer (tests/kernel/peers/go_tls/), built at test time with the
system's Go toolchain (Debian's golang-go): HTTPS with the standard library
only, gRPC over TLS with Debian's packaged grpc-go (-tags grpcpeer); no
module proxy, nothing checked in as a binary."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parent / "kernel" / "peers"
SOURCE = PEERS / "go_tls"
GRPC_TAG = "grpcpeer"
# Debian's packaged Go sources (golang-google-grpc-dev and its dependencies).
DEBIAN_GOPATH = "/usr/share/gocode"


def require_go() -> None:
    if not shutil.which("go"):
        pytest.skip("go is not installed (make setup installs Debian's golang-go)")


def go_build(out_dir, name: str, ldflags: str = "", tags: str = "") -> str:
    """Build the peer as out_dir/name (ldflags "-w": no DWARF, "-s": no
    symbols; tags GRPC_TAG: with its gRPC commands)."""
    out = os.path.abspath(os.path.join(out_dir, name))
    env = {**os.environ, "GO111MODULE": "off", "GOPROXY": "off", "GOFLAGS": "",
           "CGO_ENABLED": "0", "GOCACHE": os.path.join(out_dir, "gocache"),
           "GOPATH": DEBIAN_GOPATH, "HOME": str(out_dir)}
    subprocess.run(["go", "build", "-tags", tags, "-ldflags", ldflags, "-o", out, "."],
                   check=True, env=env, cwd=SOURCE, capture_output=True, timeout=300)
    return out


def require_packaged_grpc() -> None:
    require_go()
    if not os.path.isdir(os.path.join(DEBIAN_GOPATH, "src", "google.golang.org", "grpc")):
        pytest.skip("Debian's grpc-go is not installed (make setup installs "
                    "golang-google-grpc-dev)")
