"""The target's disks as the task lays them out (spec §3.9 `TaskTargetServer`), checked once (pure).

SMS describes the target like the source: disks with their partitions (`physical_volumes`), volume
groups with their logical volumes, and btrfs file systems. `parse_layout` turns that into a
`TargetLayout` the prepare and configure stages can act on without looking at the wire model again,
and refuses a layout it cannot build with a `LayoutError` naming the field.

Things the wire model does not say are decided here:
- the boot mode: UEFI when a vfat volume is mounted at `/boot/efi` or `/efi` (the ESP), else BIOS;
- what a partition is for: the ESP, a BIOS boot partition (a small GPT partition with no file
  system, where GRUB's core image goes), an LVM physical volume, swap, or a file system;
- the boot disk: the one marked `BOOT` or `os_disk`, else the first;
- sizes: each partition gets its size rounded down to whole MiB (sfdisk aligns partitions to MiB,
  and a source whose last partition runs to the last sector would otherwise never fit a target
  of the same size; a file-level copy needs room for the data, not the source's exact size);
- an MBR source's extended partition (lsblk reports it as a 1 KiB partition with no file system)
  is the container of the logical ones, not a volume: it is skipped, and made again when the
  target needs more than four partitions;
- a disk without a partition table whose one volume is the disk itself (a whole-disk LVM PV or
  file system, `physical_volumes[0].name` = the disk's name or its `relation_name`) stays so on
  the target (`Disk.whole`), as the source's LVM filters, fstab and resizing habits expect; only
  on the boot disk it becomes partition 1 of an MBR table, since GRUB needs the table's gap;
- btrfs: a btrfs partition is made as one file system mounted where the source mounts it (its
  first subvolume mount when only subvolumes are mounted); `btrfs_list` carries the source's
  btrfs UUIDs (SMS's emulator fills it so), and its subvolumes are a later step.
"""

from __future__ import annotations

import dataclasses
import enum
import posixpath
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Optional

from smsagent.api.models import TargetDisk, TargetPhysicalVolume, TaskTargetServer

MIB: Final = 1024 * 1024
# A BIOS boot partition holds GRUB's core image: 1 MiB is usual, anything above 8 MiB is data.
BIOS_BOOT_MAX_BYTES: Final = 8 * MIB
# Room sfdisk needs besides the partitions on a GPT disk: the first MiB (alignment, header) and the
# backup GPT at the end (33 sectors, a whole MiB once partitions are whole MiB). MBR needs only the
# first MiB: its partitions may run to the last sector.
TABLE_OVERHEAD_BYTES: Final = 2 * MIB
MBR_OVERHEAD_BYTES: Final = MIB
# LVM's defaults: data starts 1 MiB into a PV, and space is handed out in 4 MiB extents.
LVM_PE_START_BYTES: Final = MIB
LVM_EXTENT_BYTES: Final = 4 * MIB
# lsblk shows an MBR extended partition as 1 KiB; anything up to a MiB without a file system on MBR
# is that container.
EXTENDED_MAX_BYTES: Final = MIB
ESP_MOUNT_POINTS: Final = frozenset({"/boot/efi", "/efi"})
FILE_SYSTEMS: Final = frozenset({"ext2", "ext3", "ext4", "xfs", "vfat", "btrfs"})
SWAP: Final = "swap"
LVM_MEMBER: Final = "LVM2_member"
MBR_PRIMARY_MAX: Final = 4
WHOLE_DISK: Final = 0  # the Partition number of a volume that is the whole disk
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_DEVICE_RE: Final = re.compile(r"^/dev/[A-Za-z0-9/_.:-]{1,200}$")


class LayoutError(ValueError):
    """The task's target layout cannot be built; the message names the field."""


class BootMode(str, enum.Enum):
    BIOS = "BIOS"
    UEFI = "UEFI"


class PartitionStyle(str, enum.Enum):
    MBR = "MBR"
    GPT = "GPT"


class VolumeKind(str, enum.Enum):
    """What a partition holds."""

    FILESYSTEM = "FILESYSTEM"
    ESP = "ESP"
    SWAP = "SWAP"
    BIOS_BOOT = "BIOS_BOOT"
    LVM_PV = "LVM_PV"


# What a whole disk can hold: an ESP or a BIOS boot partition must be a partition.
WHOLE_DISK_KINDS: Final = frozenset({VolumeKind.FILESYSTEM, VolumeKind.SWAP, VolumeKind.LVM_PV})


@dataclass(frozen=True)
class FileSystemSpec:
    """A file system (or swap) to make: its type, where it is mounted, and the source's UUID.

    `source_uuid` is the UUID the source's copy of this file system has (what its `/etc/fstab`
    may name); the target's new UUID is only known once it was made.
    """

    fstype: str
    mount_point: Optional[str]
    source_uuid: Optional[str] = None

    @property
    def is_swap(self) -> bool:
        return self.fstype == SWAP


@dataclass(frozen=True)
class Partition:
    """One partition to create: `number` as the kernel names it (`/dev/vdb2` is number 2).

    Number 0 is a whole-disk volume (`Disk.whole`): its path is the disk itself. `size` is whole
    MiB. `source_name` is the task's name for the volume (the source's partition, `/dev/sda5`),
    which volume groups' `components` may name.
    """

    disk: str
    number: int
    size: int
    kind: VolumeKind
    fs: Optional[FileSystemSpec] = None
    logical: bool = False  # an MBR logical partition, inside the extended one
    source_name: Optional[str] = None

    @property
    def path(self) -> str:
        return self.disk if self.number == WHOLE_DISK else partition_path(self.disk, self.number)


@dataclass(frozen=True)
class Disk:
    """One target disk and the partitions to lay out on it.

    A disk with `whole` gets no partition table: `partitions` is empty and the volume is the disk.
    """

    device: str
    partition_style: PartitionStyle
    size: int
    partitions: tuple[Partition, ...]
    relation_name: Optional[str] = None
    is_boot: bool = False
    whole: Optional[Partition] = None

    @property
    def bytes_needed(self) -> int:
        if self.whole is not None:
            return self.whole.size
        logical = sum(1 for p in self.partitions if p.logical)  # an EBR before each logical one
        sizes = sum(_round_up_mib(p.size) for p in self.partitions)
        return sizes + _overhead(self.partition_style) + MIB * logical

    @property
    def volumes(self) -> tuple[Partition, ...]:
        """The partitions, or the whole-disk volume."""
        return (self.whole,) if self.whole is not None else self.partitions


@dataclass(frozen=True)
class LogicalVolume:
    volume_group: str
    name: str
    size: int
    fs: Optional[FileSystemSpec]

    @property
    def path(self) -> str:
        return f"/dev/{self.volume_group}/{self.name}"


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    members: tuple[str, ...]  # partition paths
    logical_volumes: tuple[LogicalVolume, ...]

    @property
    def bytes_needed(self) -> int:
        # LVM allocates in 4 MiB extents by default: round each LV up to one.
        extent = LVM_EXTENT_BYTES
        return sum(-(-lv.size // extent) * extent for lv in self.logical_volumes)


@dataclass(frozen=True)
class Volume:
    """A file system or swap the target will hold, on a partition or a logical volume.

    `source_name` is the source's name for it: its partition (`/dev/sda2`) or `vg/lv`.
    """

    device: str
    fs: FileSystemSpec
    source_name: Optional[str] = None


@dataclass(frozen=True)
class TargetLayout:
    """Everything the prepare stage makes, in the order it makes it."""

    disks: tuple[Disk, ...]
    volume_groups: tuple[VolumeGroup, ...]
    boot_mode: BootMode

    @property
    def boot_disk(self) -> Disk:
        return next((d for d in self.disks if d.is_boot), self.disks[0])

    def volumes(self) -> list[Volume]:
        """Every file system and swap, partitions first, then logical volumes."""
        found = [
            Volume(p.path, p.fs, p.source_name)
            for d in self.disks
            for p in d.volumes
            if p.fs is not None
        ]
        found += [
            Volume(lv.path, lv.fs, f"{vg.name}/{lv.name}")
            for vg in self.volume_groups
            for lv in vg.logical_volumes
            if lv.fs is not None
        ]
        return found

    def mounts(self) -> list[Volume]:
        """The file systems with a mount point, parents before children (`/` first)."""
        mounted = [v for v in self.volumes() if v.fs.mount_point and not v.fs.is_swap]
        return sorted(mounted, key=lambda v: _mount_depth(v.fs.mount_point or "/"))

    def device_names(self) -> list[str]:
        return [d.device for d in self.disks]


def partition_path(disk: str, number: int) -> str:
    """`/dev/vdb` + 2 → `/dev/vdb2`; a disk name ending in a digit takes a `p` (`nvme0n1p2`)."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def parse_layout(target: Optional[TaskTargetServer]) -> TargetLayout:
    """The layout of the task's `target_server`.

    Raises:
        LayoutError: naming the field that makes the layout unbuildable.
    """
    if target is None or not target.disks:
        raise LayoutError("target_server.disks: the task lays out no target disk")
    boot_at = _boot_index(target.disks)
    disks = tuple(
        _disk(disk, f"target_server.disks[{i}]", i == boot_at)
        for i, disk in enumerate(target.disks)
    )
    _check_unique((d.device for d in disks), "target_server.disks[].name")
    groups = tuple(
        _volume_group(raw, f"target_server.volume_groups[{i}]", disks)
        for i, raw in enumerate(target.volume_groups or [])
    )
    _check_unique((vg.name for vg in groups), "target_server.volume_groups[].name")
    layout = TargetLayout(disks, groups, _boot_mode(disks, groups))
    _check_mounts(layout)
    _check_boot(layout)
    return layout


def _boot_index(disks: Sequence[TargetDisk]) -> int:
    """The disk marked BOOT or `os_disk`; the first when none is."""
    for i, raw in enumerate(disks):
        if (raw.device_use or "").upper() == "BOOT" or raw.os_disk:
            return i
    return 0


def _disk(raw: TargetDisk, where: str, is_boot: bool) -> Disk:
    device = (raw.name or "").strip()
    if not _DEVICE_RE.match(device):
        raise LayoutError(f"{where}.name: {device!r} is not a device path under /dev")
    style_text = (raw.partition_style or "MBR").upper()
    try:
        style = PartitionStyle(style_text)
    except ValueError:
        raise LayoutError(
            f"{where}.partition_style: {raw.partition_style!r} is not MBR or GPT"
        ) from None
    size = raw.size or 0
    if size <= 0:
        raise LayoutError(f"{where}.size: {device} has no size")
    volumes = [
        (f"{where}.physical_volumes[{i}]", pv)
        for i, pv in sorted(
            enumerate(raw.physical_volumes or []),
            key=lambda item: (_index(item[1], item[0]), item[0]),
        )
    ]
    whole_source = _is_whole_disk(raw, volumes)
    whole = None
    if whole_source and not is_boot:
        whole = _whole_disk(raw, device, style, volumes, where)
    if whole is not None:
        return Disk(device, style, size, (), raw.relation_name, is_boot, whole)
    partitions = _partitions(device, style, volumes)
    if whole_source:
        # The source's volume was the whole disk; as partition 1 it gives up the table's room.
        room = (size - _overhead(style)) // MIB * MIB
        partitions = (dataclasses.replace(partitions[0], size=min(partitions[0].size, room)),)
    disk = Disk(device, style, size, partitions, raw.relation_name, is_boot)
    if disk.bytes_needed > size:
        raise LayoutError(
            f"{where}.size: the partitions of {device} need {_mib(disk.bytes_needed)} "
            f"but the disk has {_mib(size)}"
        )
    return disk


def _index(pv: TargetPhysicalVolume, position: int) -> int:
    return pv.index if pv.index is not None else position


def _whole_disk(
    raw: TargetDisk,
    device: str,
    style: PartitionStyle,
    volumes: Sequence[tuple[str, TargetPhysicalVolume]],
    where: str,
) -> Optional[Partition]:
    """The volume that is the whole disk, or None when the disk is to be partitioned.

    ESPs and BIOS boot partitions are partitions by nature, so they never are.
    """
    at, pv = volumes[0]
    volume = _partition(device, WHOLE_DISK, pv, at, style, logical=False)
    if volume.kind not in WHOLE_DISK_KINDS:
        return None
    size = raw.size or 0
    if (pv.size or 0) > size:
        raise LayoutError(
            f"{where}.size: {device} is smaller ({_mib(size)}) than its whole-disk volume "
            f"({_mib(pv.size or 0)})"
        )
    return Partition(device, WHOLE_DISK, size, volume.kind, volume.fs, False, volume.source_name)


def _is_whole_disk(raw: TargetDisk, volumes: Sequence[tuple[str, TargetPhysicalVolume]]) -> bool:
    """Whether the source's volume was the disk itself: no partition style given, and its one
    volume named after the disk (the target's name or the source disk it pairs with)."""
    if raw.partition_style or len(volumes) != 1:
        return False
    names = {n.strip() for n in (raw.name, raw.relation_name) if n}
    return (volumes[0][1].name or "").strip() in names


def _overhead(style: PartitionStyle) -> int:
    return MBR_OVERHEAD_BYTES if style is PartitionStyle.MBR else TABLE_OVERHEAD_BYTES


def _is_extended(style: PartitionStyle, pv: TargetPhysicalVolume) -> bool:
    """The MBR extended partition that holds the logical ones (not a volume of its own)."""
    return (
        style is PartitionStyle.MBR
        and not (pv.file_system or "").strip()
        and (pv.device_use or "").upper() != "VOLUME_GROUP"
        and 0 < (pv.size or 0) <= EXTENDED_MAX_BYTES
    )


def _partitions(
    device: str,
    style: PartitionStyle,
    all_volumes: Sequence[tuple[str, TargetPhysicalVolume]],
) -> tuple[Partition, ...]:
    volumes = [(where, pv) for where, pv in all_volumes if not _is_extended(style, pv)]
    extended = style is PartitionStyle.MBR and len(volumes) > MBR_PRIMARY_MAX
    made: list[Partition] = []
    for position, (where, pv) in enumerate(volumes):
        # MBR with more than four: three primaries, the extended one as 4, logical ones from 5.
        logical = extended and position >= MBR_PRIMARY_MAX - 1
        number = position + (2 if logical else 1)
        made.append(_partition(device, number, pv, where, style, logical))
    return tuple(made)


def _partition(
    device: str,
    number: int,
    pv: TargetPhysicalVolume,
    where: str,
    style: PartitionStyle,
    logical: bool,
) -> Partition:
    given = pv.size or 0
    if given <= 0:
        raise LayoutError(f"{where}.size: partition {number} of {device} has no size")
    size = given // MIB * MIB
    fstype = (pv.file_system or "").strip()
    use = (pv.device_use or "").upper()
    mount_point = _mount_point(pv.mount_point, f"{where}.mount_point")
    name = (pv.name or "").strip() or None
    kind: VolumeKind
    fs: Optional[FileSystemSpec] = None
    if fstype == LVM_MEMBER or use == "VOLUME_GROUP":
        kind = VolumeKind.LVM_PV
    elif not fstype:
        if not (style is PartitionStyle.GPT and given <= BIOS_BOOT_MAX_BYTES):
            raise LayoutError(
                f"{where}.file_system: partition {number} of {device} names no file system"
            )
        # Old tools started the first partition at sector 34: its BIOS boot partition is under
        # a MiB. GRUB's core image fits a MiB.
        kind, size = VolumeKind.BIOS_BOOT, max(size, MIB)
    else:
        fs = _file_system(fstype, mount_point, pv.uuid, f"{where}.file_system")
        if fs.is_swap:
            kind = VolumeKind.SWAP
        elif fstype == "vfat" and mount_point in ESP_MOUNT_POINTS:
            kind = VolumeKind.ESP
        else:
            kind = VolumeKind.FILESYSTEM
    if size <= 0:
        raise LayoutError(f"{where}.size: partition {number} of {device} is under 1 MiB")
    return Partition(device, number, size, kind, fs, logical, name)


def _file_system(
    fstype: str, mount_point: Optional[str], uuid: Optional[str], where: str
) -> FileSystemSpec:
    if fstype not in FILE_SYSTEMS and fstype != SWAP:
        known = ", ".join(sorted(FILE_SYSTEMS | {SWAP}))
        raise LayoutError(f"{where}: {fstype!r} cannot be made (known: {known})")
    if fstype != SWAP and mount_point is None:
        raise LayoutError(f"{where}: a {fstype} file system without a mount point cannot be copied")
    return FileSystemSpec(fstype, None if fstype == SWAP else mount_point, uuid or None)


def _mount_point(raw: Optional[str], where: str) -> Optional[str]:
    text = (raw or "").strip()
    if not text or text in ("[SWAP]", "none", "swap"):
        return None
    normal = posixpath.normpath(text)
    if not normal.startswith("/") or normal.startswith("//") or "\n" in normal:
        raise LayoutError(f"{where}: {raw!r} is not an absolute path")
    return normal


def _volume_group(raw: dict[str, Any], where: str, disks: Sequence[Disk]) -> VolumeGroup:
    name = str(raw.get("name") or "")
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise LayoutError(f"{where}.name: {name!r} is not a volume group name")
    members = _members(raw, where, name, disks)
    volumes: list[LogicalVolume] = []
    for i, lv in enumerate(raw.get("logical_volumes") or []):
        at = f"{where}.logical_volumes[{i}]"
        if not isinstance(lv, dict):
            raise LayoutError(f"{at}: not an object")
        lv_name = str(lv.get("name") or "")
        if not _NAME_RE.match(lv_name):
            raise LayoutError(f"{at}.name: {lv_name!r} is not a logical volume name")
        size = lv.get("size")
        if not isinstance(size, int) or size <= 0:
            raise LayoutError(f"{at}.size: {name}/{lv_name} has no size")
        fstype = str(lv.get("file_system") or "").strip()
        mount_point = _mount_point(lv.get("mount_point"), f"{at}.mount_point")
        fs = (
            _file_system(fstype, mount_point, lv.get("uuid"), f"{at}.file_system")
            if fstype
            else None
        )
        volumes.append(LogicalVolume(name, lv_name, size, fs))
    group = VolumeGroup(name, members, tuple(volumes))
    capacity = sum(_lvm_capacity(p.size) for d in disks for p in d.volumes if p.path in members)
    if group.bytes_needed > capacity:
        raise LayoutError(
            f"{where}.logical_volumes: {name}'s volumes need {_mib(group.bytes_needed)} "
            f"but its physical volumes hold {_mib(max(capacity, 0))}"
        )
    return group


def _members(raw: dict[str, Any], where: str, name: str, disks: Sequence[Disk]) -> tuple[str, ...]:
    """The partitions of group `name`.

    `components` lists the group's physical volumes by the source's names (`/dev/sda5`) or the
    target's; a target volume matches by its own path, by its name in the task (the source's
    partition, kept when the target renumbers), or by its number on the source disk its disk pairs
    with (`relation_name`). Without `components`, a lone group takes every PV.
    """
    components = {c.strip() for c in str(raw.get("components") or "").split(",") if c.strip()}
    # A renumbered partition (an MBR source's logical PV) keeps the source's name; its new number
    # on the source disk may be another partition's name, which must not match it.
    named = {p.source_name for d in disks for p in d.volumes if p.source_name}
    members = [
        p.path
        for d in disks
        for p in d.volumes
        if p.kind is VolumeKind.LVM_PV
        and (
            not components
            or p.path in components
            or p.source_name in components
            or _numbered_like(d, p, components, named)
        )
    ]
    if not members:
        raise LayoutError(f"{where}.components: no target partition is a physical volume of {name}")
    return tuple(members)


def _numbered_like(
    disk: Disk, volume: Partition, components: Collection[str], named: Collection[str]
) -> bool:
    """Whether `components` names the volume by its number on its disk's source disk."""
    if not disk.relation_name:
        return False
    source = (
        disk.relation_name
        if volume.number == WHOLE_DISK
        else partition_path(disk.relation_name, volume.number)
    )
    return source in components and (source == volume.source_name or source not in named)


def _lvm_capacity(size: int) -> int:
    """What LVM can allocate on a PV of `size` bytes: whole extents after the metadata."""
    return max(0, (size - LVM_PE_START_BYTES) // LVM_EXTENT_BYTES * LVM_EXTENT_BYTES)


def _boot_mode(disks: Sequence[Disk], groups: Sequence[VolumeGroup]) -> BootMode:
    if any(p.kind is VolumeKind.ESP for d in disks for p in d.partitions):
        return BootMode.UEFI
    if any(
        lv.fs is not None and lv.fs.fstype == "vfat" and lv.fs.mount_point in ESP_MOUNT_POINTS
        for vg in groups
        for lv in vg.logical_volumes
    ):
        raise LayoutError("target_server.volume_groups: an ESP on a logical volume cannot boot")
    return BootMode.BIOS


def _check_mounts(layout: TargetLayout) -> None:
    seen: dict[str, str] = {}
    for volume in layout.mounts():
        point = volume.fs.mount_point or ""
        if point in seen:
            raise LayoutError(
                f"target_server: mount_point {point!r} appears twice "
                f"({seen[point]} and {volume.device})"
            )
        seen[point] = volume.device
    if "/" not in seen:
        raise LayoutError("target_server.disks: no file system is mounted at '/'")


def _check_boot(layout: TargetLayout) -> None:
    disk = layout.boot_disk
    needs_bios_boot = (
        layout.boot_mode is BootMode.BIOS and disk.partition_style is PartitionStyle.GPT
    )
    if needs_bios_boot and not any(p.kind is VolumeKind.BIOS_BOOT for p in disk.partitions):
        raise LayoutError(
            f"target_server.disks: {disk.device} is GPT and boots by BIOS, so it needs a "
            "BIOS boot partition (a partition of at most 8 MiB with no file system)"
        )


def _check_unique(values: Iterable[str], field: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise LayoutError(f"target_server: {field} {value!r} appears twice")
        seen.add(value)


def _mount_depth(mount_point: str) -> tuple[int, str]:
    return (0 if mount_point == "/" else mount_point.rstrip("/").count("/"), mount_point)


def _round_up_mib(size: int) -> int:
    return -(-size // MIB) * MIB


def _mib(size: int) -> str:
    return f"{size / MIB:.0f} MiB"
