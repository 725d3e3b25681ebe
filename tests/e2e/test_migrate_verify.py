"""The consistency verification after the full copy: quick and hash mode, its scope, SKIP, and a
restart in the middle of it.

To hold a verification open for as long as a test needs, the target's sshd listener is paused once
the copy's own connection is up: the verification's new connection then waits for a banner.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from smsagent.migration.options import VERIFY_STAGE
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, assert_identical, migration_rig
from tests.support.target import TargetHost
from tests.support.tree import MiB

pytestmark = pytest.mark.root

MIGRATE = "MIGRATE_LINUX_FILE"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small server: 4 MiB of data, a few files in /srv, /opt and /etc."""
    root = tmp_path / "source"
    for directory in ("data", "srv/app", "srv/skipme", "opt", "etc"):
        (root / directory).mkdir(parents=True)
    (root / "data" / "data.bin").write_bytes(os.urandom(4 * MiB))
    for name in ("srv/app/a", "srv/app/b", "srv/skipme/c", "opt/d", "etc/e"):
        (root / name).write_bytes(os.urandom(1000))
    return root


@pytest.fixture
async def rig(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost, source: Path
) -> AsyncIterator[MigrationRig]:
    async with migration_rig(tmp_path / "agent", emulator, target_host, source) as made:
        yield made
    target_host.resume_sshd()


async def hold_verification_open(rig: MigrationRig, target_host: TargetHost) -> None:
    """Start the task slowly, pause sshd once the copy is connected, wait for the verification."""
    rig.create_task()
    await rig.set_speed_limits([("00:00", "23:59", 16)])
    await rig.start()
    await rig.wait_for_record(lambda r: r.progress_of(MIGRATE).bytes_done > 0)
    target_host.pause_sshd()
    await rig.wait_for_stage(VERIFY_STAGE)


def tamper_keeping_size_and_time(path: Path) -> None:
    """New content of the same size with the old modification time: only a hash sees it."""
    info = path.stat()
    path.write_bytes(os.urandom(info.st_size))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


async def migrate(rig: MigrationRig, **settings: str) -> list[dict[str, object]]:
    """A new task for the same target, with these settings; its consistency results."""
    if rig.task_id:
        await rig.client.delete_task(rig.task_id)  # a source has one task at a time
    rig.create_task()
    if settings:
        await rig.configure(**settings)
    await rig.start()
    settled = await rig.settled()
    assert settled.result is CommandResult.success, settled
    return rig.consistency_results()


class TestModes:
    @pytest.mark.timeout(180)
    async def test_quick_and_hash_mode_see_what_they_compare(
        self, rig: MigrationRig, source: Path, target_host: TargetHost
    ) -> None:
        """Quick mode compares size and time, hash mode content; both count files only on the
        target; each directory verified gets its own counts."""
        [first] = await migrate(rig)
        assert first["num_different_files"] == first["num_target_more_files"] == 0

        tamper_keeping_size_and_time(target_host.root / "srv" / "app" / "a")
        (target_host.root / "srv" / "app" / "extra").write_text("only on the target\n")
        scope = {
            "CONSISTENCY_DIR": "/srv, /opt, /srv/app",
            "CONSISTENCY_DIR_ILLEGAL": "/srv/skipme",
        }

        quick = {r["dir_check"]: r for r in await migrate(rig, **scope)}
        hashed = {r["dir_check"]: r for r in await migrate(rig, CONSISTENCY_MODE="hash", **scope)}

        assert set(quick) == set(hashed) == {"/srv", "/opt"}
        assert quick["/srv"]["num_total_files"] == 2  # a, b; c is out of scope
        assert quick["/srv"]["num_different_files"] == 0
        assert hashed["/srv"]["num_different_files"] == 1
        assert quick["/srv"]["num_target_more_files"] == 1
        assert hashed["/srv"]["num_target_more_files"] == 1
        assert quick["/opt"] == {
            "dir_check": "/opt",
            "num_total_files": 1,
            "num_different_files": 0,
            "num_target_miss_files": 0,
            "num_target_more_files": 0,
        }

    @pytest.mark.timeout(120)
    async def test_verification_can_be_turned_off(
        self, rig: MigrationRig, source: Path, target_host: TargetHost
    ) -> None:
        """A task created without consistency check copies and sends no verification."""
        rig.create_task(is_need_consistency_check=False)
        await rig.start()
        settled = await rig.settled()
        assert settled.detail["verification"] == "off"
        assert rig.consistency_results() == []
        assert_identical(source, target_host.root)


class TestSkip:
    @pytest.mark.timeout(120)
    async def test_skip_during_verification_skips_it(
        self, rig: MigrationRig, source: Path, target_host: TargetHost
    ) -> None:
        """SKIP while verifying ends the verification at once; the task is replicated and SMS
        gets no verification result."""
        await hold_verification_open(rig, target_host)

        skip_at = time.monotonic()
        skip = await rig.skip()
        settled = await rig.settled()

        assert skip.result is CommandResult.success
        assert settled.ended_at - skip_at < 1.0
        assert settled.result is CommandResult.success, settled
        assert settled.state is State.replicated
        assert settled.detail["verification"] == "skipped"
        assert rig.record().progress_of(VERIFY_STAGE).done
        assert rig.consistency_results() == []
        target_host.resume_sshd()
        assert_identical(source, target_host.root)


class TestRestart:
    @pytest.mark.timeout(120)
    async def test_restart_in_verification_does_not_copy_again(
        self, rig: MigrationRig, source: Path, target_host: TargetHost
    ) -> None:
        """An agent restart during the verification resumes the verification, not the copy."""
        await hold_verification_open(rig, target_host)
        await rig.shutdown()
        assert rig.record().stage == VERIFY_STAGE
        assert rig.record().progress_of(MIGRATE).done
        target_host.resume_sshd()

        await rig.restart()
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert settled.detail["verification"] == "done"
        assert "files_transferred" not in settled.detail  # no copy pass ran
        [result] = rig.consistency_results()
        assert result["num_total_files"] == 5  # /etc is left out by default
