"""What the prepare stage made on the target: devices, new UUIDs, where the tree is mounted.

It is recorded in the task record (the `FORMAT_DISK_LINUX_FILE` stage's resume data) so that a
resumed task mounts the same file systems again instead of making new ones, and so that the
configure stage can write `/etc/fstab` and the boot loader by the new UUIDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

from smsagent.target.layout import BootMode


@dataclass(frozen=True)
class PreparedVolume:
    """One file system or swap made on the target.

    Attributes:
        device: the target's device (`/dev/vdb2`, `/dev/vg0/root`).
        fstype: ext4, xfs, vfat, btrfs, swap, ...
        mount_point: where the source mounts it (None for swap).
        uuid: the new UUID `blkid` reports for it on the target.
        source_uuid: the UUID of the source's copy (what the source's fstab may name).
    """

    device: str
    fstype: str
    mount_point: Optional[str]
    uuid: str
    source_uuid: Optional[str] = None

    @property
    def is_swap(self) -> bool:
        return self.fstype == "swap"


@dataclass(frozen=True)
class PreparedTarget:
    """The prepared target as the later stages need it.

    Attributes:
        root: where the target's root file system is mounted on the target (its file systems
            below it in mount-point order); the copy's destination.
        boot_mode: BIOS or UEFI.
        boot_disk: the disk GRUB goes to (BIOS) or that holds the ESP (UEFI).
        volumes: every file system and swap made, `/` first.
        volume_groups: the LVM groups made (activated before mounting again).
    """

    root: str
    boot_mode: BootMode
    boot_disk: str
    volumes: tuple[PreparedVolume, ...]
    volume_groups: tuple[str, ...] = ()

    def mounts(self) -> list[PreparedVolume]:
        """The mounted volumes, parents first."""
        mounted = [v for v in self.volumes if v.mount_point and not v.is_swap]
        return sorted(mounted, key=lambda v: _depth(v.mount_point or "/"))

    def by_mount_point(self, mount_point: str) -> Optional[PreparedVolume]:
        return next((v for v in self.volumes if v.mount_point == mount_point), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["boot_mode"] = self.boot_mode.value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedTarget:
        """Read back what `to_json` wrote.

        Raises:
            ValueError: the data is not a prepared target.
        """
        try:
            return cls(
                root=str(data["root"]),
                boot_mode=BootMode(data["boot_mode"]),
                boot_disk=str(data["boot_disk"]),
                volumes=tuple(PreparedVolume(**dict(v)) for v in data["volumes"]),
                volume_groups=tuple(str(g) for g in data.get("volume_groups", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a prepared target: {exc}") from exc


def _depth(mount_point: str) -> tuple[int, str]:
    return (0 if mount_point == "/" else mount_point.rstrip("/").count("/"), mount_point)
