from agent.capture.selection import Selection, cgroup2_root, process_cgroup2_path

HYBRID = """cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
PURE = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"


def test_cgroup2_root_on_hybrid_and_pure_systems():
    assert cgroup2_root(HYBRID) == "/sys/fs/cgroup/unified"
    assert cgroup2_root(PURE) == "/sys/fs/cgroup"
    assert cgroup2_root("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n") is None


def test_process_cgroup2_path():
    text = ("12:memory:/kubepods/pod1\n"
            "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-"
            "3f2a9c1b7d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4.scope\n")
    assert process_cgroup2_path(text).endswith("3f2a9c1b7d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4.scope")
    assert process_cgroup2_path("4:memory:/x\n") is None


def test_selectors_report_what_kind_of_filter_they_need():
    assert not Selection(cgroup_root="/sys/fs/cgroup").by_process
    assert Selection(exes=["nginx"], cgroup_root="/sys/fs/cgroup").by_process
    assert Selection(cgroups=["/system.slice"], cgroup_root="/sys/fs/cgroup").by_cgroup


def test_container_ids_are_checked():
    import pytest
    with pytest.raises(ValueError, match="12 hex digits"):
        Selection(containers=["abc"], cgroup_root="/sys/fs/cgroup")
    with pytest.raises(ValueError, match="12 hex digits"):
        Selection(containers=["g" * 64], cgroup_root="/sys/fs/cgroup")


def test_an_exec_of_a_selected_executable_is_selected_at_once():
    import os

    class Filter:
        def __init__(self):
            self.allowed = []
            self.disallowed = []

        def allow_pid(self, pid):
            self.allowed.append(pid)

        def disallow_pid(self, pid):
            self.disallowed.append(pid)

    me = os.getpid()
    exe = os.path.basename(os.readlink("/proc/self/exe"))
    selection = Selection(exes={exe})
    capture = Filter()
    selection.exec_seen([me, 999999999], capture)
    assert capture.allowed == [me] and me in selection.known_pids
    # The kernel may have selected the one that is gone by its name: undone.
    assert capture.disallowed == [999999999]
    selection.exec_seen([me], capture)
    assert capture.allowed == [me]          # once
    Selection(exes={"not-this-one"}).exec_seen([me], capture)
    assert capture.allowed == [me] and capture.disallowed == [999999999, me]
