"""The doctor's list of TLS stacks out of reach, from real processes."""
from __future__ import annotations

import subprocess
import sys

from agent.capture import tls_runtimes

READY = "ready"


def _process(code: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", f"{code}\nprint({READY!r}, flush=True)\n"
                              "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == READY
    return child


def test_a_grpcio_process_is_named_as_out_of_reach_and_an_openssl_one_is_not(tmp_path):
    grpcio = _process("import grpc")
    openssl_only = _process("import ssl")
    try:
        found = tls_runtimes.scan()
        grpc_users = [names for runtime, names in found.items() if runtime.name == "BoringSSL in grpcio"]
        assert grpc_users, found
        lines = tls_runtimes.describe(found)
        assert any(line.startswith("BoringSSL in grpcio: NOT covered") for line in lines), lines
        with open(f"/proc/{openssl_only.pid}/maps") as f:
            assert not tls_runtimes.runtimes_of(f.read(), "python3")
        with open(f"/proc/{grpcio.pid}/maps") as f:
            assert {r.name for r in tls_runtimes.runtimes_of(f.read(), "python3")} == {"BoringSSL in grpcio"}
    finally:
        for child in (grpcio, openssl_only):
            child.kill()
            child.wait()


def test_executables_and_mapped_files_name_their_stack():
    java = "7f00-7f10 r-xp 0 fe:00 1 /usr/lib/jvm/java-17/lib/server/libjvm.so\n"
    assert {r.name for r in tls_runtimes.runtimes_of(java, "java")} == {"Java (JSSE)"}
    assert {r.name for r in tls_runtimes.runtimes_of("", "envoy")} == {"BoringSSL in Envoy"}
    assert tls_runtimes.runtimes_of("7f00-7f10 r-xp 0 fe:00 1 /usr/lib/libssl.so.3\n", "nginx") == set()
    lines = tls_runtimes.describe({})
    assert lines and lines[0].startswith("No running process uses a TLS stack")
