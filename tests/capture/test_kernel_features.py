"""Kernel feature detection: decoders on canned text, detect() on this machine."""

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from agent.capture import kernel_features as kf

# /proc/self/status of root on the development VM: every capability but CAP_SYS_RESOURCE.
STATUS_ROOT_NO_SYS_RESOURCE = textwrap.dedent("""\
    Name:\tpython3
    Umask:\t0022
    State:\tR (running)
    CapInh:\t0000000000000000
    CapPrm:\t000001fffeffffff
    CapEff:\t000001fffeffffff
    CapBnd:\t000001fffeffffff
    CapAmb:\t0000000000000000
    NoNewPrivs:\t0
    """)

# A typical unprivileged user.
STATUS_USER = "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"

CONFIG_TEXT = textwrap.dedent("""\
    #
    # Automatically generated file; DO NOT EDIT.
    # Linux/x86 6.18.44 Kernel Configuration
    #
    CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14) 12.2.0"
    CONFIG_BPF_SYSCALL=y
    # CONFIG_KPROBES is not set
    CONFIG_UPROBES=y
    CONFIG_DEBUG_INFO_BTF=y
    CONFIG_FTRACE_SYSCALLS=y
    CONFIG_NF_CONNTRACK=m
    CONFIG_LOG_BUF_SHIFT=17
    """)


# --- decoders -------------------------------------------------------------------------

def test_decode_capabilities_root_without_sys_resource():
    caps = kf.decode_capabilities("000001fffeffffff")
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_NET_ADMIN",
            "CAP_DAC_READ_SEARCH", "CAP_CHECKPOINT_RESTORE"} <= caps
    assert "CAP_SYS_RESOURCE" not in caps
    assert len(caps) == 40  # bits 0-40, less bit 24


@pytest.mark.parametrize("bit,name", [(2, "CAP_DAC_READ_SEARCH"), (12, "CAP_NET_ADMIN"),
                                      (19, "CAP_SYS_PTRACE"), (21, "CAP_SYS_ADMIN"),
                                      (24, "CAP_SYS_RESOURCE"), (38, "CAP_PERFMON"),
                                      (39, "CAP_BPF")])
def test_decode_single_capability(bit, name):
    assert kf.decode_capabilities(f"{1 << bit:016x}") == {name}
    assert kf.CAPABILITY_NUMBERS[name] == bit


def test_decode_capabilities_empty_and_unknown_bits():
    assert kf.decode_capabilities("0000000000000000") == frozenset()
    assert kf.decode_capabilities(1 << 45) == {"CAP_45"}


def test_decode_capabilities_bpf_only_container():
    # CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN + CAP_SYS_PTRACE, no CAP_SYS_ADMIN.
    mask = (1 << 39) | (1 << 38) | (1 << 12) | (1 << 19)
    assert kf.decode_capabilities(f"{mask:x}") == {
        "CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"}


def test_parse_status_capabilities():
    sets = kf.parse_status_capabilities(STATUS_ROOT_NO_SYS_RESOURCE)
    assert set(sets) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert "CAP_BPF" in sets["CapEff"]
    assert sets["CapAmb"] == frozenset()
    assert kf.parse_status_capabilities(STATUS_USER)["CapEff"] == frozenset()
    assert kf.parse_status_capabilities("Name:\tx\nCapEff:\tzz\n") == {}


def test_parse_kernel_config():
    config = kf.parse_kernel_config(CONFIG_TEXT)
    assert config["CONFIG_KPROBES"] == "n"
    assert config["CONFIG_UPROBES"] == "y"
    assert config["CONFIG_NF_CONNTRACK"] == "m"
    assert config["CONFIG_LOG_BUF_SHIFT"] == "17"
    assert config["CONFIG_CC_VERSION_TEXT"] == "gcc (Debian 12.2.0-14) 12.2.0"
    assert "CONFIG_FUNCTION_TRACER" not in config
    assert kf._config_bool(config, "CONFIG_KPROBES") is False
    assert kf._config_bool(config, "CONFIG_NF_CONNTRACK") is True
    assert kf._config_bool(config, "CONFIG_ABSENT") is False
    assert kf._config_bool({}, "CONFIG_KPROBES") is None


def test_parse_lockdown():
    assert kf.parse_lockdown("none [integrity] confidentiality\n") == "integrity"
    assert kf.parse_lockdown("[none] integrity confidentiality") == "none"
    assert kf.parse_lockdown("") is None


def test_parse_mounts_and_find_tracefs():
    text = textwrap.dedent("""\
        sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
        debugfs /sys/kernel/debug debugfs rw,relatime 0 0
        tracefs /sys/kernel/debug/tracing tracefs rw,relatime 0 0
        /dev/sda1 /mnt/my\\040disk ext4 rw 0 0
        """)
    mounts = kf.parse_mounts(text)
    assert ("/dev/sda1", "/mnt/my disk", "ext4") in mounts
    assert kf.find_tracefs(mounts) == "/sys/kernel/debug/tracing"
    mounts.append(("tracefs", "/sys/kernel/tracing", "tracefs"))
    assert kf.find_tracefs(mounts) == "/sys/kernel/tracing"
    assert kf.find_tracefs([("sysfs", "/sys", "sysfs")]) is None


@pytest.mark.parametrize("release,expected", [("6.18.44-fc-v669", (6, 18)), ("5.10.0-28-amd64", (5, 10)),
                                              ("4.19.0", (4, 19)), ("6.1", (6, 1)), ("weird", (0, 0))])
def test_parse_release(release, expected):
    assert kf.parse_release(release) == expected


# --- messages on synthetic kernels -------------------------------------------------

def _features(**overrides):
    base = dict(
        release="6.18.44", machine="x86_64", btf=True, tracefs_path="/sys/kernel/tracing",
        debugfs_mounted=True, kprobes=True, kprobe_pmu=True, kprobe_events=True,
        config_kprobes=True, uprobes=True, uprobe_multi=True, syscall_tracepoints=True,
        capabilities=kf.decode_capabilities("000001ffffffffff"), is_root=True,
        memlock_soft=8 << 20, memlock_hard=8 << 20, unprivileged_bpf_disabled=2,
        lockdown="integrity")
    base.update(overrides)
    return kf.KernelFeatures(**base)


def test_full_featured_kernel_has_no_problems():
    assert _features().problems() == []


def test_each_missing_feature_says_what_fails_and_what_to_do():
    cases = {
        "btf": (dict(btf=False), ["BTF", "CONFIG_DEBUG_INFO_BTF"]),
        "tracefs": (dict(tracefs_path=None), ["tracefs", "mount -t tracefs"]),
        "kprobes": (dict(kprobes=False, kprobe_pmu=False, kprobe_events=False, config_kprobes=False),
                    ["kprobes", "tracepoints are used instead"]),
        "uprobes": (dict(uprobes=False), ["uprobes", "TLS", "CONFIG_UPROBE_EVENTS"]),
        "syscalls": (dict(syscall_tracepoints=False), ["CONFIG_FTRACE_SYSCALLS"]),
        "caps": (dict(capabilities=frozenset(), is_root=False), ["CAP_BPF", "root"]),
        "perfmon": (dict(capabilities=frozenset({"CAP_BPF", "CAP_SYS_PTRACE"}), is_root=False),
                    ["CAP_PERFMON"]),
        "ptrace": (dict(capabilities=frozenset({"CAP_BPF", "CAP_PERFMON"}), is_root=False),
                   ["CAP_SYS_PTRACE"]),
        "memlock": (dict(release="5.4.0-150-generic", memlock_soft=64 << 10), ["ulimit -l"]),
        "lockdown": (dict(lockdown="confidentiality"), ["lockdown", "bpf_probe_read_kernel"]),
    }
    for name, (overrides, words) in cases.items():
        problems = _features(**overrides).problems()
        assert problems, name
        joined = " ".join(problems)
        for word in words:
            assert word in joined, (name, word, problems)


def test_no_kprobes_and_no_syscall_tracepoints_is_fatal_message():
    feats = _features(kprobes=False, kprobe_pmu=False, kprobe_events=False, syscall_tracepoints=False)
    assert any("no capture hook can attach" in p for p in feats.problems())


def test_memlock_ignored_on_memcg_kernels():
    assert _features(release="5.11.0", memlock_soft=64 << 10).problems() == []
    assert _features(release="5.10.0", memlock_soft=None).problems() == []


def test_report_and_as_dict():
    feats = _features(kprobes=False, kprobe_pmu=False, kprobe_events=False, config_kprobes=False)
    report = feats.report()
    assert "kprobes           no" in report and "problems:" in report
    data = feats.as_dict()
    assert "config" not in data and isinstance(data["capabilities"], list)


# --- this machine ------------------------------------------------------------------

@pytest.fixture(scope="module")
def here():
    return kf.detect()


def test_detect_runs_and_reports(here):
    assert here.release == os.uname().release
    assert isinstance(here.report(), str)
    assert isinstance(here.capabilities, frozenset)
    for problem in here.problems():
        assert len(problem) > 40  # a sentence, not a code


def test_btf_present(here):
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        pytest.skip("this kernel has no BTF")
    assert here.btf


def test_uprobes_present(here):
    if not os.path.isdir("/sys/bus/event_source/devices/uprobe"):
        pytest.skip("this kernel has no uprobe PMU")
    assert here.uprobes


def test_kprobes_absent_on_the_dev_vm(here):
    """The development VM's kernel has no kprobes (CONFIG_KPROBES unset); others may."""
    if here.kprobes or here.config_kprobes:
        pytest.skip(f"kernel {here.release} has kprobes: this fact is about the dev VM only")
    assert not here.kprobe_pmu
    assert not here.kprobe_events
    assert any("No kprobes" in p for p in here.problems())


def test_config_matches_sysfs(here):
    if not here.config:
        pytest.skip("no readable kernel config (/proc/config.gz, /boot/config-*)")
    assert here.config_source
    if here.config.get("CONFIG_DEBUG_INFO_BTF") == "y":
        assert here.btf
    if here.config_kprobes is False:
        assert not here.kprobe_pmu


def test_capabilities_match_status(here):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                assert here.capabilities == kf.decode_capabilities(line.split()[1])
    if os.geteuid() == 0:
        assert here.is_root
    if "CAP_BPF" in here.capabilities or "CAP_SYS_ADMIN" in here.capabilities:
        assert here.can_load_bpf


def test_syscall_tracepoints_when_tracefs_mounted(here):
    if not here.tracefs_mounted:
        pytest.skip("tracefs not mounted (run `make setup` as root)")
    assert os.path.isdir(here.tracefs_path)
    if here.config.get("CONFIG_FTRACE_SYSCALLS") == "y":
        assert here.syscall_tracepoints


def test_detect_is_a_plain_dataclass(here):
    assert dataclasses.is_dataclass(here)
    assert here.memlock_soft is None or here.memlock_soft >= 0


def test_ensure_tracefs_when_mounted(here):
    if not here.tracefs_mounted:
        pytest.skip("tracefs not mounted")
    ok, message = kf.ensure_tracefs()
    assert ok and here.tracefs_path in message


def _can_unshare_mounts():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare_mounts(), reason="needs root and unshare(CLONE_NEWNS)")
def test_ensure_tracefs_mounts_it_in_a_private_namespace():
    """Unmount every tracefs inside a private mount namespace, then let ensure_tracefs mount it."""
    script = textwrap.dedent("""
        import subprocess, sys
        from agent.capture import kernel_features as kf
        for _ in range(4):
            point = kf.find_tracefs()
            if point is None:
                break
            subprocess.run(["umount", "-l", point], check=True)
        assert kf.find_tracefs() is None, "could not unmount tracefs"
        ok, message = kf.ensure_tracefs()
        print(ok, message)
        assert ok, message
        assert kf.find_tracefs() == "/sys/kernel/tracing"
        assert kf.detect().syscall_tracepoints in (True, False)
    """)
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mounted tracefs at /sys/kernel/tracing" in result.stdout
    # The host's mount table is untouched.
    assert kf.find_tracefs() is not None


def test_ensure_tracefs_explains_without_privilege(monkeypatch):
    monkeypatch.setattr(kf, "find_tracefs", lambda mounts=None: None)
    monkeypatch.setattr(kf, "_filesystem_supported", lambda name: True)
    monkeypatch.setattr(kf, "_read", lambda path: STATUS_USER if path == "/proc/self/status" else None)
    ok, message = kf.ensure_tracefs()
    assert not ok and "root" in message and "mount -t tracefs" in message
    monkeypatch.setattr(kf, "_filesystem_supported", lambda name: False)
    ok, message = kf.ensure_tracefs()
    assert not ok and "CONFIG_" in message


@pytest.mark.parametrize("choice, btf, bpf_loop, chosen", [
    ("auto", True, True, "core"),
    ("auto", False, True, "bcc"),      # no BTF: nothing to relocate CO-RE against
    ("auto", True, False, "bcc"),      # 5.8-5.16: the CO-RE object needs bpf_loop
    ("core", False, False, "core"),    # an explicit choice stands (and fails with its reason)
    ("bcc", True, True, "bcc"),
])
def test_auto_takes_core_where_the_kernel_can_load_it(monkeypatch, choice, btf, bpf_loop, chosen):
    from agent.capture import hook_choice
    monkeypatch.setattr(hook_choice, "bpf_loop_support", lambda: (bpf_loop, "probed"))
    assert hook_choice.choose_loader(choice, _features(btf=btf)) == chosen
