"""The target layout a new task stores, filled in from its source server as the console does (pure).

The console's CreateTask form starts from what the source registered: one target disk per source
disk with the same partition style, partitions, file systems and mount points, the same volume
groups and btrfs file systems. The emulator does the same when CreateTask gives no
`target_server.disks`, and completes given disks from the source disk each pairs with.

Rules:
- a given field always wins; a field a given disk lacks comes from its source disk, paired by
  `relation_name` when the disk names one, else by position (the console numbers its disks in the
  source's order, and the SDK's CreateTask disk has no `partition_style` or `relation_name`);
- a target disk's name defaults to the source disk's: the emulator cannot know the target's
  device names;
- a default size is the source disk's rounded up to whole GiB (EVS disks are sized so), and a
  given size smaller than the source disk's is refused for a block-level task;
- physical volumes keep the source's `name` (the partition they copy, which volume groups'
  `components` name) and `uuid` (what the source's fstab may name);
- `btrfs_list` holds the source's btrfs file system UUIDs: ShowTask serves it as `[str]`, while
  the SDK's CreateTask sends `BtrfsFileSystem` objects, which are reduced to their UUID (or name);
- the layout is taken once, at creation: a later disk-info report of the source changes no task.

Every refusal is a 400 naming the field, like the emulator's other validation errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Optional

from pydantic import ValidationError

from smsagent.api.models import TaskTargetServer, VolumeGroups
from smsagent.emulator.errors import from_validation, invalid
from smsagent.emulator.store import Doc

GIB: Final = 1024**3
FIELD: Final = "target_server"
# What a target disk and its physical volumes copy from the source's registration.
_DISK_FIELDS: Final = ("partition_style", "device_use", "os_disk", "used_size")
_VOLUME_FIELDS: Final = (
    "name",
    "index",
    "device_use",
    "file_system",
    "mount_point",
    "size",
    "used_size",
    "uuid",
)
_GROUP_FIELDS: Final = ("name", "components", "size", "free_size")
_LOGICAL_FIELDS: Final = ("name", "size", "file_system", "mount_point", "device_use", "used_size")


def target_server(
    given: Optional[Mapping[str, Any]], source: Doc, *, block_level: bool = False
) -> Optional[dict[str, Any]]:
    """The `target_server` a task created for `source` stores.

    Args:
        given: CreateTask's `target_server`, as the console sent it (None when absent).
        source: the stored source server (its registered `disks`, `volume_groups`, `btrfs_list`).
        block_level: the task copies blocks (MIGRATE_BLOCK): a target disk must be at least as
            large as its source disk. A file-level task may shrink partitions to what the data
            needs, so a smaller disk is the agent's to check against the layout.

    Raises:
        ApiError: 400 naming the field of `given` that is invalid.
    """
    target = dict(given or {})
    if target.get("btrfs_list") is not None:
        target["btrfs_list"] = _btrfs_ids(target["btrfs_list"], f"{FIELD}.btrfs_list")
    target = _validated(target)
    source_disks: list[Doc] = list(source.get("disks") or [])
    if target.get("disks"):
        target["disks"] = _completed(target["disks"], source_disks, block_level)
    elif source_disks:
        target["disks"] = [default_disk(disk) for disk in source_disks]
    if target.get("volume_groups") is None and source.get("volume_groups") is not None:
        target["volume_groups"] = [default_volume_group(vg) for vg in source["volume_groups"]]
    if target.get("btrfs_list") is None and source.get("btrfs_list") is not None:
        target["btrfs_list"] = [
            ident for fs in source["btrfs_list"] if (ident := _btrfs_id(fs)) is not None
        ]
    return target or None


def default_disk(source_disk: Mapping[str, Any]) -> dict[str, Any]:
    """The target disk the console proposes for one registered source disk."""
    disk: dict[str, Any] = {
        "name": source_disk.get("name"),
        "relation_name": source_disk.get("name"),
        "size": evs_size(int(source_disk.get("size") or 0)),
        "physical_volumes": [
            _picked(volume, _VOLUME_FIELDS) for volume in source_disk.get("physical_volumes") or []
        ],
    }
    disk.update(_picked(source_disk, _DISK_FIELDS))
    return {key: value for key, value in disk.items() if value is not None}


def default_volume_group(group: Mapping[str, Any]) -> dict[str, Any]:
    """A registered volume group with its logical volumes, as the target's."""
    made = _picked(group, _GROUP_FIELDS)
    made["logical_volumes"] = [
        _picked(volume, _LOGICAL_FIELDS) for volume in group.get("logical_volumes") or []
    ]
    return made


def evs_size(size: int) -> int:
    """`size` rounded up to whole GiB, the unit EVS disks come in."""
    return -(-size // GIB) * GIB


def _validated(target: dict[str, Any]) -> dict[str, Any]:
    try:
        checked = TaskTargetServer.model_validate(target).to_wire()
    except ValidationError as exc:
        raise from_validation(exc, prefix=FIELD) from exc
    # TaskTargetServer keeps volume groups as open objects; their parts must still be numbers
    # and strings, or a later ShowTask (and the agent's layout) would trip over them.
    for i, group in enumerate(checked.get("volume_groups") or []):
        try:
            VolumeGroups.model_validate(group)
        except ValidationError as exc:
            raise from_validation(exc, prefix=f"{FIELD}.volume_groups[{i}]") from exc
    return checked


def _completed(
    disks: Sequence[dict[str, Any]], source_disks: Sequence[Doc], block_level: bool
) -> list[dict[str, Any]]:
    """Given disks, each completed from its source disk; 400 for an impossible pairing or size."""
    by_name = {str(disk.get("name")): disk for disk in source_disks}
    paired: dict[str, int] = {}
    made = []
    for i, disk in enumerate(disks):
        where = f"{FIELD}.disks[{i}]"
        source_disk = _pair(disk, i, by_name, source_disks, f"{where}.relation_name")
        if source_disk is not None:
            name = str(source_disk.get("name"))
            if name in paired:
                raise invalid(
                    f"{where}.relation_name",
                    f"source disk {name} is already paired with disks[{paired[name]}]",
                )
            paired[name] = i
            disk = {**default_disk(source_disk), **disk}
            if block_level:
                _check_size(disk, source_disk, f"{where}.size")
        for field in ("name", "size"):
            if not disk.get(field):
                raise invalid(f"{where}.{field}", "required for a disk no source disk pairs with")
        made.append(disk)
    names = [str(disk["name"]) for disk in made]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise invalid(f"{FIELD}.disks[{i}].name", f"{name} names two target disks")
    return made


def _pair(
    disk: Mapping[str, Any],
    position: int,
    by_name: Mapping[str, Doc],
    source_disks: Sequence[Doc],
    where: str,
) -> Optional[Doc]:
    relation = disk.get("relation_name")
    if relation:
        if relation not in by_name:
            raise invalid(where, f"the source server has no disk {relation}")
        return by_name[relation]
    return source_disks[position] if position < len(source_disks) else None


def _check_size(disk: Mapping[str, Any], source_disk: Mapping[str, Any], where: str) -> None:
    size, least = int(disk.get("size") or 0), int(source_disk.get("size") or 0)
    if size < least:
        raise invalid(
            where,
            f"{size} bytes is smaller than source disk {source_disk.get('name')} ({least} bytes)",
        )


def _btrfs_ids(entries: Any, where: str) -> Any:
    """UUIDs (or names) of the btrfs file systems; anything else is left for validation."""
    if not isinstance(entries, list):
        return entries
    found = []
    for i, entry in enumerate(entries):
        ident = _btrfs_id(entry)
        if ident is None:
            raise invalid(f"{where}[{i}]", "a btrfs file system's UUID or name is required")
        found.append(ident)
    return found


def _btrfs_id(entry: Any) -> Optional[str]:
    if isinstance(entry, str):
        return entry or None
    if isinstance(entry, Mapping):
        ident = entry.get("uuid") or entry.get("name")
        return str(ident) if ident else None
    return None


def _picked(doc: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    return {field: doc[field] for field in fields if doc.get(field) is not None}
