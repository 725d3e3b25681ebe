"""Interruptions of a file-level migration: STOP and START, a dropped connection, an agent restart.

The copy is slowed by a speed-limit window so that each interruption lands inside the large file.
Every run ends with a target identical to the source.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from smsagent.migration.rsync import PARTIAL_DIR
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

MIGRATE = "MIGRATE_LINUX_FILE"
# 16 Mbit/s: the 20 MiB file takes about ten seconds.
SLOW_WINDOW = [("00:00", "23:59", 16)]


@pytest.fixture
async def rig(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost, special_tree: SpecialTree
) -> AsyncIterator[MigrationRig]:
    async with migration_rig(tmp_path / "agent", emulator, target_host, special_tree.root) as made:
        made.create_task()
        await made.set_speed_limits(SLOW_WINDOW)
        yield made


def regular_bytes(root: Path) -> int:
    """Apparent size of every regular file below `root`, each inode once."""
    seen, total = set(), 0
    for directory, _, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def partial_file(target_host: TargetHost) -> Path:
    return target_host.root / "data" / PARTIAL_DIR / "big.bin"


async def copied_at_least(rig: MigrationRig, bytes_done: int) -> None:
    await rig.wait_for_record(lambda r: r.progress_of(MIGRATE).bytes_done >= bytes_done)


class TestStop:
    @pytest.mark.slow
    @pytest.mark.timeout(180)
    async def test_stop_within_a_second_then_start_completes(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """STOP mid-copy ends rsync within 1 s with the partial file kept; START resumes and
        builds on it, and the progress SMS saw never fell."""
        await rig.start()
        await copied_at_least(rig, 6 * MiB)

        stop_at = time.monotonic()
        stop = await rig.stop()
        stopped_at = time.monotonic()
        work = await rig.settled()

        assert stopped_at - stop_at < 1.0, stopped_at - stop_at
        assert work.ended_at - stop_at < 1.0
        assert stop.result is CommandResult.success
        assert rig.record().state is State.stopped
        assert mover_processes() == []
        target_host.wait_quiet()
        kept_bytes = partial_file(target_host).stat().st_size
        assert 0 < kept_bytes < 20 * MiB

        await rig.set_speed_limits([])
        await rig.start()
        resumed = await rig.settled()

        assert resumed.result is CommandResult.success, resumed
        assert resumed.state is State.replicated
        assert not partial_file(target_host).parent.exists()
        assert_identical(special_tree.root, target_host.root)
        # The kept part was not sent again (but for the block it ends in).
        unsent = regular_bytes(special_tree.root) - kept_bytes
        assert resumed.detail["literal_bytes"] <= unsent + 64 * 1024
        assert_progress_rises_to_100(rig.progress_reports(), du_bytes(special_tree.root))

    @pytest.mark.slow
    @pytest.mark.timeout(180)
    async def test_dropped_connection_is_retried(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """The target drops every SSH connection mid-copy: rsync runs again and completes."""
        await rig.start()
        await copied_at_least(rig, 4 * MiB)
        assert target_host.kill_sessions() > 0
        await rig.set_speed_limits([])
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert settled.detail["retries"] >= 1
        assert_identical(special_tree.root, target_host.root)

    @pytest.mark.timeout(180)
    async def test_target_gone_for_good_fails_with_network_code(
        self, rig: MigrationRig, target_host: TargetHost
    ) -> None:
        """A target that stays away fails the task with SMS.0807 after the retries."""
        await rig.start()
        await copied_at_least(rig, 2 * MiB)
        target_host.stop_sshd()
        settled = await rig.settled()

        assert settled.result is CommandResult.fail
        assert settled.error_code == "SMS.0807", settled
        assert settled.state is State.failed
        assert mover_processes() == []


class TestRestart:
    @pytest.mark.slow
    @pytest.mark.timeout(180)
    async def test_agent_restart_mid_copy_resumes_the_copy(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """A shutdown leaves the task running with its progress saved; the restarted agent
        resumes the copy where it was and reports on from there."""
        await rig.start()
        await copied_at_least(rig, 5 * MiB)
        interrupted = await rig.shutdown()
        assert interrupted.result is None and interrupted.next_state is None
        record = rig.record()
        assert record.state is State.running and record.stage == MIGRATE
        assert record.progress_of(MIGRATE).bytes_done >= 5 * MiB

        await rig.set_speed_limits([])
        await rig.restart()
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert_identical(special_tree.root, target_host.root)
        assert_progress_rises_to_100(rig.progress_reports(), du_bytes(special_tree.root))
