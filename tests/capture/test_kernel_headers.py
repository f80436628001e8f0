"""Finding the kernel headers the BCC front end compiles against: complete
trees, distribution split trees joined into one, and the errors that say
what to install.  Fake header trees under tmp_path; no privilege needed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.capture import kernel_headers
from agent.capture.kernel_headers import KernelHeadersError, find

RELEASE = "6.1.0-56-amd64"
ARCH = {"x86_64": "x86", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def generated_files(build: Path, release: str = RELEASE) -> Path:
    """What a build directory holds: the configured, generated headers."""
    write(build / "include/generated/autoconf.h", "#define CONFIG_BPF 1\n")
    write(build / "include/generated/utsrelease.h", f'#define UTS_RELEASE "{release}"\n')
    write(build / "include/generated/uapi/linux/version.h", "#define LINUX_VERSION_CODE 393473\n")
    write(build / "include/config/auto.conf", "CONFIG_BPF=y\n")
    write(build / f"arch/{ARCH}/include/generated/asm/syscalls_64.h", "/* generated */\n")
    write(build / f"arch/{ARCH}/include/generated/uapi/asm/unistd_64.h", "#define __NR_read 0\n")
    return build


def source_files(source: Path) -> Path:
    """What a source (Debian: -common) directory holds."""
    write(source / "Makefile", "VERSION = 6\n")
    write(source / "include/linux/kconfig.h", "/* kconfig */\n")
    write(source / "include/linux/socket.h", "/* socket */\n")
    write(source / "include/uapi/linux/ptrace.h", "/* ptrace */\n")
    write(source / "include/uapi/linux/uio.h", "/* uio */\n")
    write(source / f"arch/{ARCH}/include/asm/ptrace.h", "/* asm ptrace */\n")
    write(source / f"arch/{ARCH}/include/uapi/asm/ptrace.h", "/* uapi asm ptrace */\n")
    write(source / f"arch/{ARCH}/Makefile", "# arch\n")
    write(source / "scripts/Makefile.build", "# scripts\n")
    return source


def complete_tree(tree: Path, release: str = RELEASE) -> Path:
    return source_files(generated_files(tree, release))


def debian_split(root: Path) -> tuple[Path, Path]:
    """linux-headers-<release> (generated files, a Makefile including the
    common Makefile) beside linux-headers-<version>-common."""
    build = generated_files(root / f"linux-headers-{RELEASE}")
    common = source_files(root / "linux-headers-6.1.0-56-common")
    write(build / "Makefile", f"include {common}/Makefile\n")
    return build, common


def assert_joined(headers: kernel_headers.KernelHeaders, build: Path, source: Path) -> None:
    joined = headers.path
    assert joined.is_dir()
    assert joined.resolve() not in (build.resolve(), source.resolve())
    expected = {
        "include/linux/kconfig.h": source,
        "include/linux/socket.h": source,
        "include/uapi/linux/ptrace.h": source,
        "include/generated/autoconf.h": build,
        "include/generated/utsrelease.h": build,
        "include/generated/uapi/linux/version.h": build,
        "include/config/auto.conf": build,
        f"arch/{ARCH}/include/generated/asm/syscalls_64.h": build,
        f"arch/{ARCH}/include/generated/uapi/asm/unistd_64.h": build,
        f"arch/{ARCH}/include/asm/ptrace.h": source,
        f"arch/{ARCH}/include/uapi/asm/ptrace.h": source,
        "scripts/Makefile.build": source,
    }
    for relative, tree in expected.items():
        assert (joined / relative).is_file(), relative
        assert (joined / relative).read_text() == (tree / relative).read_text(), relative
        assert (joined / relative).resolve() == (tree / relative).resolve(), relative


@pytest.fixture
def no_installed_headers(tmp_path, monkeypatch):
    """No /lib/modules/<release>/build and nothing under /usr/src."""
    monkeypatch.setattr(kernel_headers, "MODULES_DIR", tmp_path / "lib-modules")
    monkeypatch.setattr(kernel_headers, "SOURCES_DIR", tmp_path / "usr-src")
    (tmp_path / "lib-modules").mkdir()
    (tmp_path / "usr-src").mkdir()
    return tmp_path


# ---- complete trees ---------------------------------------------------------

def test_complete_tree_is_used_as_it_is(tmp_path):
    tree = complete_tree(tmp_path / "headers")
    headers = find(str(tree), running=RELEASE)
    assert headers.path == tree.resolve()
    assert headers.origin == tree.resolve()
    assert headers.release == RELEASE
    assert headers.running == RELEASE
    assert headers.match_running_kernel
    assert headers.describe() == f"{tree.resolve()} (kernel {RELEASE})"
    headers.close()
    assert (tree / "include/linux/kconfig.h").exists()


def test_headers_of_another_kernel_are_accepted_and_said_so(tmp_path):
    tree = complete_tree(tmp_path / "headers")
    headers = find(str(tree), running="5.10.0-30-amd64")
    assert headers.release == RELEASE
    assert not headers.match_running_kernel
    description = headers.describe()
    assert str(tree.resolve()) in description
    assert f"kernel {RELEASE}" in description
    assert "not the running 5.10.0-30-amd64" in description
    assert "fine for the BCC build" in description


def test_release_is_unknown_without_utsrelease(tmp_path):
    tree = complete_tree(tmp_path / "headers")
    (tree / "include/generated/utsrelease.h").unlink()
    headers = find(str(tree), running=RELEASE)
    assert headers.release == "unknown"
    assert not headers.match_running_kernel


def test_running_release_defaults_to_this_kernel(tmp_path):
    tree = complete_tree(tmp_path / "headers", release=os.uname().release)
    headers = find(str(tree))
    assert headers.running == os.uname().release
    assert headers.match_running_kernel


def test_default_is_the_running_kernels_modules_build_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_headers, "MODULES_DIR", tmp_path / "mods")
    tree = complete_tree(tmp_path / "mods" / RELEASE / "build")
    headers = find(None, running=RELEASE)
    assert headers.path == tree.resolve()
    assert headers.match_running_kernel


# ---- split trees ------------------------------------------------------------

def test_debian_split_tree_is_joined(tmp_path):
    build, common = debian_split(tmp_path / "usr-src")
    headers = find(str(build), running=RELEASE)
    try:
        assert_joined(headers, build, common)
        assert headers.release == RELEASE
        assert headers.match_running_kernel
        assert headers.origin == build.resolve()
        assert str(build.resolve()) in headers.describe()
        # The joined tree's top level is the source tree's.
        assert (headers.path / "Makefile").read_text() == "VERSION = 6\n"
    finally:
        headers.close()


def test_closing_removes_the_joined_tree_and_nothing_else(tmp_path):
    build, common = debian_split(tmp_path / "usr-src")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    headers = find(str(build), running=RELEASE)
    joined = headers.path
    assert joined.exists()
    headers.close()
    assert not joined.exists()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (common / "include/linux/kconfig.h").read_text() == "/* kconfig */\n"
    assert (build / "include/generated/autoconf.h").exists()
    headers.close()   # twice is harmless


def test_each_find_gets_its_own_joined_tree(tmp_path):
    build, _ = debian_split(tmp_path / "usr-src")
    first = find(str(build), running=RELEASE)
    second = find(str(build), running=RELEASE)
    try:
        assert first.path != second.path
        first.close()
        assert (second.path / "include/linux/kconfig.h").exists()
    finally:
        first.close()
        second.close()


def test_release_comes_from_the_build_directory(tmp_path):
    build, common = debian_split(tmp_path / "usr-src")
    headers = find(str(build), running="6.1.0-99-amd64")
    try:
        assert headers.release == RELEASE
        assert not headers.match_running_kernel
        assert "not the running 6.1.0-99-amd64" in headers.describe()
    finally:
        headers.close()


def test_generated_headers_come_from_the_build_directory_even_if_the_source_has_some(tmp_path):
    """A source tree with a stale include/generated/ of its own (configured
    in place once) must not hide the build directory's generated headers:
    those are what find() checked, and where the release it reports is read."""
    build, common = debian_split(tmp_path / "usr-src")
    write(common / "include/generated/utsrelease.h", '#define UTS_RELEASE "stale"\n')
    headers = find(str(build), running=RELEASE)
    try:
        assert headers.release == RELEASE
        assert (headers.path / "include/generated/autoconf.h").exists()
        assert (headers.path / "include/generated/utsrelease.h").read_text() == \
            (build / "include/generated/utsrelease.h").read_text()
    finally:
        headers.close()


def test_modules_style_build_with_a_source_directory_beside_it_is_joined(tmp_path):
    build = generated_files(tmp_path / "mods" / RELEASE / "build")
    source = source_files(tmp_path / "mods" / RELEASE / "source")
    headers = find(str(build), running=RELEASE)
    try:
        assert_joined(headers, build, source)
        assert headers.release == RELEASE
    finally:
        headers.close()


def test_modules_build_and_source_links_are_joined(tmp_path):
    """/lib/modules/<release>/{build,source} are symlinks into the trees (a
    kernel built with O=objdir and installed with modules_install)."""
    objdir = generated_files(tmp_path / "objdir")
    srcdir = source_files(tmp_path / "linux")
    modules = tmp_path / "mods" / RELEASE
    modules.mkdir(parents=True)
    (modules / "build").symlink_to(objdir)
    (modules / "source").symlink_to(srcdir)
    headers = find(str(modules / "build"), running=RELEASE)
    try:
        assert_joined(headers, objdir, srcdir)
    finally:
        headers.close()


def test_default_modules_directory_split_tree_is_joined(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_headers, "MODULES_DIR", tmp_path / "mods")
    build = generated_files(tmp_path / "mods" / RELEASE / "build")
    source = source_files(tmp_path / "mods" / RELEASE / "source")
    headers = find(None, running=RELEASE)
    try:
        assert_joined(headers, build, source)
        assert headers.match_running_kernel
    finally:
        headers.close()


def test_makefile_naming_a_directory_without_kconfig_is_no_source(tmp_path):
    build = generated_files(tmp_path / "build")
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "Makefile", "VERSION = 6\n")
    write(build / "Makefile", f"include {elsewhere}/Makefile\n")
    with pytest.raises(KernelHeadersError, match="name no source tree"):
        find(str(build), running=RELEASE)


def test_installed_debian_headers_join(tmp_path):
    """The real thing where it is installed: a Debian linux-headers package."""
    builds = sorted(p for p in Path("/lib/modules").glob("*/build")
                    if (p / "include/generated/autoconf.h").exists()
                    and not (p / "include/linux/kconfig.h").exists())
    if not builds:
        pytest.skip("no split kernel headers package installed")
    headers = find(str(builds[0]))
    try:
        root = headers.path
        for relative in ("include/linux/kconfig.h", "include/generated/autoconf.h",
                         "include/uapi/linux/ptrace.h", "include/uapi/linux/uio.h",
                         "include/linux/socket.h", f"arch/{ARCH}/include/generated",
                         f"arch/{ARCH}/include/asm", f"arch/{ARCH}/include/uapi"):
            assert (root / relative).exists(), relative
        assert headers.release == builds[0].parent.name
    finally:
        headers.close()
    assert not root.exists()


# ---- the newest headers under /usr/src --------------------------------------

def test_without_modules_build_the_newest_installed_headers_are_used(no_installed_headers):
    usr_src = no_installed_headers / "usr-src"
    older = complete_tree(usr_src / "linux-headers-5.10.0-30-amd64", release="5.10.0-30-amd64")
    newer = complete_tree(usr_src / "linux-headers-6.1.0-56-amd64")
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    # Not headers: no generated files, or another architecture's.
    source_files(usr_src / "linux-source")
    write(usr_src / "linux-headers-other-arch/include/generated/autoconf.h", "\n")
    write(usr_src / "linux-headers-other-arch/arch/not-this-arch/include/generated/x.h", "\n")
    headers = find(None, running="6.5.0-1-amd64")
    assert headers.path == newer.resolve()
    assert headers.release == RELEASE
    assert not headers.match_running_kernel


def test_newest_installed_split_headers_are_joined(no_installed_headers):
    build, common = debian_split(no_installed_headers / "usr-src")
    headers = find(None, running="6.5.0-1-amd64")
    try:
        assert headers.origin == build.resolve()
        assert_joined(headers, build, common)
    finally:
        headers.close()


# ---- errors -----------------------------------------------------------------

def test_configured_path_that_is_not_a_directory(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(KernelHeadersError, match="is not a directory") as raised:
        find(str(missing), running=RELEASE)
    assert str(missing) in str(raised.value)
    a_file = write(tmp_path / "file", "not headers\n")
    with pytest.raises(KernelHeadersError, match="is not a directory"):
        find(str(a_file), running=RELEASE)


def test_tree_without_generated_headers_names_the_missing_file(tmp_path):
    tree = source_files(tmp_path / "linux-source")
    with pytest.raises(KernelHeadersError) as raised:
        find(str(tree), running=RELEASE)
    message = str(raised.value)
    assert "include/generated/autoconf.h" in message
    assert str(tree.resolve()) in message
    assert "--kernel-headers" in message


def test_build_only_tree_naming_no_source(tmp_path):
    build = generated_files(tmp_path / "linux-headers")
    with pytest.raises(KernelHeadersError) as raised:
        find(str(build), running=RELEASE)
    message = str(raised.value)
    assert str(build.resolve()) in message
    assert "include/linux/kconfig.h" in message


def test_build_directory_with_an_empty_source_beside_it(tmp_path):
    build = generated_files(tmp_path / "mods" / RELEASE / "build")
    (tmp_path / "mods" / RELEASE / "source").mkdir()
    with pytest.raises(KernelHeadersError, match="name no source tree"):
        find(str(build), running=RELEASE)


def test_no_headers_installed_names_the_package_and_the_option(no_installed_headers):
    release = "6.1.0-99-amd64"
    with pytest.raises(KernelHeadersError) as raised:
        find(None, running=release)
    message = str(raised.value)
    assert f"linux-headers-{release}" in message
    assert "--kernel-headers" in message
    assert str(no_installed_headers / "lib-modules" / release / "build") in message


def test_modules_directory_without_build_is_no_headers(no_installed_headers):
    release = "6.1.0-99-amd64"
    (no_installed_headers / "lib-modules" / release / "kernel").mkdir(parents=True)
    with pytest.raises(KernelHeadersError, match=f"linux-headers-{release}"):
        find(None, running=release)
