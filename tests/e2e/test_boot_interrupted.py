"""A migration interrupted in every stage still ends in a target that boots.

STOP (the console's Stop) and `kill -9` of the agent land in FORMAT_DISK_LINUX_FILE, in
MIGRATE_LINUX_FILE and in CONFIGURE_LINUX_FILE; each time START (or the agent's own restart)
resumes, and at the end the target disk boots in qemu with the same checks as an uninterrupted
migration.
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
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.migrate import MigrationRig, migration_rig, stop_in
from tests.support.target import TargetHost
from tests.support.targetdisks import MIB, TargetDisks
from tests.support.wholeserver import EXTRA_MIB, boot_target, target_server

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]

FORMAT = "FORMAT_DISK_LINUX_FILE"
MIGRATE = "MIGRATE_LINUX_FILE"
CONFIGURE = "CONFIGURE_LINUX_FILE"
# A STOP must not wait for a long remote command (an initramfs takes 15 s here).
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
    source = mbr_bios_source
    async with migration_rig(
        tmp_path / "agent", emulator, target_host, source.root, target_layout="task"
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
    rig.create_task(target_server=layout)

    for stage in (FORMAT, MIGRATE, CONFIGURE):
        await rig.start()
        await stop_in(rig, stage, MIGRATE, STOP_BOUND_S)
        assert target_host.mounts_below(target_host.root) == []  # left clean when stopped
    await rig.start()
    settled = await rig.settled(timeout_s=600)

    assert settled.result is CommandResult.success, settled.message
    prepared = rig.record().progress_of(FORMAT).resume["prepared"]
    assert isinstance(prepared, dict)
    boot_target(
        devices, source.firmware, PreparedTarget.from_json(prepared), tmp_path / "boot.console"
    )


@pytest.fixture
def repeating_emulator(start_emulator: EmulatorFactory) -> EmulatorProcess:
    """An emulator that offers each command at every poll until its result arrives."""
    return start_emulator(command_delivery="repeat")


def _progress_in(emulator: EmulatorProcess, task_id: str, stage: str) -> bool:
    return any(
        r.get("subtask_name") == stage and (r.get("replicatesize") or 0) > 0
        for r in emulator.progress(task_id)
    )


def test_kill_9_in_each_stage_then_restart_boots(
    tmp_path: Path,
    repeating_emulator: EmulatorProcess,
    target_host: TargetHost,
    mbr_bios_source: sourcesys.SourceSystem,
    disks: TargetDisks,
) -> None:
    """The real agent process, killed with SIGKILL in each stage, resumes by itself."""
    source = mbr_bios_source
    emulator = repeating_emulator
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
        emulator.set_cert_key(task_id, private_key=target_host.client_private_key_pem)

        # FORMAT: killed while it makes the file systems.
        agent.kill_on("target_prepare_step", lambda e: str(e.get("step", "")).startswith("ext4"))
        emulator.action(task_id, "start")
        assert agent.wait_exit(timeout_s=120) == -9
        agent.restart()
        # MIGRATE: killed once data is flowing.
        emulator.wait_for(lambda s: _progress_in(emulator, task_id, MIGRATE), timeout_s=300)
        assert agent.kill9() == -9
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
    boot_target(
        devices, source.firmware, PreparedTarget.from_json(prepared), tmp_path / "boot.console"
    )
