"""The FSCOPY_TEST plugin, loaded through its entry point: real copies, stop, resume, sync."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any

import pytest

from smsagent.agent.handler_api import HandlerOutcome
from smsagent.agent.machine import Action, State, decide
from smsagent.agent.store import TASK, TaskRecord
from smsagent.agent.work import CancelReason
from smsagent.api.enums import CommandName, CommandResult, SubtaskName
from smsagent.api.models import Task
from tests.support.agentcore import Runner, envelope, settle_in_store

FILES = 48
FILE_BYTES = 192 * 1024
TOTAL_BYTES = FILES * FILE_BYTES


def build_tree(root: Path) -> None:
    """Directories, files of random bytes with varied modes, a symlink, an empty directory."""
    rng = random.Random(5)
    for sub in ("etc", "var/lib/app", "empty"):
        (root / sub).mkdir(parents=True)
    for index in range(FILES):
        folder = root / ("etc", "var/lib/app", "")[index % 3]
        path = folder / f"file-{index:03d}.bin"
        path.write_bytes(rng.randbytes(FILE_BYTES))
        path.chmod(0o640 if index % 2 else 0o600)
    (root / "etc" / "link").symlink_to("file-000.bin")


def tree_of(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a copy must preserve, by relative path (directory times change as entries arrive)."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        info = path.lstat()
        if path.is_symlink():
            found[relative] = ("link", str(path.readlink()))
        elif path.is_dir():
            found[relative] = ("dir", info.st_mode)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[relative] = ("file", info.st_mode, info.st_mtime_ns, digest)
    return found


def inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_ino for p in root.rglob("*.bin")}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    source, target = tmp_path / "source", tmp_path / "target"
    build_tree(source)
    target.mkdir()
    return source, target


def _task(source: Path, target: Path, **fields: Any) -> Task:
    return Task(
        id="t1", type="FSCOPY_TEST", fscopy_source=str(source), fscopy_target=str(target), **fields
    )


def _begin(runner: Runner, command: CommandName = CommandName.START) -> TaskRecord:
    """Persist the machine's decision, as the poller does before starting work."""
    record = runner.store.load(TASK).value or TaskRecord.new("t1", "FSCOPY_TEST", time.time())
    decided = record.apply(decide(record.state, command), command, time.time())
    runner.remember(decided)
    return decided


def _settle(runner: Runner, outcome: HandlerOutcome) -> TaskRecord:
    settle_in_store(runner.store, "t1", outcome, time.time())
    record = runner.store.load(TASK).value
    assert record is not None
    return record


class TestCopy:
    async def test_full_copy(self, runner: Runner, dirs: tuple[Path, Path]) -> None:
        """START copies the tree exactly, reports progress from 0 to the total, and finishes."""
        source, target = dirs
        _begin(runner)
        work = runner.start_work(envelope(CommandName.START, Action.start_task, task=_task(*dirs)))
        outcome = await work
        assert outcome.result is CommandResult.success and outcome.next_state is State.finished
        assert outcome.detail == {"files_copied": FILES + 1}
        assert tree_of(target) == tree_of(source)
        reports = runner.progress.reports
        assert (reports[0].bytes_done, reports[0].force) == (0, True)
        assert (reports[-1].bytes_done, reports[-1].force) == (TOTAL_BYTES, True)
        assert all(r.bytes_total == TOTAL_BYTES for r in reports)
        assert all(a.bytes_done <= b.bytes_done for a, b in zip(reports, reports[1:]))
        assert {r.stage for r in reports} == {SubtaskName.MIGRATE_LINUX_FILE}
        record = _settle(runner, outcome)
        assert record.state is State.finished
        assert record.progress_of("MIGRATE_LINUX_FILE").done

    async def test_continuous_sync_task_ends_replicated(
        self, runner: Runner, dirs: tuple[Path, Path]
    ) -> None:
        """A task with `syncing` waits for sync passes after the full copy."""
        _begin(runner)
        task = _task(*dirs, syncing=True)
        outcome = await runner.start_work(envelope(CommandName.START, Action.start_task, task=task))
        assert outcome.next_state is State.replicated

    async def test_stop_then_resume(self, runner: Runner, dirs: tuple[Path, Path]) -> None:
        """STOP mid-copy stops at a checkpoint; START resumes after the last file copied,
        without copying earlier files again."""
        source, target = dirs
        _begin(runner)
        halfway = runner.progress.reached(TOTAL_BYTES // 2)
        work = runner.start_work(envelope(CommandName.START, Action.start_task, task=_task(*dirs)))
        await halfway.wait()
        _begin(runner, CommandName.STOP)
        stop = await runner.command(envelope(CommandName.STOP, Action.cancel_task, sequence=2))
        assert stop.result is CommandResult.success and stop.message == "the task was stopped"
        stopped = await work
        assert (stopped.result, stopped.next_state) == (None, State.stopped)
        record = _settle(runner, stop)
        assert record.state is State.stopped
        cursor = record.progress_of("MIGRATE_LINUX_FILE").resume["cursor"]
        assert isinstance(cursor, str) and cursor
        copied_before = inodes(target)
        assert 0 < len(copied_before) < FILES
        assert not list(target.rglob("*.fscopy-part"))

        _begin(runner)
        runner.progress.reports.clear()
        resumed = runner.start_work(envelope(CommandName.START, Action.resume_task, sequence=3))
        outcome = await resumed
        assert outcome.result is CommandResult.success
        assert tree_of(target) == tree_of(source)
        after = inodes(target)
        kept = [name for name, inode in copied_before.items() if after[name] == inode]
        assert len(kept) >= len(copied_before) - 1, "at most the file in flight is copied again"
        first = runner.progress.reports[0]
        assert 0 < first.bytes_done < TOTAL_BYTES and first.force

    async def test_shutdown_leaves_the_task_resumable(
        self, runner: Runner, dirs: tuple[Path, Path]
    ) -> None:
        """Shutdown mid-copy owes no result and changes no state; a later resume completes."""
        source, target = dirs
        _begin(runner)
        halfway = runner.progress.reached(TOTAL_BYTES // 2)
        work = runner.start_work(envelope(CommandName.START, Action.start_task, task=_task(*dirs)))
        await halfway.wait()
        await runner.slot.stop(CancelReason.shutdown, 10.0)
        assert (await work) == HandlerOutcome.interrupted()
        record = runner.store.load(TASK).value
        assert record is not None and record.state is State.running
        outcome = await runner.start_work(envelope(CommandName.START, Action.resume_task))
        assert outcome.result is CommandResult.success
        assert tree_of(target) == tree_of(source)

    async def test_sync_pass_copies_only_changes(
        self, runner: Runner, dirs: tuple[Path, Path]
    ) -> None:
        """A sync pass after the full copy brings changed and new files over and nothing else."""
        source, target = dirs
        _begin(runner)
        task = _task(*dirs, syncing=True)
        _settle(
            runner,
            await runner.start_work(envelope(CommandName.START, Action.start_task, task=task)),
        )
        before = inodes(target)
        (source / "etc" / "file-000.bin").write_bytes(b"changed")
        (source / "var" / "new.bin").parent.mkdir(exist_ok=True)
        (source / "var" / "new.bin").write_bytes(b"new")
        _begin(runner, CommandName.SYNC)
        runner.progress.reports.clear()
        outcome = await runner.start_work(envelope(CommandName.SYNC, Action.sync_task, task=task))
        assert outcome.next_state is State.replicated
        assert outcome.detail == {"files_copied": 3}  # the changed file, the new one, the symlink
        assert tree_of(target) == tree_of(source)
        after = inodes(target)
        changed = {name for name in before if after[name] != before[name]}
        assert changed == {"etc/file-000.bin"}
        assert {r.stage for r in runner.progress.reports} == {SubtaskName.SYNC_LINUX_FILE}


class TestChecks:
    async def test_drill(self, runner: Runner, dirs: tuple[Path, Path]) -> None:
        """PREMIGRATE checks the directories, copies nothing and returns the task to idle."""
        _, target = dirs
        _begin(runner, CommandName.PREMIGRATE)
        drill = envelope(CommandName.PREMIGRATE, Action.run_premigrate, task=_task(*dirs))
        outcome = await runner.start_work(drill)
        assert outcome.result is CommandResult.success and outcome.next_state is State.idle
        assert list(target.iterdir()) == []

    async def test_drill_with_missing_source(self, runner: Runner, tmp_path: Path) -> None:
        """A drill against a missing directory fails, naming the field and the path."""
        task = _task(tmp_path / "nowhere", tmp_path)
        outcome = await runner.start_work(
            envelope(CommandName.PREMIGRATE, Action.run_premigrate, task=task)
        )
        assert outcome.result is CommandResult.fail and outcome.next_state is State.idle
        assert outcome.message == f"fscopy_source {tmp_path / 'nowhere'} is not a directory"

    async def test_target_inside_source_is_refused(
        self, runner: Runner, dirs: tuple[Path, Path]
    ) -> None:
        """Copying a tree into itself fails the task before anything is written."""
        source, _ = dirs
        task = _task(source, source / "etc")
        outcome = await runner.start_work(envelope(CommandName.START, Action.start_task, task=task))
        assert outcome.result is CommandResult.fail and outcome.next_state is State.failed
        assert "lies inside fscopy_source" in outcome.message
