"""Which source device each target volume is copied from, and how it is read.

The task's layout names each target volume by its source: the partition (`/dev/sda2`) or the
logical volume (`vg/lv`), and where the source mounts it. A mounted file system is found by its
mount point under the source root (mountinfo names the device that holds it, which is what a
running server's fstab may call by UUID or label); an unmounted one by the name the layout gives.
Swap is not copied: FORMAT made it new.
"""

from __future__ import annotations

import fcntl
import os
import posixpath
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

from smsagent.inventory.mounts import MountEntry
from smsagent.target.layout import TargetLayout

ERROR_SOURCE_VOLUME: Final = "SMSAGENT.BLOCK_SOURCE"
ERROR_TOO_SMALL: Final = "SMSAGENT.TARGET_DISK_TOO_SMALL"
BLKGETSIZE64: Final = 0x80081272
# File systems whose allocation map the kernel gives (FS_IOC_GETFSMAP); the rest are read whole.
MAPPED: Final = frozenset({"ext2", "ext3", "ext4", "xfs"})


class VolumeError(Exception):
    """A target volume has no source the agent can read, or is too small for it."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class BlockVolume:
    """One volume of a block task.

    Attributes:
        index: its number on the wire and in the task record.
        source_device: the source's block device.
        target_device: the target's device it is written to.
        size: the bytes copied: the source device's size.
        fstype: its file system.
        mount_point: where the source mounts it (`/`, `/boot`), or None.
        mounted_at: where it is mounted on this host now (its map and freeze go there), or None.
        writable: mounted, and its file system is writable: something may write to it while it
            is copied.
    """

    index: int
    source_device: str
    target_device: str
    size: int
    fstype: str
    mount_point: Optional[str]
    mounted_at: Optional[str]
    writable: bool = False

    @property
    def mapped(self) -> bool:
        """Whether the copy can ask the file system which blocks are used."""
        return self.mounted_at is not None and self.fstype in MAPPED


def block_volumes(
    layout: TargetLayout, source_root: str, mounts: Sequence[MountEntry]
) -> list[BlockVolume]:
    """The volumes to copy, in the layout's order, each with its source device.

    Raises:
        VolumeError: a volume's source cannot be found or read, or it is larger than its target.
    """
    found: list[BlockVolume] = []
    for volume in layout.volumes():
        if volume.fs.is_swap:
            continue
        mount_point = volume.fs.mount_point
        mounted = _mounted(mounts, source_root, mount_point) if mount_point else None
        if mounted is not None:
            device = mounted.source
        elif volume.source_name:
            device = _device_path(volume.source_name)
        else:
            where = mount_point or volume.device
            raise VolumeError(
                ERROR_SOURCE_VOLUME,
                f"the layout names no source for {where} (target {volume.device}), and the source "
                "does not mount it",
            )
        size = device_size(device, volume.device)
        found.append(
            BlockVolume(
                index=len(found),
                source_device=device,
                target_device=volume.device,
                size=size,
                fstype=volume.fs.fstype,
                mount_point=mount_point,
                mounted_at=mounted.mount_point if mounted is not None else None,
                writable=mounted is not None and not mounted.read_only,
            )
        )
    return found


def _mounted(
    mounts: Sequence[MountEntry], source_root: str, mount_point: str
) -> Optional[MountEntry]:
    """The visible mount of a block device at `mount_point` under the source root."""
    relative = mount_point.strip("/")
    wanted = posixpath.normpath(posixpath.join(source_root, relative)) if relative else source_root
    wanted = posixpath.normpath(wanted)
    candidates = [m for m in mounts if m.mount_point == wanted]
    if not candidates:
        return None
    entry = candidates[-1]  # the last mount on a point hides the others
    if entry.root != "/" or not entry.source.startswith("/dev/"):
        return None  # a bind mount or no block device: not a volume of its own
    return entry


def _device_path(name: str) -> str:
    name = name.strip()
    if name.startswith("/dev/"):
        return name
    return "/dev/" + name.lstrip("/")


def device_size(device: str, target: str) -> int:
    """The size of a source block device.

    Raises:
        VolumeError: it is missing or not a block device.
    """
    try:
        info = Path(device).stat()
        if not stat.S_ISBLK(info.st_mode):
            raise VolumeError(
                ERROR_SOURCE_VOLUME, f"{device} (the source of {target}) is not a block device"
            )
        descriptor = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise VolumeError(
            ERROR_SOURCE_VOLUME,
            f"{device} (the source of {target}) cannot be read: {exc.strerror or exc}",
        ) from exc
    try:
        raw = fcntl.ioctl(descriptor, BLKGETSIZE64, bytes(8))
    finally:
        os.close(descriptor)
    return int(struct.unpack("Q", raw)[0])
