"""The raw facts the inventory collects, before they are shaped into SMS bodies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from smsagent.api.enums import BootLoader, Firmware, Platform
from smsagent.inventory.btrfs import BtrfsProfile, BtrfsShow, BtrfsSubvolume
from smsagent.inventory.lsblk import BlockDevice
from smsagent.inventory.lvm import LogicalVolumeReport, VolumeGroupReport
from smsagent.inventory.mountinfo import Mount
from smsagent.inventory.net import Nic
from smsagent.inventory.probe import FsUsage


@dataclass(frozen=True)
class BtrfsDetails:
    """One btrfs file system: `show` always, the rest only when it is mounted here."""

    show: BtrfsShow
    profiles: Mapping[str, BtrfsProfile] = field(default_factory=dict)
    subvolumes: tuple[BtrfsSubvolume, ...] = ()
    default_subvolume: Optional[tuple[str, str]] = None
    nodesize: Optional[int] = None
    sectorsize: Optional[int] = None


@dataclass(frozen=True)
class StorageFacts:
    """Block devices and what is on them.

    Args:
        probed: blkid tags per kernel path (`/dev/sda1`); devices we could not open are missing.
        partition_numbers: kname -> partition number (sysfs), for the order on disk.
        usage: mount point -> statvfs of the file system mounted there.
        inode_sizes: kname -> inode size read from the superblock.
        lvm_available: False when the LVM tools are missing or failed (then no VG is known).
    """

    devices: tuple[BlockDevice, ...] = ()
    probed: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    partition_numbers: Mapping[str, int] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    usage: Mapping[str, FsUsage] = field(default_factory=dict)
    inode_sizes: Mapping[str, int] = field(default_factory=dict)
    volume_groups: tuple[VolumeGroupReport, ...] = ()
    logical_volumes: tuple[LogicalVolumeReport, ...] = ()
    btrfs: tuple[BtrfsDetails, ...] = ()


@dataclass(frozen=True)
class HostFacts:
    """Everything in the registration body that is not storage; None means absent (logged)."""

    hostname: str
    kernel_version: str
    machine: str
    os_release: Mapping[str, str]
    cpu_count: Optional[int]
    memory_mb: Optional[int]
    firmware: Firmware
    boot_loader: Optional[BootLoader]
    paravirtualization: bool
    raw_devices: str
    platform: Optional[Platform]
    has_rsync: bool
    has_tc: bool
    nics: tuple[Nic, ...] = ()
