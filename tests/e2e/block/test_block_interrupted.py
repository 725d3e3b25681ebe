"""A block-level migration interrupted in every stage still ends in a target that boots.

STOP lands in FORMAT_DISK_LINUX_BLOCK, MIGRATE_LINUX_BLOCK and CONFIGURE_LINUX_BLOCK, and the
real agent process is killed with SIGKILL while the copy runs and while the target's initramfs
is built; each time START (or the agent's own restart) resumes, and at the end the target boots
with the same checks as an uninterrupted migration.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smsagent.api.enums import CommandResult
from smsagent.target.prepared import PreparedTarget
from tests.support import sourcesys
from tests.support.agent import AgentProcess
from tests.support.blocktls import make_cert_key, ssh_public_key
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.migrate import MigrationRig, migration_rig, stop_in
from tests.support.target import TargetHost
from tests.support.targetdisks import MIB, TargetDisks
from tests.support.wholeserver import EXTRA_MIB, boot_target, target_server

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1200)]

FORMAT = "FORMAT_DISK_LINUX_BLOCK"
MIGRATE = "MIGRATE_LINUX_BLOCK"
CONFIGURE = "CONFIGURE_LINUX_BLOCK"
STOP_BOUND_S = 5.0


def _layout(
    source: sourcesys.SourceSystem, disks: TargetDisks, ip: str
) -> tuple[list[str], dict[str, Any]]:
    size_mib = source.disk_size_bytes // MIB + EXTRA_MIB
    devices = [disks.add(size_mib) for _ in source.disks]
    return devices, target_server(source, devices, size_mib * MIB, ip)


@pytest.fixture
async def rig(
    tmp_path: Path,
    emulator: EmulatorProcess,
    target_host: TargetHost,
    mbr_bios_source: sourcesys.SourceSystem,
) -> AsyncIterator[MigrationRig]:
    async with migration_rig(
        tmp_path / "agent", emulator, target_host, mbr_bios_source.root, target_layout="task"
    ) as made:
        yield made


async def test_stop_in_each_stage_then_start_boots(
    rig: MigrationRig,
    mbr_bios_source: sourcesys.SourceSystem,
    disks: TargetDisks,
    target_host: TargetHost,
    tmp_path: Path,
) -> None:
    source = mbr_bios_source
    devices, layout = _layout(source, disks, target_host.ip)
    rig.create_block_task(make_cert_key(tmp_path / "tls"), target_server=layout)

    for stage in (FORMAT, MIGRATE, CONFIGURE):
        await rig.start()
        await stop_in(rig, stage, MIGRATE, STOP_BOUND_S)
        assert target_host.mounts_below(target_host.root) == []
    resumed_at = rig.record().progress_of(MIGRATE).bytes_done
    await rig.start()
    settled = await rig.settled(timeout_s=600)

    assert settled.result is CommandResult.success, settled.message
    assert resumed_at > 0
    prepared = rig.record().progress_of(FORMAT).resume["prepared"]
    assert isinstance(prepared, dict)
    boot_target(
        devices, source.firmware, PreparedTarget.from_json(prepared), tmp_path / "boot.console"
    )


@pytest.fixture
def repeating_emulator(start_emulator: EmulatorFactory) -> EmulatorProcess:
    return start_emulator(command_delivery="repeat")


def test_kill_9_while_copying_and_configuring_then_restart_boots(
    tmp_path: Path,
    repeating_emulator: EmulatorProcess,
    target_host: TargetHost,
    mbr_bios_source: sourcesys.SourceSystem,
    disks: TargetDisks,
) -> None:
    """The real agent process, killed with SIGKILL, resumes by itself; the receiver and the
    ssh clients the killed agent left are ended, and the source is never left frozen."""
    source = mbr_bios_source
    emulator = repeating_emulator
    certkey = make_cert_key(tmp_path / "tls")
    with target_host.authorized_keys.open("a") as keys:
        keys.write(ssh_public_key(certkey.private_key, tmp_path) + "\n")
    agent = AgentProcess(
        emulator,
        tmp_path / "agent",
        settings={
            "SMSAGENT_SOURCE_ROOT": str(source.root),
            "SMSAGENT_TARGET_LAYOUT": "task",
            "SMSAGENT_TARGET_ROOT": str(target_host.root),
        },
    ).start()
    try:
        state = emulator.wait_for(lambda s: s["sources"], timeout_s=30)
        devices, layout = _layout(source, disks, target_host.ip)
        task_id = emulator.create_task(
            state[0]["id"], migration_ip=target_host.ip, target_server=layout
        )
        # The agent registered this host, not the test system it migrates: the console's check
        # of the target disks against the registered ones does not apply, so the type is set
        # after the task is made.
        emulator.patch_task(task_id, type="MIGRATE_BLOCK")
        emulator.set_cert_key(task_id, **certkey.fields())

        # MIGRATE: killed as soon as its receiver runs on the target.
        agent.kill_on("block_receiver_started", lambda e: True)
        emulator.action(task_id, "start")
        assert agent.wait_exit(timeout_s=300) == -9
        agent.restart()
        # CONFIGURE: killed while the initramfs is being built on the target.
        agent.kill_on("configure_command", lambda e: "update-initramfs" in str(e.get("argv")))
        assert agent.wait_exit(timeout_s=600) == -9
        agent.restart()
        done = emulator.wait_for(
            lambda s: [r for r in emulator.results() if r.get("task_id") == task_id],
            timeout_s=600,
        )
        assert [(r["command_name"], r["result"]) for r in done] == [("START", "success")]
        agent.terminate()
    finally:
        agent.stop()
    record = json.loads((agent.state_dir / "task.json").read_text())
    prepared = record["stages"][FORMAT]["resume"]["prepared"]
    assert target_host.mounts_below(target_host.root) == []
    target_host.wait_quiet(timeout_s=15)  # no receiver left on the target
    boot_target(
        devices, source.firmware, PreparedTarget.from_json(prepared), tmp_path / "boot.console"
    )
