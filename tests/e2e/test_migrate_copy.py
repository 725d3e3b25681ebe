"""A whole file-level migration through the MIGRATE_FILE handler: emulator, real SSH, real rsync.

The special tree arrives identical (an independent comparison and rsync's own checksum dry run
both find nothing), the verification finds it consistent and says so to SMS, and the progress SMS
receives rises to 100 with sizes that match the data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from smsagent.migration.options import VERIFY_STAGE
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import (
    MigrationRig,
    assert_identical,
    assert_progress_rises_to_100,
    du_bytes,
    migration_rig,
)
from tests.support.target import TargetHost
from tests.support.tree import MiB, SpecialTree, build_special_tree

pytestmark = pytest.mark.root


@pytest.fixture
async def rig(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost, special_tree: SpecialTree
) -> AsyncIterator[MigrationRig]:
    """The special tree (20 MiB large file) as the source, the handler the entry point installs."""
    async with migration_rig(
        tmp_path / "agent", emulator, target_host, special_tree.root, handler=None
    ) as created:
        yield created


class TestFullMigration:
    @pytest.mark.timeout(180)
    async def test_special_tree_arrives_identical(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """START copies everything, verifies it, reports it consistent and ends replicated."""
        rig.create_task()
        await rig.start()
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert settled.state is State.replicated
        assert settled.detail["verification"] == "done"
        assert settled.detail["consistent"] is True
        assert_identical(special_tree.root, target_host.root)
        record = rig.record()
        assert record.progress_of("MIGRATE_LINUX_FILE").done
        assert record.progress_of(VERIFY_STAGE).done
        [result] = rig.consistency_results()
        assert result["dir_check"] == "/"
        assert result["num_total_files"] > 50
        assert result["num_different_files"] == 0
        assert result["num_target_miss_files"] == result["num_target_more_files"] == 0
        reports = rig.progress_reports()
        assert {r["subtask_name"] for r in reports} == {"MIGRATE_LINUX_FILE"}
        assert_progress_rises_to_100(reports, du_bytes(special_tree.root))
        # The task key is kept private and the target's host key is pinned for the task.
        key_file = rig.settings.state_dir / "keys" / f"{rig.task_id}.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        pinned = (rig.settings.state_dir / "known_hosts" / rig.task_id).read_text()
        assert target_host.host_public_key.split()[1] in pinned

    @pytest.mark.slow
    @pytest.mark.timeout(600)
    async def test_large_file_200_mb(
        self, tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost
    ) -> None:
        """The special tree with a 200 MB file arrives identical."""
        tree = build_special_tree(tmp_path / "big-source", large_file_bytes=200 * MiB)
        async with migration_rig(tmp_path / "agent-big", emulator, target_host, tree.root) as rig:
            rig.create_task()
            await rig.start()
            settled = await rig.settled(timeout_s=500)
            assert settled.result is CommandResult.success, settled
            assert settled.detail["consistent"] is True
            assert_identical(tree.root, target_host.root)
            assert_progress_rises_to_100(rig.progress_reports(), du_bytes(tree.root))
