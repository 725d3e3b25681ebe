"""The target's block devices as `lsblk` and LVM report them, and the checks a layout must pass
before anything is written (pure).

Nothing is written to a target disk unless every check passed for every disk of the task:
- the disk exists and is a whole disk (not a partition or a logical volume);
- it is at least as large as its layout needs;
- nothing on it is mounted or used as swap (the agent's own mounts below its target root were
  taken down before the check, so a restarted task is not refused by its own leftovers);
- it does not hold the target's running root file system;
- no LVM volume group on it reaches a disk the task does not name (wiping its part would break
  the rest of that group).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Optional

from smsagent.target.layout import TargetLayout

DISK_MISSING: Final = "SMS.6519"  # cannot find the disk
DISK_TOO_SMALL: Final = "SMSAGENT.TARGET_DISK_TOO_SMALL"
DISK_IN_USE: Final = "SMSAGENT.TARGET_DISK_IN_USE"
DISK_HOLDS_ROOT: Final = "SMSAGENT.TARGET_DISK_HOLDS_ROOT"
DISK_NOT_IN_TASK: Final = "SMSAGENT.TARGET_DISK_NOT_IN_TASK"
DISK_NOT_WHOLE: Final = "SMSAGENT.TARGET_DISK_NOT_WHOLE"

LSBLK_COLUMNS: Final = "NAME,TYPE,SIZE,MOUNTPOINT,FSTYPE,RO"
WHOLE_DISK_TYPES: Final = frozenset({"disk", "loop"})
SWAP_MOUNT: Final = "[SWAP]"


@dataclass(frozen=True)
class BlockNode:
    """One device of `lsblk`'s tree (`-p`: names are paths)."""

    path: str
    kind: str
    size: int
    mount_point: Optional[str]
    fstype: Optional[str]
    children: tuple[BlockNode, ...] = ()

    def walk(self) -> Iterator[BlockNode]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class TargetDevices:
    """What the target has: its block devices and which LVM group each physical volume is in."""

    roots: tuple[BlockNode, ...]
    pv_groups: Mapping[str, str] = field(default_factory=dict)
    root_source: Optional[str] = None

    def find(self, path: str) -> Optional[BlockNode]:
        return next((n for r in self.roots for n in r.walk() if n.path == path), None)


@dataclass(frozen=True)
class Refusal:
    """Why one disk cannot be laid out; `code` is the SMS-style code reported."""

    code: str
    disk: str
    reason: str

    def message(self) -> str:
        return f"target disk {self.disk}: {self.reason}"


def parse_lsblk(text: str) -> tuple[BlockNode, ...]:
    """`lsblk -J -b -p -o NAME,TYPE,SIZE,MOUNTPOINT,FSTYPE,RO` → its tree.

    Raises:
        ValueError: not lsblk's JSON.
    """
    try:
        data = json.loads(text)
        return tuple(_node(raw) for raw in data["blockdevices"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"lsblk's output cannot be read: {exc}") from exc


def _node(raw: Mapping[str, Any]) -> BlockNode:
    mount = raw.get("mountpoint")
    if mount is None and raw.get("mountpoints"):
        mount = next((m for m in raw["mountpoints"] if m), None)
    return BlockNode(
        path=str(raw["name"]),
        kind=str(raw.get("type") or ""),
        size=int(raw.get("size") or 0),
        mount_point=str(mount) if mount else None,
        fstype=str(raw["fstype"]) if raw.get("fstype") else None,
        children=tuple(_node(child) for child in raw.get("children") or ()),
    )


def parse_pvs(text: str) -> dict[str, str]:
    """`pvs --reportformat json -o pv_name,vg_name` → {physical volume: its group}."""
    if not text.strip():
        return {}
    try:
        reports = json.loads(text)["report"]
        rows = [row for report in reports for row in report.get("pv", [])]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"pvs' output cannot be read: {exc}") from exc
    return {str(r["pv_name"]): str(r["vg_name"]) for r in rows if r.get("vg_name")}


def check_disks(layout: TargetLayout, devices: TargetDevices, *, own_root: str) -> list[Refusal]:
    """Every reason the layout must not be written to the target's disks (empty: go ahead).

    Args:
        own_root: the directory the agent mounts the target tree at; mounts at or below it are
            the agent's own and are not a reason to refuse.
    """
    refusals: list[Refusal] = []
    named = set(layout.device_names())
    for disk in layout.disks:
        node = devices.find(disk.device)
        if node is None:
            refusals.append(Refusal(DISK_MISSING, disk.device, "the target has no such disk"))
            continue
        if node.kind not in WHOLE_DISK_TYPES:
            reason = f"it is a {node.kind or 'device'}, not a whole disk"
            refusals.append(Refusal(DISK_NOT_WHOLE, disk.device, reason))
            continue
        if node.size < disk.bytes_needed:
            reason = f"it has {_mib(node.size)} but its layout needs {_mib(disk.bytes_needed)}"
            refusals.append(Refusal(DISK_TOO_SMALL, disk.device, reason))
        refusals.extend(_usage(node, disk.device, devices, own_root))
        refusals.extend(_foreign_groups(node, disk.device, devices, named))
    return refusals


def _usage(node: BlockNode, disk: str, devices: TargetDevices, own_root: str) -> Iterator[Refusal]:
    root_source = devices.root_source
    for part in node.walk():
        if part.mount_point == "/" or (root_source and part.path == root_source):
            yield Refusal(DISK_HOLDS_ROOT, disk, f"{part.path} is the target's running root")
            return
    for part in node.walk():
        mount = part.mount_point
        if mount == SWAP_MOUNT:
            yield Refusal(DISK_IN_USE, disk, f"{part.path} is in use as swap")
        elif mount and not _within(mount, own_root):
            yield Refusal(DISK_IN_USE, disk, f"{part.path} is mounted at {mount}")


def _foreign_groups(
    node: BlockNode, disk: str, devices: TargetDevices, named: set[str]
) -> Iterator[Refusal]:
    groups = {devices.pv_groups[p.path] for p in node.walk() if p.path in devices.pv_groups}
    for group in sorted(groups):
        members = [pv for pv, vg in devices.pv_groups.items() if vg == group]
        outside = sorted(pv for pv in members if _disk_of(pv, devices) not in named)
        if outside:
            reason = (
                f"its LVM volume group {group} also lives on {', '.join(outside)}, "
                "which the task does not name"
            )
            yield Refusal(DISK_NOT_IN_TASK, disk, reason)


def _disk_of(path: str, devices: TargetDevices) -> Optional[str]:
    for root in devices.roots:
        if any(n.path == path for n in root.walk()):
            return root.path
    return None


def mounted_below(devices: TargetDevices, directory: str) -> list[str]:
    """Mount points at or below `directory` (deepest first), to take down before a check."""
    found = {
        n.mount_point
        for r in devices.roots
        for n in r.walk()
        if n.mount_point and _within(n.mount_point, directory)
    }
    return sorted(found, key=lambda m: (-m.count("/"), m))


def _within(path: str, directory: str) -> bool:
    path = posixpath.normpath(path)
    directory = posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def refusal_message(refusals: Sequence[Refusal]) -> str:
    return "; ".join(r.message() for r in refusals) + "; nothing was written to the target"


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"
