"""A task's limits applied pass by pass: written where the movers run, each reason not to said once.

The cgroup tree is a directory laid out like cgroupfs (see tests/unit/test_cgroups.py for why);
the movers started into it are real processes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from structlog.testing import capture_logs

from smsagent.migration.limits import ResourceLimits
from smsagent.migration.mover_limits import MoverLimits, SystemPaths
from smsagent.migration.rsync import RSYNC_MISSING, RsyncError, run_rsync
from tests.unit.test_cgroups import fake_cgroup

UNIT = "/system.slice/smsagent.service"


def fake_system(
    tmp_path: Path, controllers: str, proc_cgroups: str = ""
) -> tuple[SystemPaths, Path]:
    """A cgroup v2 tree at tmp_path/cg with the agent's delegated unit in it."""
    root = tmp_path / "cg"
    unit = fake_cgroup(root / UNIT.lstrip("/"), controllers=controllers, procs=f"{os.getpid()}\n")
    os.setxattr(unit, "user.delegate", b"1")
    fake_cgroup(unit / "movers", controllers="")
    for name in ("cpu.max", "memory.max", "io.max"):
        (unit / "movers" / name).write_text("")
    (tmp_path / "mountinfo").write_text(f"31 23 0:27 / {root} rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "cgroup").write_text(f"0::{UNIT}\n")
    (tmp_path / "cgroups").write_text(proc_cgroups)
    paths = SystemPaths(tmp_path / "mountinfo", tmp_path / "cgroup", tmp_path / "cgroups")
    return paths, unit / "movers"


class TestMoverLimits:
    def test_nothing_asked_nothing_made(self, tmp_path: Path) -> None:
        """Without limits the movers run where the agent runs and no cgroup is made."""
        paths, movers = fake_system(tmp_path, "cpu memory io")

        assert MoverLimits(paths).apply(ResourceLimits(), ["/"]) is None
        assert not (movers.parent / "agent").exists()

    def test_limits_written_then_lifted(self, tmp_path: Path) -> None:
        """CPU percent of one core and MiB go into cpu.max and memory.max; a later pass
        without them writes `max` and still starts the movers there."""
        paths, movers = fake_system(tmp_path, "cpu memory io")
        limits = MoverLimits(paths)

        procs = limits.apply(ResourceLimits(cpu_percent=20, memory_mib=300), ["/"])

        assert procs == movers / "cgroup.procs"
        assert (movers / "cpu.max").read_text() == "20000 100000"
        assert (movers / "memory.max").read_text() == str(300 * 2**20)
        assert limits.apply(ResourceLimits(), ["/"]) == procs
        assert (movers / "cpu.max").read_text() == "max 100000"

    def test_a_missing_controller_is_said_once(self, tmp_path: Path) -> None:
        """A controller the kernel keeps in cgroup v1 is one warning naming the setting and
        why, however many passes follow; the other limits still apply."""
        proc_cgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\n"
        paths, movers = fake_system(tmp_path, "memory io", proc_cgroups)
        limits = MoverLimits(paths)

        with capture_logs() as logs:
            for _ in range(3):
                limits.apply(ResourceLimits(cpu_percent=20, memory_mib=300), ["/"])

        warnings = [e for e in logs if e["event"] == "resource_limits_not_applied"]
        assert len(warnings) == 1
        assert warnings[0]["settings"] == ["LINUX_CPU_LIMIT"]
        assert "cgroup v1 hierarchy" in warnings[0]["reason"]
        assert (movers / "memory.max").read_text() == str(300 * 2**20)

    def test_no_cgroup_v2_is_one_warning(self, tmp_path: Path) -> None:
        """Without a cgroup v2 hierarchy the copy goes on unlimited, with one warning."""
        (tmp_path / "mountinfo").write_text("")
        (tmp_path / "cgroup").write_text("")
        paths = SystemPaths(tmp_path / "mountinfo", tmp_path / "cgroup", tmp_path / "cgroup")
        limits = MoverLimits(paths)

        with capture_logs() as logs:
            results = [limits.apply(ResourceLimits(io_mib_s=20), ["/"]) for _ in range(2)]

        assert results == [None, None]
        assert [e["reason"] for e in logs] == ["no cgroup v2 hierarchy is mounted on this server"]


class TestMoversStartInTheCgroup:
    def test_rsync_writes_its_own_pid_before_it_runs(self, tmp_path: Path) -> None:
        """A mover started for a cgroup writes its own pid (the one rsync keeps) to
        `cgroup.procs` before it runs, and the copy still happens."""
        source, destination = tmp_path / "src", tmp_path / "dst"
        source.mkdir()
        (source / "file").write_text("data")
        procs = tmp_path / "cgroup.procs"
        procs.write_text("")

        result = asyncio.run(
            run_rsync(["rsync", "-a", f"{source}/", str(destination)], cgroup=procs)
        )

        assert result.returncode == 0
        assert (destination / "file").read_text() == "data"
        assert procs.read_text().strip().isdigit()

    def test_a_missing_rsync_is_still_named(self, tmp_path: Path) -> None:
        """A mover that is not installed is reported as such, not as the trampoline's exit."""
        procs = tmp_path / "cgroup.procs"
        try:
            asyncio.run(run_rsync(["/nonexistent/rsync", "-a"], cgroup=procs))
        except RsyncError as exc:
            assert exc.error_code == RSYNC_MISSING
        else:
            raise AssertionError("a missing rsync was not reported")
