"""A whole-server migration for tests: a source system's layout as SMS would give it to a task.

The console lays the target out from the source's registered disks; here the source is a test
system on loop disks (not the host the agent registers as), so the test writes that layout
itself, naming the target's own devices, as a console user who picked the target disks would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from smsagent.target.prepared import PreparedTarget
from tests.support import qemuboot
from tests.support.blocktls import CertKey
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, migration_rig
from tests.support.sourcesys import SourceSystem, Volume
from tests.support.target import TargetHost
from tests.support.targetdisks import TargetDisks

MIB = 1024 * 1024
# Larger than the source's disk: the target is laid out like the source, the rest stays free.
EXTRA_MIB = 512


def target_server(
    source: SourceSystem, target_disks: Sequence[str], target_disk_bytes: int, ip: str
) -> dict[str, Any]:
    """CreateTask's `target_server` for migrating `source` onto `target_disks` (one per source
    disk, in order), each `target_disk_bytes` large."""
    if len(target_disks) != len(source.disks):
        raise ValueError(f"{len(source.disks)} source disks but {len(target_disks)} target disks")
    partitions = sorted(
        (v for v in source.volumes if v.kind == "partition"), key=lambda v: v.number or 0
    )
    disks = [
        {
            "name": target,
            "relation_name": None,
            "partition_style": "MBR" if source.table == "dos" else "GPT",
            "device_use": "BOOT" if index == 0 else "NORMAL",
            "os_disk": index == 0,
            "size": target_disk_bytes,
            "physical_volumes": [_physical_volume(v) for v in partitions if _on(v, disk)],
        }
        for index, (disk, target) in enumerate(zip(source.disks, target_disks))
    ]
    groups: dict[str, dict[str, Any]] = {}
    for volume in source.volumes:
        if volume.kind == "partition" and volume.fstype == "LVM2_member" and volume.vg:
            group = groups.setdefault(volume.vg, _group(volume.vg))
            group["components"] = ",".join(filter(None, [group["components"], volume.device]))
    for volume in source.volumes:
        if volume.kind == "lv" and volume.vg:
            lv_name = volume.name.split("/", 1)[-1]
            groups.setdefault(volume.vg, _group(volume.vg))["logical_volumes"].append(
                {
                    "name": lv_name,
                    "size": volume.size_bytes,
                    "file_system": _fstype(volume),
                    "mount_point": _mount_point(volume),
                }
            )
    server: dict[str, Any] = {"name": "target", "ip": ip, "disks": disks}
    server["volume_groups"] = list(groups.values())
    return server


def _on(volume: Volume, disk: str) -> bool:
    return volume.device.startswith(disk)


def _group(name: str) -> dict[str, Any]:
    return {"name": name, "components": "", "logical_volumes": []}


def _physical_volume(volume: Volume) -> dict[str, Any]:
    lvm = volume.fstype == "LVM2_member"
    return {
        "name": volume.device,
        "index": (volume.number or 1) - 1,
        "device_use": "VOLUME_GROUP" if lvm else "NORMAL",
        "file_system": _fstype(volume),
        "mount_point": _mount_point(volume),
        "size": volume.size_bytes,
        "uuid": None if lvm else volume.uuid,
    }


def _fstype(volume: Volume) -> str:
    return volume.fstype or ""


def _mount_point(volume: Volume) -> str:
    return "" if volume.mount_point in (None, "[SWAP]") else str(volume.mount_point)


@dataclass
class Migration:
    """A whole-server migration under test: the rig, the source system, the target devices."""

    rig: MigrationRig
    source: SourceSystem
    devices: list[str]
    format_stage: str

    def prepared(self) -> PreparedTarget:
        resume = self.rig.record().progress_of(self.format_stage).resume["prepared"]
        assert isinstance(resume, dict)
        return PreparedTarget.from_json(resume)

    def boot(self, log: Path, *, snapshot: bool = False) -> qemuboot.BootResult:
        """Boot the target's disks (unmounted by the agent) and check what a user would."""
        assert self.rig.target.mounts_below(self.rig.target.root) == []
        return boot_target(
            self.devices, self.source.firmware, self.prepared(), log, snapshot=snapshot
        )


@asynccontextmanager
async def whole_server_migration(
    workdir: Path,
    emulator: EmulatorProcess,
    target: TargetHost,
    source: SourceSystem,
    disks: TargetDisks,
    *,
    block: Optional[CertKey] = None,
) -> AsyncIterator[Migration]:
    """A task migrating `source` onto new target disks `EXTRA_MIB` larger than its own: file
    level, or block level with the task's TLS material `block`."""
    size_mib = source.disk_size_bytes // MIB + EXTRA_MIB
    devices = [disks.add(size_mib) for _ in source.disks]
    async with migration_rig(
        workdir, emulator, target, source.root, target_layout="task", stop_grace=5.0
    ) as rig:
        server = target_server(source, devices, size_mib * MIB, target.ip)
        if block is None:
            rig.create_task(target_server=server)
        else:
            rig.create_block_task(block, target_server=server)
        stage = "FORMAT_DISK_LINUX_FILE" if block is None else "FORMAT_DISK_LINUX_BLOCK"
        yield Migration(rig, source, devices, stage)


def boot_target(
    devices: list[str],
    firmware: str,
    prepared: PreparedTarget,
    log: Path,
    *,
    snapshot: bool = False,
) -> qemuboot.BootResult:
    """Boot the target's disks and check what a user would: the system running, nothing
    failed, `/` and every mount and swap by the prepared UUIDs, smsagent masked; with
    `snapshot` the boot's writes go to a scratch layer and the disks stay as they are."""
    result = qemuboot.boot(devices, firmware, log_path=log, snapshot=snapshot)
    failure = qemuboot.failure_message(result)
    checks = result.checks
    assert result.reason == "done", failure
    assert checks.system == "running", failure
    assert checks.failed == [], failure
    assert checks.findmnt_verify_rc == 0, failure
    new_uuids = {v.mount_point: v.uuid for v in prepared.volumes if v.mount_point}
    assert checks.root.get("uuid") == new_uuids["/"], failure
    for mount_point, mounted in checks.mounts.items():
        assert mounted.get("uuid") == new_uuids[mount_point], (mount_point, failure)
    assert set(checks.mounts) >= set(new_uuids) - {"/"}, failure
    swap_uuids = {v.uuid for v in prepared.volumes if v.is_swap}
    assert {s.get("uuid") for s in checks.swaps} == swap_uuids, failure
    assert checks.smsagent.get("active") != "active", failure
    assert checks.smsagent.get("enabled") == "masked", failure
    return result
