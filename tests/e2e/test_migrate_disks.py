"""A MIGRATE_FILE task that lays out the target's disks itself: FORMAT, then the copy into them.

The source is a directory with every kind of file (no operating system); the target is a real
sshd in a network namespace whose disks are loop devices. What a user would see: the copy inside
the new file system (read back from the disk after the agent unmounted it), the stages on SMS, a
STOP during FORMAT resumed by START without a second format, the file systems unmounted at the
end, and CONFIGURE failing with a reason a user can act on, since there is no system to configure
(the whole-server tests configure and boot real ones).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, Settled, migration_rig
from tests.support.target import TargetHost
from tests.support.targetdisks import MIB, TargetDisks, probe, run
from tests.support.tree import SpecialTree
from tests.support.treecompare import compare_trees, rsync_differences

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

FORMAT = "FORMAT_DISK_LINUX_FILE"
CONFIGURE = "CONFIGURE_LINUX_FILE"


@pytest.fixture
async def rig(
    tmp_path: Path,
    emulator: EmulatorProcess,
    target_host: TargetHost,
    special_tree: SpecialTree,
) -> AsyncIterator[MigrationRig]:
    async with migration_rig(
        tmp_path / "agent", emulator, target_host, special_tree.root, target_layout="task"
    ) as made:
        yield made


def _one_disk(device: str) -> dict[str, Any]:
    return {
        "name": "target",
        "ip": "",
        "disks": [
            {
                "name": device,
                "partition_style": "GPT",
                "device_use": "BOOT",
                "size": 1024 * MIB,
                "physical_volumes": [
                    {"index": 0, "size": MIB, "device_use": "NORMAL"},  # BIOS boot
                    {
                        "index": 1,
                        "file_system": "ext4",
                        "mount_point": "/",
                        "size": 512 * MIB,
                        "uuid": "22222222-2222-4222-8222-222222222222",
                        "device_use": "OS",
                    },
                ],
            }
        ],
    }


def assert_no_system_to_configure(settled: Settled) -> None:
    """The copy is done; CONFIGURE finds no operating system in it and says so."""
    assert settled.result is CommandResult.fail, settled.message
    assert settled.state is State.failed
    assert settled.error_code == "SMSAGENT.CONFIGURE"
    assert "/etc/os-release" in settled.message


def assert_copied(source: Path, copy: Path) -> None:
    """The copy holds the source; a new ext4 also has its own lost+found (never copied)."""
    assert compare_trees(source, copy, ignore={b"lost+found"}) == []
    assert [d for d in rsync_differences(source, copy) if "lost+found" not in d] == []


@contextmanager
def _mounted(device: str, where: Path) -> Iterator[Path]:
    """The target's root file system, mounted read-only on the test's side."""
    where.mkdir()
    run("mount", "-o", "ro", device, str(where))
    try:
        yield where
    finally:
        run("umount", str(where))


def _create(rig: MigrationRig, device: str) -> None:
    server = _one_disk(device)
    server["ip"] = rig.target.ip
    rig.create_task(target_server=server, is_need_consistency_check=False)


async def test_the_copy_lands_in_the_new_file_system(
    rig: MigrationRig, disks: TargetDisks, special_tree: SpecialTree, tmp_path: Path
) -> None:
    device = disks.add(1536)
    _create(rig, device)

    await rig.start()
    settled = await rig.settled()

    assert_no_system_to_configure(settled)
    assert rig.target.mounts_below(rig.target.root) == []  # unmounted at the end
    stages = [r["subtask_name"] for r in rig.progress_reports()]
    assert stages.index(FORMAT) < stages.index("MIGRATE_LINUX_FILE") < stages.index(CONFIGURE)
    assert probe(f"{device}p2")["TYPE"] == "ext4"
    with _mounted(f"{device}p2", tmp_path / "check") as copy:
        assert_copied(special_tree.root, copy)


async def test_stop_during_format_then_start_formats_once(
    rig: MigrationRig, disks: TargetDisks, special_tree: SpecialTree, tmp_path: Path
) -> None:
    device = disks.add(1536)
    _create(rig, device)

    await rig.start()
    await rig.wait_for_stage(FORMAT)
    stopped = await rig.stop()
    assert stopped.result is CommandResult.success
    first = rig.record().progress_of(FORMAT)

    await rig.start()
    settled = await rig.settled()

    assert_no_system_to_configure(settled)
    record = rig.record()
    prepared = record.progress_of(FORMAT).resume["prepared"]
    assert isinstance(prepared, dict)
    if first.done:  # the stop came after the format: the resume reused it
        assert first.resume == record.progress_of(FORMAT).resume
    uuid = probe(f"{device}p2")["UUID"]
    assert any(v["uuid"] == uuid for v in prepared["volumes"])  # type: ignore[union-attr,index]
    with _mounted(f"{device}p2", tmp_path / "check") as copy:
        assert_copied(special_tree.root, copy)


async def test_a_refused_disk_fails_the_task_with_its_name(
    rig: MigrationRig, disks: TargetDisks
) -> None:
    device = disks.add(256)  # too small for its layout
    _create(rig, device)

    await rig.start()
    settled = await rig.settled()

    assert settled.result is CommandResult.fail
    assert settled.state is State.failed
    assert settled.error_code == "SMSAGENT.TARGET_DISK_TOO_SMALL"
    assert device in settled.message and "nothing was written" in settled.message
