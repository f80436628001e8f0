"""Finding the OpenSSL copies to probe: /proc/PID/maps lines, ELF symbol
offsets, the cheap symbol check.  No privilege needed."""
from __future__ import annotations

import os
import struct
import subprocess

import pytest

from agent.capture.elf import function_symbols
from agent.capture.tls import OPENSSL_FUNCTIONS, has_openssl_symbols, mapped_libssl_paths

MAPS = """\
55d0c0a00000-55d0c0a2c000 r--p 00000000 08:01 1311 /usr/sbin/nginx
7f1c2a400000-7f1c2a45a000 r--p 00000000 08:01 2281 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2a45a000-7f1c2a4e0000 r-xp 0005a000 08:01 2281 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b000000-7f1c2b010000 r-xp 00000000 08:01 4410 /opt/app/lib/python3.11/site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3
7f1c2c000000-7f1c2c010000 r-xp 00000000 08:01 4411 /tmp/old/libssl.so.1.1 (deleted)
7f1c2d000000-7f1c2d010000 r-xp 00000000 08:01 4412 /usr/lib/x86_64-linux-gnu/libssl3-helper.txt
7ffd5e3c0000-7ffd5e3e1000 rw-p 00000000 00:00 0 [stack]
"""


def test_libssl_paths_from_maps():
    assert mapped_libssl_paths(MAPS) == {
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/opt/app/lib/python3.11/site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3",
    }
    assert mapped_libssl_paths("") == set()


def system_libssl() -> str:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "libssl.so.3 " in line and "=> " in line:
            return line.rpartition("=> ")[2].strip()
    pytest.skip("no libssl.so.3 on this machine")


def nm_offsets(path: str) -> dict[str, int]:
    """Symbol addresses as binutils reads them (equal to file offsets for
    a library whose text segment maps at its file offset, as here)."""
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        address, _, name = line.split(maxsplit=2)
        found.setdefault(name.split("@")[0], int(address, 16))
    return found


def test_function_offsets_match_binutils():
    path = system_libssl()
    if not os.path.exists("/usr/bin/nm"):
        pytest.skip("binutils' nm is not installed")
    offsets, imported = function_symbols(path, OPENSSL_FUNCTIONS)
    assert set(offsets) == set(OPENSSL_FUNCTIONS) and not imported
    expected = nm_offsets(path)
    assert offsets == {name: expected[name] for name in OPENSSL_FUNCTIONS}


def test_undefined_imports_are_not_functions(tmp_path):
    # curl's library calls SSL_read through the shared libssl: it imports the
    # name (an undefined symbol) and defines no such function.
    libcurl = "/usr/lib/x86_64-linux-gnu/libcurl.so.4"
    if not os.path.exists(libcurl):
        pytest.skip("libcurl4 is not installed")
    assert function_symbols(libcurl, ["SSL_read", "SSL_write"]) == ({}, {"SSL_read", "SSL_write"})


@pytest.mark.parametrize("content", [b"", b"\x7fELF", b"\x7fELF\x02\x01" + b"\xff" * 100,
                                     b"not an elf file at all" * 10])
def test_bad_files_give_nothing(tmp_path, content):
    path = tmp_path / "bad"
    path.write_bytes(content)
    assert function_symbols(str(path), ["SSL_read"]) == ({}, set())
    assert function_symbols(str(tmp_path / "missing"), ["SSL_read"]) == ({}, set())


def test_truncated_copy_of_a_real_library_gives_nothing_or_the_truth(tmp_path):
    path = system_libssl()
    data = open(path, "rb").read()
    whole, _ = function_symbols(path, OPENSSL_FUNCTIONS)
    for size in (64, 4096, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{size}"
        cut.write_bytes(data[:size])
        found, _ = function_symbols(str(cut), OPENSSL_FUNCTIONS)
        assert all(whole[name] == offset for name, offset in found.items())


def test_cheap_symbol_check(tmp_path):
    assert has_openssl_symbols(system_libssl())
    plain = tmp_path / "plain"
    plain.write_bytes(b"\0SSL_read\0 only one of the two" + struct.pack("<I", 7))
    assert not has_openssl_symbols(str(plain))
    assert not has_openssl_symbols(str(tmp_path / "missing"))
