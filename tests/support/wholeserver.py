"""A whole-server migration for tests: a source system's layout as SMS would give it to a task.

The console lays the target out from the source's registered disks; here the source is a test
system on loop disks (not the host the agent registers as), so the test writes that layout
itself, naming the target's own devices, as a console user who picked the target disks would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.sourcesys import SourceSystem, Volume

MIB = 1024 * 1024


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
