"""The movers' cgroup: the kernel's files read, the tree made in the right place, limits written.

The tree is a directory laid out like cgroupfs: this machine's cgroup v2 hierarchy has no cpu,
memory or io controller (they sit in cgroup v1 hierarchies) and its root belongs to the machine
that runs the tests, so the real writes are tested under systemd in `tests/system/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smsagent.cgroups import (
    CgroupUnavailable,
    CgroupValues,
    MoversCgroup,
    cgroup2_mount,
    io_lines,
    own_cgroup,
    prepare_movers,
    unit_cgroup,
    v1_controllers,
    whole_disk,
    write_limits,
)

HYBRID_MOUNTINFO = """\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
"""
PROC_CGROUPS = """\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpu\t1\t1\t1
memory\t0\t63\t1
io\t0\t1\t1
"""


def fake_cgroup(path: Path, controllers: str = "cpu memory io", procs: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers)
    (path / "cgroup.subtree_control").write_text("")
    (path / "cgroup.procs").write_text(procs)
    return path


class TestKernelFiles:
    def test_the_v2_mount_of_a_hybrid_system(self) -> None:
        """On a hybrid system the v2 hierarchy is the `cgroup2` mount, not /sys/fs/cgroup."""
        assert cgroup2_mount(HYBRID_MOUNTINFO) == Path("/sys/fs/cgroup/unified")
        assert cgroup2_mount(HYBRID_MOUNTINFO.splitlines()[0]) is None

    def test_own_cgroup_is_the_v2_line(self) -> None:
        """The `0::` line of /proc/self/cgroup names the process's v2 cgroup."""
        text = "4:memory:/x\n0::/system.slice/smsagent.service/agent\n"

        assert own_cgroup(text) == "/system.slice/smsagent.service/agent"
        assert own_cgroup("4:memory:/x\n") is None

    def test_controllers_bound_to_v1(self) -> None:
        """A controller with a non-zero hierarchy in /proc/cgroups is unavailable to v2."""
        assert v1_controllers(PROC_CGROUPS) == frozenset({"cpu"})

    @pytest.mark.parametrize(
        ("own", "unit"),
        [
            ("/system.slice/smsagent.service", "/system.slice/smsagent.service"),
            ("/system.slice/smsagent.service/agent", "/system.slice/smsagent.service"),
            ("/user.slice/user-0.slice/session-3.scope", None),
            ("/", None),
        ],
    )
    def test_unit_cgroup(self, own: str, unit: str) -> None:
        """The service the agent runs in, also once it sits in its own leaf."""
        assert unit_cgroup(own) == unit

    def test_whole_disk_of_real_block_devices(self) -> None:
        """Every block device of this machine maps to itself, or a partition to its disk."""
        entries = sorted(Path("/sys/dev/block").iterdir())
        assert entries, "this machine has block devices"
        for entry in entries:
            major, minor = (int(n) for n in entry.name.split(":"))
            expected = entry.resolve().parent if (entry / "partition").exists() else entry
            wanted = tuple(int(n) for n in (expected / "dev").read_text().split(":"))

            assert whole_disk((major, minor)) == wanted

    def test_no_block_device(self) -> None:
        """A file system without a block device (tmpfs, btrfs's anonymous ids) has none."""
        device = os.stat("/proc").st_dev

        assert whole_disk((os.major(device), os.minor(device))) is None


class TestPrepareMovers:
    def test_under_a_delegated_unit(self, tmp_path: Path) -> None:
        """The agent moves into `<unit>/agent`, controllers are enabled for the unit's
        children, and the movers get `<unit>/movers`."""
        unit = fake_cgroup(tmp_path / "system.slice" / "smsagent.service", procs="4242\n")
        os.setxattr(unit, "user.delegate", b"1")

        group = prepare_movers(tmp_path, "/system.slice/smsagent.service")

        assert group == MoversCgroup(unit / "movers", frozenset(("cpu", "memory", "io")), True)
        assert (unit / "agent" / "cgroup.procs").read_text() == "4242"
        assert (unit / "cgroup.subtree_control").read_text() == "+cpu +memory +io"

    def test_a_unit_without_delegation_is_refused(self, tmp_path: Path) -> None:
        """Without `Delegate=` the unit's tree belongs to systemd: the reason names it."""
        fake_cgroup(tmp_path / "system.slice" / "smsagent.service")

        with pytest.raises(CgroupUnavailable, match="not delegated"):
            prepare_movers(tmp_path, "/system.slice/smsagent.service")

    def test_in_the_foreground_below_the_root(self, tmp_path: Path) -> None:
        """Outside a unit the movers get `smsagent-movers` below the root, with the
        controllers the root has."""
        fake_cgroup(tmp_path, controllers="cpu io")

        group = prepare_movers(tmp_path, "/user.slice/session-3.scope")

        assert group.path == tmp_path / "smsagent-movers" and group.path.is_dir()
        assert group.controllers == frozenset(("cpu", "io"))

    def test_a_read_only_tree_says_why(self, tmp_path: Path) -> None:
        """A tree that cannot be written is a `CgroupUnavailable` naming the path."""
        with pytest.raises(CgroupUnavailable, match=r"cgroup\.controllers cannot be read"):
            prepare_movers(tmp_path / "absent", "/")


class TestWriteLimits:
    def test_limits_and_their_reset(self, tmp_path: Path) -> None:
        """The limits land in cpu.max, memory.max (no swap on top) and io.max; unset ones
        are written as `max`."""
        path = fake_cgroup(tmp_path / "movers")
        for name in ("cpu.max", "memory.max", "memory.swap.max", "io.max"):
            (path / name).write_text("")
        group = MoversCgroup(path, frozenset(("cpu", "memory", "io")), True)

        write_limits(group, CgroupValues(20_000, 500 * 2**20, 20 * 2**20, ((8, 0),)))

        assert (path / "cpu.max").read_text() == "20000 100000"
        assert (path / "memory.max").read_text() == str(500 * 2**20)
        assert (path / "memory.swap.max").read_text() == "0"
        assert (path / "io.max").read_text() == f"8:0 rbps={20 * 2**20} wbps={20 * 2**20}"
        write_limits(group, CgroupValues())
        assert (path / "cpu.max").read_text() == "max 100000"
        assert (path / "memory.max").read_text() == "max"

    def test_io_lines_reset_devices_no_longer_read(self) -> None:
        """A device limited before but not read now goes back to unlimited."""
        current = "8:0 rbps=1 wbps=1 riops=max wiops=max\n253:1 rbps=1 wbps=1\n"

        assert io_lines(CgroupValues(io_bytes_s=7, io_devices=((8, 0),)), current) == [
            "8:0 rbps=7 wbps=7",
            "253:1 rbps=max wbps=max",
        ]
