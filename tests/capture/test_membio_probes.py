"""Memory-BIO probe attachment (agent/capture/tls_membio.py): which files
get which functions, with real OpenSSL files from this machine."""
from __future__ import annotations

import shutil

import pytest

from agent.capture.tls import system_libssl_paths
from agent.capture.tls_membio import (BIO_FUNCTIONS, SSL_FUNCTIONS, MemoryBioProbes,
                                      libcrypto_beside)


class RecordingCapture:
    """Stands in for the loaded capture object: records what would attach
    (attaching needs the kernel; tests/kernel/test_tls_membio.py does that)."""

    def __init__(self):
        self.calls = []

    def attach_uprobes(self, program, path, targets, retprobe):
        self.calls.append((program, path, sorted(cookie for _, cookie in targets), retprobe))
        return len(targets)


@pytest.fixture
def system_libssl():
    paths = [p for p in system_libssl_paths() if p.endswith("libssl.so.3")]
    if not paths:
        pytest.skip("no system libssl.so.3")
    return paths[0]


def test_libcrypto_beside_plain_and_wheel_names(tmp_path):
    (tmp_path / "libssl.so.3").touch()
    (tmp_path / "libcrypto.so.3").touch()
    assert libcrypto_beside(str(tmp_path / "libssl.so.3")) == str(tmp_path / "libcrypto.so.3")
    wheel = tmp_path / "wheel"
    wheel.mkdir()
    (wheel / "libssl-6a9b88ec.so.3").touch()
    (wheel / "libcrypto-0f1e2d3c.so.3").touch()
    assert libcrypto_beside(str(wheel / "libssl-6a9b88ec.so.3")) == \
        str(wheel / "libcrypto-0f1e2d3c.so.3")
    # Two candidates: no guess.
    (wheel / "libcrypto-99999999.so.3").touch()
    assert libcrypto_beside(str(wheel / "libssl-6a9b88ec.so.3")) is None
    assert libcrypto_beside(str(tmp_path / "libfoo.so.3")) is None


def test_libssl_and_its_libcrypto_get_their_halves(system_libssl):
    capture = RecordingCapture()
    probes = MemoryBioProbes(capture)
    assert probes.probe(system_libssl, executable=False)
    (ssl_call, crypto_call) = capture.calls
    assert ssl_call == ("tls_membio_enter", system_libssl,
                        sorted(SSL_FUNCTIONS.values()), False)
    assert "libcrypto" in crypto_call[1]
    assert crypto_call[2] == sorted(BIO_FUNCTIONS.values())
    assert probes.counts == {"files_probed": 1, "probes_attached": 4, "files_incomplete": 0}
    assert "1 OpenSSL file(s) bind" in probes.describe()
    # The same inodes again (another process's path to them): nothing new.
    assert probes.probe(system_libssl, executable=False)
    assert len(capture.calls) == 2


def test_libssl_without_its_libcrypto_is_reported(system_libssl, tmp_path):
    lonely = tmp_path / "libssl.so.3"
    shutil.copy(system_libssl, lonely)
    probes = MemoryBioProbes(RecordingCapture())
    assert not probes.probe(str(lonely), executable=False)
    assert probes.counts["files_incomplete"] == 1
    assert "tls_unmapped" in probes.describe()


def test_static_executable_gets_all_four():
    node = shutil.which("node")
    if not node:
        pytest.skip("Debian's nodejs is not installed")
    capture = RecordingCapture()
    assert MemoryBioProbes(capture).probe(node, executable=True) == 4
    assert capture.calls[0][2] == sorted([*SSL_FUNCTIONS.values(), *BIO_FUNCTIONS.values()])


def test_every_binding_result_slot_is_declared_once():
    """Each slot bpf/tls_membio.h counts into has one result label, so none
    is counted and never exported."""
    from agent.capture.records import C
    from agent.capture.tls_membio import COUNTERS, RESULTS
    from agent.runtime.metrics import declared_families
    assert sorted(RESULTS.values()) == list(range(C["MEMBIO_RESULT_COUNT"]))
    family, = declared_families([(declared, 0) for declared in COUNTERS])
    assert family.name == "otel_ebpf_kernel_tls_membio_bindings"
    assert [s.labels["result"] for s in family.samples] == list(RESULTS)
