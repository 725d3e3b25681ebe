"""How a file-level migration fails: a clear SMS-style code and a message naming the cause, the
task `failed` (resumable with START), and nothing left running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from smsagent.migration.options import ERROR_SETTING
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, Settled, migration_rig, mover_processes
from tests.support.target import TargetHost
from tests.support.tree import SpecialTree

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
async def rig(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost, special_tree: SpecialTree
) -> AsyncIterator[MigrationRig]:
    async with migration_rig(tmp_path / "agent", emulator, target_host, special_tree.root) as made:
        made.create_task()
        yield made


async def failed_run(rig: MigrationRig) -> Settled:
    await rig.start()
    settled = await rig.settled()
    assert settled.result is CommandResult.fail, settled
    assert settled.state is State.failed
    assert mover_processes() == []
    return settled


class TestFailures:
    async def test_bad_setting_names_the_key(
        self, rig: MigrationRig, target_host: TargetHost
    ) -> None:
        """A setting the agent cannot use fails the task before anything is copied."""
        await rig.configure(NUM_PROCESS_MIGRATE="nine")
        settled = await failed_run(rig)
        assert settled.error_code == ERROR_SETTING
        assert "NUM_PROCESS_MIGRATE" in settled.message and "'nine'" in settled.message
        assert not any(target_host.root.iterdir())

    async def test_bad_exclusion_names_the_key_and_entry(self, rig: MigrationRig) -> None:
        """A relative path in an exclusion list is named with its setting."""
        await rig.configure(MIGRATE_EXCLUDE_DIR="/srv, var/tmp")
        settled = await failed_run(rig)
        assert settled.error_code == ERROR_SETTING
        assert "MIGRATE_EXCLUDE_DIR" in settled.message and "'var/tmp'" in settled.message

    async def test_refused_key(self, rig: MigrationRig, target_host: TargetHost) -> None:
        """A target that refuses the task key fails with SMS.3804."""
        target_host.revoke_client_key()
        settled = await failed_run(rig)
        assert settled.error_code == "SMS.3804", settled

    async def test_changed_host_key(self, rig: MigrationRig, target_host: TargetHost) -> None:
        """A target whose host key changed after it was pinned fails with SMS.3803; START again
        after the failure does not accept the new key either."""
        await rig.start()
        assert (await rig.settled()).state is State.replicated
        target_host.replace_host_key()
        (rig.source_root / "new").write_text("to sync\n")
        settled = await failed_run(rig)
        assert settled.error_code == "SMS.3803", settled
        settled = await failed_run(rig)
        assert settled.error_code == "SMS.3803", settled

    async def test_missing_target_root(self, rig: MigrationRig, target_host: TargetHost) -> None:
        """A target without its target root (disks not mounted) is never written to."""
        target_host.root.rmdir()
        settled = await failed_run(rig)
        assert settled.error_code == "SMSAGENT.TARGET_ROOT", settled
        assert not target_host.root.exists()

    async def test_no_task_key(self, rig: MigrationRig) -> None:
        """SMS returning no private key for the task is named as such."""
        rig.emulator.set_cert_key(rig.task_id)
        settled = await failed_run(rig)
        assert settled.error_code == "SMSAGENT.TASK_KEY", settled

    async def test_target_root_slash_is_refused(
        self, tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost, source: Path
    ) -> None:
        """A target root of `/` would overwrite the target's own system; it is refused."""
        async with migration_rig(
            tmp_path / "agent2", emulator, target_host, source, target_root=Path("/")
        ) as rig:
            rig.create_task()
            settled = await failed_run(rig)
        assert settled.error_code == ERROR_SETTING
        assert "SMSAGENT_TARGET_ROOT" in settled.message


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "small-source"
    root.mkdir()
    (root / "file").write_text("data\n")
    return root
