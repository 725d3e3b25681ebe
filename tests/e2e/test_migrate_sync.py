"""Sync passes after the full copy: one pass per START, continuous sync for a `syncing` task, and
the task's sync settings (`SYNC_EXCLUDE_DIR`, `ONLY_SYNC_DIR`)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Callable

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import (
    MigrationRig,
    assert_identical,
    assert_progress_rises_to_100,
    du_bytes,
    migration_rig,
    mover_processes,
)
from tests.support.target import TargetHost
from tests.support.tree import MiB, SpecialTree

pytestmark = pytest.mark.root

SYNC = "SYNC_LINUX_FILE"


@pytest.fixture
async def rig(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost, special_tree: SpecialTree
) -> AsyncIterator[MigrationRig]:
    async with migration_rig(tmp_path / "agent", emulator, target_host, special_tree.root) as made:
        yield made


async def replicate(rig: MigrationRig, **task_fields: object) -> None:
    """Create the task (without verification) and run the full copy to `replicated`."""
    rig.create_task(is_need_consistency_check=False, **task_fields)
    await rig.start()
    settled = await rig.settled()
    assert settled.state is State.replicated, settled


def change_source(root: Path) -> None:
    """Add, change, rename, chmod and delete, and rewrite 1 MiB inside the large file."""
    (root / "srv" / "new file.txt").write_bytes(os.urandom(1000))
    (root / "srv" / "many" / "small-010").write_bytes(os.urandom(970))
    (root / "names" / "with space").rename(root / "names" / "renamed")
    (root / "modes" / "group_write").chmod(0o600)
    (root / "srv" / "many" / "small-020").unlink()
    (root / "empty too").rmdir()
    with open(root / "data" / "big.bin", "r+b") as handle:
        handle.seek(8 * MiB)
        handle.write(os.urandom(MiB))


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class TestSyncPass:
    @pytest.mark.timeout(180)
    async def test_sync_brings_changes_and_sends_only_them(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """START on a replicated task runs one sync pass: the target is identical again, and
        only the changed files (and the changed part of the large one) were sent."""
        await replicate(rig)
        change_source(special_tree.root)

        await rig.start()
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert settled.state is State.replicated
        assert settled.detail["stage"] == SYNC
        assert_identical(special_tree.root, target_host.root)
        # New, changed, renamed (a new name to rsync) and the large file; the chmod is metadata.
        assert settled.detail["files_transferred"] == 4
        assert settled.detail["files_deleted"] == 3  # small-020, the old name, the empty dir
        assert settled.detail["literal_bytes"] < 2 * MiB
        sync_reports = [r for r in rig.progress_reports() if r["subtask_name"] == SYNC]
        assert_progress_rises_to_100(sync_reports, du_bytes(special_tree.root))

    @pytest.mark.timeout(180)
    async def test_sync_leaves_excluded_paths_alone(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """`SYNC_EXCLUDE_DIR` paths are neither sent nor deleted; `/etc/fstab` (rewritten on the
        target by SMS) is never synced."""
        (special_tree.root / "etc" / "fstab").write_text("source fstab\n")
        await replicate(rig)
        (target_host.root / "etc" / "fstab").write_text("target fstab, rewritten by SMS\n")
        await rig.configure(SYNC_EXCLUDE_DIR="/srv/many, /home")
        (special_tree.root / "srv" / "many" / "small-001").write_bytes(b"changed")
        (special_tree.root / "srv" / "many" / "small-002").unlink()
        (special_tree.root / "home" / "user one" / "notes.txt").write_text("changed")
        (special_tree.root / "etc" / "config.txt").write_text("key = other value\n")

        await rig.start()
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        target = target_host.root
        assert (target / "srv" / "many" / "small-001").read_bytes() != b"changed"
        assert (target / "srv" / "many" / "small-002").exists()
        assert (target / "home" / "user one" / "notes.txt").read_text() != "changed"
        assert (target / "etc" / "config.txt").read_text() == "key = other value\n"
        assert (target / "etc" / "fstab").read_text() == "target fstab, rewritten by SMS\n"

    @pytest.mark.timeout(180)
    async def test_only_sync_dir_limits_the_pass(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """With `ONLY_SYNC_DIR` a sync visits only those directories."""
        await replicate(rig)
        await rig.configure(ONLY_SYNC_DIR="/srv")
        (special_tree.root / "srv" / "added").write_text("in /srv\n")
        (special_tree.root / "etc" / "added").write_text("in /etc\n")
        (special_tree.root / "srv" / "many" / "small-003").unlink()

        await rig.start()
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert (target_host.root / "srv" / "added").read_text() == "in /srv\n"
        assert not (target_host.root / "srv" / "many" / "small-003").exists()
        assert not (target_host.root / "etc" / "added").exists()


class TestContinuousSync:
    @pytest.mark.timeout(180)
    async def test_passes_repeat_until_the_task_finishes(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """For a `syncing` task one START keeps syncing every `sync_interval`: a later change
        arrives without another START; TASK_HAS_FINISHED ends it and the task is finished."""
        await replicate(rig, syncing=True)
        # Below the production floor of 60 s, so the test sees several passes.
        rig.settings = rig.settings.model_copy(update={"sync_interval": 1.0})

        await rig.start()
        await rig.wait_for_record(lambda r: r.stage == SYNC and r.progress_of(SYNC).done)
        assert rig.record().state is State.running
        later = special_tree.root / "srv" / "later.txt"
        later.write_text("written after the first pass\n")
        await wait_until(lambda: (target_host.root / "srv" / "later.txt").exists())

        finished = await rig.finish()
        await rig.settled()

        assert finished.next_state is State.finished
        assert rig.record().state is State.finished
        assert mover_processes() == []
        assert_identical(special_tree.root, target_host.root)

    @pytest.mark.timeout(180)
    async def test_stop_ends_continuous_sync(
        self, rig: MigrationRig, special_tree: SpecialTree
    ) -> None:
        """STOP between passes ends the continuous sync at once; the task is stopped."""
        await replicate(rig, syncing=True)
        await rig.start()
        await rig.wait_for_record(lambda r: r.stage == SYNC and r.progress_of(SYNC).done)

        stop_at = time.monotonic()
        stop = await rig.stop()

        assert time.monotonic() - stop_at < 1.0
        assert stop.result is CommandResult.success
        assert rig.record().state is State.stopped
