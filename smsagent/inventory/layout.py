"""Shape storage facts into the SMS disk, volume-group and btrfs models (pure)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Optional

import structlog

from smsagent.api.enums import DeviceUse
from smsagent.api.models import (
    BtrfsFileSystem,
    BtrfsSubvolumn,
    LogicalVolumes,
    PhysicalVolume,
    ServerDisk,
    VolumeGroups,
)
from smsagent.inventory.blkid import partition_style
from smsagent.inventory.btrfs import TOP_LEVEL_ID, BtrfsSubvolume
from smsagent.inventory.devices import DeviceIndex
from smsagent.inventory.facts import BtrfsDetails, StorageFacts
from smsagent.inventory.lsblk import BlockDevice
from smsagent.inventory.lvm import LogicalVolumeReport, VolumeGroupReport
from smsagent.inventory.mountinfo import Mount

log = structlog.get_logger()

DISK_KINDS = frozenset({"disk"})


@dataclass(frozen=True)
class StorageLayout:
    """The storage part of the registration body, also the body of a disk-info update."""

    disks: list[ServerDisk]
    volume_groups: list[VolumeGroups]
    btrfs_list: list[BtrfsFileSystem]


def build_layout(
    facts: StorageFacts, extra_disks: Collection[str] = (), root_mount_point: str = "/"
) -> StorageLayout:
    """Disks (the boot disk first), volume groups and btrfs file systems of one snapshot.

    Args:
        extra_disks: knames to report as disks although lsblk does not call them one
            (loop devices that stand in for disks).
        root_mount_point: where the source server's root file system is mounted.
    """
    index = DeviceIndex(facts, root_mount_point)
    if index.root_kname is None:
        log.warning("inventory_root_device_unknown", mount_point=root_mount_point)
    disks = [d.kname for d in facts.devices if d.kind in DISK_KINDS or d.kname in extra_disks]
    boot_disk = _boot_disk(index, disks)
    ordered = sorted(disks, key=lambda kname: kname != boot_disk)
    return StorageLayout(
        disks=[_disk(index, kname, kname == boot_disk, disks) for kname in ordered],
        volume_groups=[_volume_group(index, vg) for vg in facts.volume_groups],
        btrfs_list=[_btrfs(details, facts.mounts) for details in facts.btrfs],
    )


def _boot_disk(index: DeviceIndex, disks: Sequence[str]) -> Optional[str]:
    # The system disk is the one the machine boots from: /boot's disk, else the root's.
    for kname in (*sorted(index.boot_knames), index.root_kname):
        under = index.disks_under(kname, disks)
        if under:
            return under[0]
    return None


def _disk(index: DeviceIndex, kname: str, is_boot_disk: bool, disks: Sequence[str]) -> ServerDisk:
    device = index.by_kname[kname]
    partitions = [d for d in index.children(kname) if d.kind == "part"]
    partitions.sort(key=lambda d: (index.facts.partition_numbers.get(d.kname, 0), d.kname))
    if not partitions and _holds_data(index, kname):
        partitions = [device]  # a file system or PV on the whole disk is its only volume
    volumes = [_physical_volume(index, part, position) for position, part in enumerate(partitions)]
    style = partition_style(index.partition_table(kname))
    if style is None and device not in partitions:
        log.info(
            "inventory_fact_absent",
            fact="partition_style",
            disk=device.path,
            reason="no MBR or GPT table readable",
        )
    return ServerDisk(
        name=device.path,
        partition_style=style,
        device_use=_disk_use(index, kname, is_boot_disk, disks).value,
        size=device.size_bytes,
        used_size=sum(volume.used_size or 0 for volume in volumes),
        physical_volumes=volumes,
        os_disk=is_boot_disk,
    )


def _holds_data(index: DeviceIndex, kname: str) -> bool:
    return bool(index.mounts(kname)) or index.file_system(kname).fstype is not None


def _disk_use(
    index: DeviceIndex, kname: str, is_boot_disk: bool, disks: Sequence[str]
) -> DeviceUse:
    if is_boot_disk:
        return DeviceUse.BOOT
    if kname in index.disks_under(index.root_kname, disks):
        return DeviceUse.OS
    if not index.children(kname):
        use = index.device_use(kname)
        return use if use in (DeviceUse.VOLUME_GROUP, DeviceUse.BTRFS) else DeviceUse.NORMAL
    return DeviceUse.NORMAL


def _physical_volume(index: DeviceIndex, device: BlockDevice, position: int) -> PhysicalVolume:
    fs = index.file_system(device.kname)
    return PhysicalVolume(
        name=device.path,
        index=position,
        device_use=index.device_use(device.kname).value,
        file_system=fs.fstype,
        mount_point=fs.mount_point,
        size=device.size_bytes,
        used_size=_used_bytes(index, device, fs.usage.used_bytes if fs.usage else None),
        inode_size=fs.inode_size,
        inode_nums=fs.usage.inode_count if fs.usage else None,
        uuid=fs.uuid,
    )


def _used_bytes(index: DeviceIndex, device: BlockDevice, mounted_used: Optional[int]) -> int:
    """Bytes in use: the file system's when mounted, else what LVM or btrfs allocated on it."""
    if mounted_used is not None:
        return mounted_used
    for vg in index.facts.volume_groups:
        for pv in vg.physical_volumes:
            if pv.name == device.path:
                return pv.size_bytes - pv.free_bytes
    for details in index.facts.btrfs:
        for member in details.show.devices:
            if member.path == device.path:
                return member.used_bytes
    return 0


def _volume_group(index: DeviceIndex, vg: VolumeGroupReport) -> VolumeGroups:
    volumes = [lv for lv in index.facts.logical_volumes if lv.vg_name == vg.name]
    return VolumeGroups(
        name=vg.name,
        components=",".join(pv.name for pv in vg.physical_volumes),
        size=vg.size_bytes,
        free_size=vg.free_bytes,
        logical_volumes=[_logical_volume(index, lv) for lv in volumes],
    )


def _logical_volume(index: DeviceIndex, lv: LogicalVolumeReport) -> LogicalVolumes:
    kname = index.kname_of_major_minor(lv.major_minor)
    if kname is None:
        log.info(
            "inventory_lv_inactive",
            volume=f"{lv.vg_name}/{lv.name}",
            absent="file system, mount point, use",
        )
        return LogicalVolumes(name=lv.name, size=lv.size_bytes, device_use=DeviceUse.NORMAL.value)
    fs = index.file_system(kname)
    usage = fs.usage
    return LogicalVolumes(
        name=lv.name,
        size=lv.size_bytes,
        device_use=index.device_use(kname).value,
        file_system=fs.fstype,
        mount_point=fs.mount_point,
        used_size=usage.used_bytes if usage else None,
        free_size=usage.free_bytes if usage else None,
        inode_size=fs.inode_size,
        inode_nums=usage.inode_count if usage else None,
        block_size=usage.block_size if usage else None,
        block_count=usage.block_count if usage else None,
    )


def _btrfs(details: BtrfsDetails, mounts: Sequence[Mount]) -> BtrfsFileSystem:
    show = details.show
    members = [device.path for device in show.devices]
    fs_mounts = [m for m in mounts if m.fstype == "btrfs" and m.source in members]
    default_id, default_name = details.default_subvolume or (TOP_LEVEL_ID, "/")
    profiles = {kind: profile.profile for kind, profile in details.profiles.items()}
    reserve = details.profiles.get("GlobalReserve")
    return BtrfsFileSystem(
        name=members[0] if members else show.uuid,
        label=show.label,
        uuid=show.uuid,
        device=",".join(members),
        size=show.size_bytes,
        nodesize=details.nodesize,
        sectorsize=details.sectorsize,
        data_profile=profiles.get("Data"),
        system_profile=profiles.get("System"),
        metadata_profile=profiles.get("Metadata"),
        global_reserve1=str(reserve.total_bytes) if reserve else None,
        g_vol_used_size=show.used_bytes,
        default_subvolid=default_id,
        default_subvol_name=default_name,
        default_subvol_mountpath=_subvolume_mount(fs_mounts, default_id, default_name)
        or _subvolume_mount(fs_mounts, TOP_LEVEL_ID, "/"),
        subvolumn=[_subvolume(subvolume, fs_mounts) for subvolume in details.subvolumes],
    )


def _subvolume(subvolume: BtrfsSubvolume, fs_mounts: Sequence[Mount]) -> BtrfsSubvolumn:
    return BtrfsSubvolumn(
        # SMS documents this field as the parent's UUID (the origin of a snapshot).
        uuid="" if subvolume.parent_uuid == "-" else subvolume.parent_uuid,
        is_snapshot=str(subvolume.is_snapshot).lower(),
        subvol_id=subvolume.subvol_id,
        parent_id=subvolume.parent_id,
        subvol_name=subvolume.path,
        subvol_mount_path=_subvolume_mount(fs_mounts, subvolume.subvol_id, subvolume.path),
    )


def _subvolume_mount(mounts: Sequence[Mount], subvol_id: str, path: str) -> str:
    """Where a subvolume is mounted, by `subvolid=` or (older kernels) by the mount's root."""
    root = "/" + path.strip("/") if path != "/" else "/"
    for mount in mounts:
        if mount.option("subvolid") == subvol_id or (
            mount.option("subvolid") is None and mount.root == root
        ):
            return mount.mount_point
    return ""
