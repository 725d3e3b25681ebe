"""Index the block devices: which mounts, file system and role each device has (pure)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Optional

from smsagent.api.enums import DeviceUse
from smsagent.inventory.facts import StorageFacts
from smsagent.inventory.lsblk import BlockDevice
from smsagent.inventory.mountinfo import Mount
from smsagent.inventory.probe import FsUsage

BOOT_MOUNT_POINTS: Final = ("/boot", "/boot/efi")
LVM_MEMBER: Final = "LVM2_member"
# FUSE mounts name the helper ("fuse", "fuseblk", "fuse.ntfs-3g"), not the on-disk format.
_NOT_A_FORMAT: Final = ("fuse", "fuseblk")


@dataclass(frozen=True)
class FileSystem:
    """What one device holds, as far as it could be seen."""

    fstype: Optional[str]
    uuid: Optional[str]
    mount_point: Optional[str]
    usage: Optional[FsUsage]
    inode_size: Optional[int]


class DeviceIndex:
    """Lookups over one StorageFacts snapshot: device by path, mounts, file system, role."""

    def __init__(self, facts: StorageFacts, root_mount_point: str = "/") -> None:
        self.facts: Final = facts
        self.by_kname: Final = {d.kname: d for d in facts.devices}
        self._by_major_minor = {d.major_minor: d.kname for d in facts.devices}
        self._by_path = _paths(facts)
        self._mounts = _mounts_by_device(facts.mounts, self._by_major_minor, self._by_path)
        self._pv_paths = {pv.name for vg in facts.volume_groups for pv in vg.physical_volumes}
        self.root_kname: Final = self._mounted_at(root_mount_point)
        boot = [k for p in BOOT_MOUNT_POINTS if (k := self._mounted_at(p)) is not None]
        self.boot_knames: Final = frozenset(boot)

    def kname_of_path(self, path: str) -> Optional[str]:
        """The kname behind `/dev/sda1`, `/dev/mapper/vg-lv`, `/dev/vg/lv` or `/dev/dm-0`."""
        return self._by_path.get(path)

    def kname_of_major_minor(self, major_minor: Optional[str]) -> Optional[str]:
        """The kname with this device number, if lsblk listed it."""
        return self._by_major_minor.get(major_minor) if major_minor else None

    def children(self, kname: str) -> list[BlockDevice]:
        """Devices sitting directly on `kname` (partitions of a disk, LVs of a PV)."""
        return [d for d in self.facts.devices if kname in d.parents]

    def mounts(self, kname: str) -> Sequence[Mount]:
        """Every mount of the device, in mountinfo order."""
        return self._mounts.get(kname, ())

    def primary_mount(self, kname: str) -> Optional[Mount]:
        """The mount that shows the whole file system, else (btrfs) its shortest subvolume mount.

        Bind mounts of a subdirectory (a container's /etc/hosts) do not count: they say nothing
        about where the file system itself lives.
        """
        mounts = self.mounts(kname)
        whole = [m for m in mounts if m.root == "/"]
        if whole:
            return whole[0]
        subvolumes = [m for m in mounts if m.fstype == "btrfs"]
        ranked = sorted(subvolumes, key=lambda m: (len(m.mount_point), m.mount_id))
        return ranked[0] if ranked else None

    def file_system(self, kname: str) -> FileSystem:
        """File system facts: blkid first, lsblk next, the mount table last."""
        device = self.by_kname[kname]
        tags = self.facts.probed.get(device.kernel_path, {})
        mount = self.primary_mount(kname)
        mounted_type = mount.fstype if mount and mount.fstype not in _NOT_A_FORMAT else None
        return FileSystem(
            fstype=tags.get("TYPE") or device.fstype or mounted_type,
            uuid=tags.get("UUID") or device.uuid,
            mount_point=mount.mount_point if mount else None,
            usage=self.facts.usage.get(mount.mount_point) if mount else None,
            inode_size=self.facts.inode_sizes.get(kname),
        )

    def partition_table(self, kname: str) -> Optional[str]:
        """PTTYPE of a disk (`dos`, `gpt`), from blkid or lsblk."""
        device = self.by_kname[kname]
        return self.facts.probed.get(device.kernel_path, {}).get("PTTYPE") or device.pttype

    def is_lvm_member(self, kname: str) -> bool:
        """Whether the device is an LVM physical volume."""
        device = self.by_kname[kname]
        return device.path in self._pv_paths or self.file_system(kname).fstype == LVM_MEMBER

    def device_use(self, kname: str) -> DeviceUse:
        """The role of a partition or LV: OS, BOOT, VOLUME_GROUP, BTRFS or NORMAL."""
        if kname == self.root_kname:
            return DeviceUse.OS
        if kname in self.boot_knames:
            return DeviceUse.BOOT
        if self.is_lvm_member(kname):
            return DeviceUse.VOLUME_GROUP
        if self.file_system(kname).fstype == "btrfs":
            return DeviceUse.BTRFS
        return DeviceUse.NORMAL

    def disks_under(self, kname: Optional[str], disks: Collection[str]) -> list[str]:
        """The disks a device ultimately lives on (through partitions, PVs, RAID...)."""
        found: list[str] = []
        pending = [kname] if kname else []
        seen: set[str] = set()
        while pending:
            current = pending.pop(0)
            if current in seen or current not in self.by_kname:
                continue
            seen.add(current)
            if current in disks:
                found.append(current)
            else:
                pending.extend(self.by_kname[current].parents)
        return found

    def _mounted_at(self, mount_point: str) -> Optional[str]:
        for kname, mounts in self._mounts.items():
            if any(m.mount_point == mount_point for m in mounts):
                return kname
        return None


def _paths(facts: StorageFacts) -> dict[str, str]:
    paths: dict[str, str] = {}
    for device in facts.devices:
        paths[device.path] = device.kname
        paths[device.kernel_path] = device.kname
    by_major_minor = {d.major_minor: d.kname for d in facts.devices}
    for volume in facts.logical_volumes:
        kname = by_major_minor.get(volume.major_minor or "")
        if kname:
            paths[volume.path] = kname
            paths[volume.dm_path] = kname
    return paths


def _mounts_by_device(
    mounts: Iterable[Mount], by_major_minor: Mapping[str, str], by_path: Mapping[str, str]
) -> dict[str, tuple[Mount, ...]]:
    # Block-backed mounts carry the device number; btrfs and FUSE show an anonymous 0:N, so the
    # source path is the only link to the device there.
    found: dict[str, tuple[Mount, ...]] = {}
    for mount in mounts:
        kname = by_major_minor.get(mount.major_minor) or by_path.get(mount.source)
        if kname:
            found[kname] = (*found.get(kname, ()), mount)
    return found
