"""One copy pass: what is copied, how much there is, the progress over streams and restarts, and
the pass runner with a real local rsync (stop, speed-limit restart, failure)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from smsagent.agent.store import TASK, Store, TaskRecord
from smsagent.agent.work import CancelReason, CancelToken, WorkCancelled
from smsagent.api.enums import SubtaskName
from smsagent.api.models import SpeedLimitWindow
from smsagent.config import Settings
from smsagent.inventory.mounts import read_mountinfo
from smsagent.migration.pipeline import PassOptions, PassProgress, PassRunner
from smsagent.migration.plan import PassSpec, SourcePlan, build_pass, copy_rules, plan_source
from smsagent.migration.rsync import (
    ExitClass,
    PassKind,
    Progress,
    RetryPolicy,
    RsyncError,
    RsyncJob,
    classify_exit,
)
from smsagent.migration.rsync_exit import guarded_rsync_path
from smsagent.migration.settings import MigrationSettings, SettingError
from smsagent.migration.speedlimit import SpeedLimitWatch
from tests.support.agentcore import ProgressLog, agent_settings, handler_context
from tests.support.migrate import du_bytes, mover_processes
from tests.support.treecompare import compare_trees

MiB = 1024 * 1024


def _progress(bytes_done: int, to_check: int = 0, total: int = 10) -> Progress:
    return Progress(bytes_done, 0, 0.0, None, 1, to_check, total, is_total_final=True)


def _spec(kind: PassKind, shares: tuple[float, ...], total: int = 1000) -> PassSpec:
    jobs = tuple(RsyncJob("/", ("",), "/mnt/smsroot", kind=kind) for _ in shares)
    return PassSpec(SubtaskName.MIGRATE_LINUX_FILE, kind, jobs, shares, total)


class TestPassProgress:
    def test_bytes_add_up_over_streams_and_restarts(self) -> None:
        """A full copy's progress is the bytes of every stream and of every earlier run."""
        progress = PassProgress(_spec(PassKind.migrate, (0.5, 0.5)), start_bytes=100)
        progress.update(0, _progress(200))
        progress.update(1, _progress(50))
        assert progress.bytes_done == 350
        progress.update(0, _progress(30))  # stream 0's rsync started again
        assert progress.bytes_done == 380
        progress.restart(1)
        progress.update(1, _progress(20))
        assert progress.bytes_done == 400

    def test_never_falls_and_stays_below_100(self) -> None:
        """More bytes than the total (sparse files, resends) still show 99 % at most."""
        progress = PassProgress(_spec(PassKind.migrate, (1.0,)))
        progress.update(0, _progress(800))
        progress.update(0, _progress(5000))
        assert progress.bytes_done == progress.ceiling == 990
        progress.restart(0)
        assert progress.bytes_done == 990

    def test_sync_counts_files_checked(self) -> None:
        """A sync sends little: its progress is the share of files checked, by stream weight."""
        progress = PassProgress(_spec(PassKind.sync, (0.75, 0.25)))
        progress.update(0, _progress(0, to_check=5, total=10))
        assert progress.bytes_done == 375
        progress.update(0, _progress(0, to_check=8, total=10))  # a rerun checks from the start
        assert progress.bytes_done == 375
        progress.update(1, _progress(0, to_check=0, total=4))
        assert progress.bytes_done == 625


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    for directory in ("srv/app", "etc", "var/lib/smsagent", "opt"):
        (root / directory).mkdir(parents=True)
    (root / "srv" / "app" / "data.bin").write_bytes(os.urandom(2 * MiB))
    (root / "etc" / "config").write_text("key = value\n")
    (root / "opt" / "tool").write_bytes(os.urandom(300_000))
    (root / "var" / "lib" / "smsagent" / "agent.json").write_text("{}\n")
    return root


class TestPlan:
    def test_source_plan(self, tree: Path) -> None:
        """The size is what `du` counts; only the agent's paths under the root become rules."""
        plan = plan_source(
            tree, [tree / "var/lib/smsagent", Path("/etc/smsagent")], read_mountinfo()
        )
        assert plan.filesystem_paths == ("",)
        assert plan.agent_paths == ("/var/lib/smsagent",)
        assert plan.used_bytes == du_bytes(tree)

    def test_copy_rules(self) -> None:
        """Defaults, each file system's lost+found, mounts not copied, the agent, the user."""
        plan = SourcePlan("/", ("", "boot"), ("run",), ("/var/lib/smsagent",), 0)
        settings = MigrationSettings(migrate_exclude_dir="/srv/cache", sync_exclude_dir="/tmp")
        migrate = copy_rules(plan, settings, PassKind.migrate)
        for rule in ("/proc/*", "/boot/lost+found/*", "/run/*", "/var/lib/smsagent", "/srv/cache"):
            assert f"- {rule}" in migrate
        assert "- /etc/fstab" not in migrate
        sync = copy_rules(plan, settings, PassKind.sync)
        assert "- /etc/fstab" in sync and "- /tmp" in sync and "- /srv/cache" not in sync

    def test_only_sync_dir_applies_to_sync_passes(self, tree: Path) -> None:
        """`ONLY_SYNC_DIR` narrows sync passes to the directories that exist; not the copy."""
        plan = SourcePlan(str(tree), ("",), (), (), 1000)
        settings = MigrationSettings(only_sync_dirs=("srv", "missing"), streams_migrate=2)
        sync = build_pass(plan, settings, PassKind.sync, "/mnt/smsroot")
        assert [job.sources for job in sync.jobs] == [("srv",)]
        assert sync.stage is SubtaskName.SYNC_LINUX_FILE
        migrate = build_pass(plan, settings, PassKind.migrate, "/mnt/smsroot")
        assert len(migrate.jobs) == 2 and sum(migrate.shares) == pytest.approx(1.0)
        assert migrate.total_bytes == 1000
        with pytest.raises(SettingError, match="ONLY_SYNC_DIR"):
            build_pass(
                plan, MigrationSettings(only_sync_dirs=("missing",)), PassKind.sync, "/mnt/smsroot"
            )


class Windows:
    """`GET speed-limit` as the test sets it."""

    def __init__(self, mbit_s: int) -> None:
        self.mbit_s = mbit_s

    async def __call__(self) -> list[SpeedLimitWindow]:
        if not self.mbit_s:
            return []
        return [SpeedLimitWindow(start="00:00", end="23:59", speed=self.mbit_s)]


class Pass:
    """A pass runner over a local rsync, with a real store and task record."""

    def __init__(self, tmp_path: Path, source: Path, destination: Path, streams: int) -> None:
        self.settings: Settings = agent_settings(tmp_path)
        self.store = Store(self.settings.state_dir)
        self.store.open()
        self.store.save(TASK, TaskRecord.new("t1", "MIGRATE_FILE", time.time()))
        self.token = CancelToken()
        self.progress = ProgressLog()
        self.ctx = handler_context(
            self.store, self.settings, progress=self.progress, cancel=self.token, task_id="t1"
        )
        plan = SourcePlan(str(source), ("",), (), (), du_bytes(source))
        self.spec = build_pass(
            plan, MigrationSettings(streams_migrate=streams), PassKind.migrate, str(destination)
        )

    async def runner(self, windows: Windows) -> PassRunner:
        limits = SpeedLimitWatch(windows, refresh_s=0.1)
        await limits.refresh()
        options = PassOptions(RetryPolicy(retries=0), grace_s=5, save_interval_s=0.1)
        return PassRunner(self.ctx, self.spec, None, limits, options)


needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


@needs_rsync
class TestPassRunner:
    @pytest.mark.timeout(60)
    async def test_streams_copy_everything(self, tmp_path: Path, tree: Path) -> None:
        """Two streams copy the tree exactly; progress rises and is saved in the task record."""
        destination = tmp_path / "target"
        destination.mkdir()
        run = Pass(tmp_path, tree, destination, streams=2)
        summary = await (await run.runner(Windows(0))).run()

        assert len(summary.results) == 2 and summary.restarts == summary.retries == 0
        assert compare_trees(tree, destination) == []
        done = [report.bytes_done for report in run.progress.reports]
        assert done and done == sorted(done)
        assert all(
            report.stage is SubtaskName.MIGRATE_LINUX_FILE for report in run.progress.reports
        )
        record = run.store.load(TASK).value
        assert record is not None
        # A resume never starts below what was reported.
        assert record.progress_of("MIGRATE_LINUX_FILE").bytes_done >= done[-1] > 0

    @pytest.mark.timeout(60)
    async def test_stop_ends_rsync_at_once(self, tmp_path: Path, tree: Path) -> None:
        """A cancelled token stops every rsync within a second and raises `WorkCancelled`."""
        (tree / "opt" / "big").write_bytes(os.urandom(8 * MiB))
        destination = tmp_path / "target"
        destination.mkdir()
        run = Pass(tmp_path, tree, destination, streams=2)
        runner = await run.runner(Windows(8))  # 1 MB/s: seconds of work
        work = asyncio.ensure_future(runner.run())
        await asyncio.wait_for(run.progress.reached(MiB).wait(), timeout=30)

        stop_at = time.monotonic()
        run.token.cancel(CancelReason.command)
        with pytest.raises(WorkCancelled) as caught:
            await work
        assert time.monotonic() - stop_at < 1.0
        assert caught.value.reason is CancelReason.command
        assert mover_processes() == []
        record = run.store.load(TASK).value
        assert record is not None and record.progress_of("MIGRATE_LINUX_FILE").bytes_done >= MiB

    @pytest.mark.timeout(60)
    async def test_a_new_limit_restarts_the_streams(self, tmp_path: Path, tree: Path) -> None:
        """When the limit in force changes, rsync runs again with it and the copy completes."""
        (tree / "opt" / "big").write_bytes(os.urandom(6 * MiB))
        destination = tmp_path / "target"
        destination.mkdir()
        run = Pass(tmp_path, tree, destination, streams=1)
        windows = Windows(8)
        runner = await run.runner(windows)
        work = asyncio.ensure_future(runner.run())
        await asyncio.wait_for(run.progress.reached(MiB).wait(), timeout=30)
        windows.mbit_s = 0
        summary = await asyncio.wait_for(work, timeout=30)

        assert summary.restarts == 1
        assert compare_trees(tree, destination) == []
        done = [report.bytes_done for report in run.progress.reports]
        assert done == sorted(done)

    @pytest.mark.timeout(60)
    async def test_a_fatal_failure_raises_with_its_code(self, tmp_path: Path, tree: Path) -> None:
        """rsync failing for good (the destination is a file) raises `RsyncError`, SMS.0805."""
        destination = tmp_path / "a-file"
        destination.write_text("not a directory\n")
        run = Pass(tmp_path, tree, destination, streams=2)
        with pytest.raises(RsyncError) as caught:
            await (await run.runner(Windows(0))).run()
        assert caught.value.error_code == "SMS.0805"
        assert mover_processes() == []


class TestTargetRootGuard:
    def test_every_job_starts_rsync_only_in_the_target_root(self, tree: Path) -> None:
        """Each stream's remote rsync is guarded by the target root's existence."""
        plan = SourcePlan(str(tree), ("",), (), (), 1)
        spec = build_pass(plan, MigrationSettings(), PassKind.migrate, "/mnt/smsroot")
        assert all(job.remote_rsync_path == guarded_rsync_path("/mnt/smsroot") for job in spec.jobs)

    @pytest.mark.parametrize("root_exists", [True, False])
    def test_the_guard_in_a_real_shell(self, tmp_path: Path, root_exists: bool) -> None:
        """The target's shell runs rsync where the root exists; elsewhere it exits with the
        marker, which makes the failure fatal with its own code."""
        root = tmp_path / "sms root's"
        if root_exists:
            root.mkdir()
        command = guarded_rsync_path(str(root)) + " --version"
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        if root_exists:
            assert done.returncode == 0 and "rsync" in done.stdout
            return
        assert done.returncode == 1
        outcome = classify_exit(12, stderr_lines=done.stderr.splitlines())
        assert outcome.exit_class is ExitClass.fatal
        assert outcome.error_code == "SMSAGENT.TARGET_ROOT"
        assert str(root) in done.stderr
