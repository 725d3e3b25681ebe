"""Storage facts of typical servers, written out by hand for the layout and builder tests.

Root on LVM, root on a btrfs subvolume and a container root cannot be built on the test machine
(no device-mapper, and its own root is a whole-disk ext4), so their facts are spelled out here.
"""

from __future__ import annotations

from typing import Optional

from smsagent.inventory.btrfs import BtrfsDevice, BtrfsProfile, BtrfsShow, BtrfsSubvolume
from smsagent.inventory.facts import BtrfsDetails, StorageFacts
from smsagent.inventory.lsblk import BlockDevice
from smsagent.inventory.lvm import LogicalVolumeReport, PhysicalVolumeReport, VolumeGroupReport
from smsagent.inventory.mountinfo import Mount
from smsagent.inventory.probe import FsUsage

GIB = 1024**3


def dev(
    kname: str,
    mm: str,
    size: int,
    kind: str = "part",
    parents: tuple[str, ...] = (),
    name: Optional[str] = None,
) -> BlockDevice:
    return BlockDevice(name or kname, kname, mm, size, kind, parents)


def mount(
    mm: str, point: str, fstype: str, source: str, root: str = "/", opts: str = "rw"
) -> Mount:
    return Mount(len(point), 1, mm, root, point, fstype, source, opts)


def usage(used: int, total: int = 10 * GIB) -> FsUsage:
    return FsUsage(total, total - used, used, 4096, total // 4096, 65536)


def lvm_server() -> StorageFacts:
    """sdb (data, listed first), sda: /boot on sda1, PV sda2 with root, swap and an inactive LV."""
    return StorageFacts(
        devices=(
            dev("sdb", "8:16", 50 * GIB, "disk"),
            dev("sdb1", "8:17", 50 * GIB - 2**20, parents=("sdb",)),
            dev("sda", "8:0", 100 * GIB, "disk"),
            dev("sda1", "8:1", GIB, parents=("sda",)),
            dev("sda2", "8:2", 99 * GIB, parents=("sda",)),
            dev("dm-0", "253:0", 40 * GIB, "lvm", ("sda2",), name="vg0-root"),
            dev("dm-1", "253:1", 4 * GIB, "lvm", ("sda2",), name="vg0-swap"),
        ),
        probed={
            "/dev/sda": {"PTTYPE": "gpt"},
            "/dev/sda1": {"TYPE": "ext4", "UUID": "boot-uuid"},
            "/dev/sda2": {"TYPE": "LVM2_member", "UUID": "pv-uuid"},
            "/dev/sdb": {"PTTYPE": "dos"},
            "/dev/sdb1": {"TYPE": "xfs", "UUID": "data-uuid"},
            "/dev/dm-0": {"TYPE": "ext4", "UUID": "root-uuid"},
            "/dev/dm-1": {"TYPE": "swap", "UUID": "swap-uuid"},
        },
        partition_numbers={"sda1": 1, "sda2": 2, "sdb1": 1},
        mounts=(
            mount("253:0", "/", "ext4", "/dev/mapper/vg0-root"),
            mount("8:1", "/boot", "ext4", "/dev/sda1"),
            mount("8:17", "/data", "xfs", "/dev/sdb1"),
        ),
        usage={"/": usage(5 * GIB), "/boot": usage(200 * 2**20), "/data": usage(7 * GIB)},
        inode_sizes={"dm-0": 256, "sda1": 256, "sdb1": 512},
        volume_groups=(
            VolumeGroupReport(
                "vg0",
                "vg-uuid",
                99 * GIB,
                51 * GIB,
                (PhysicalVolumeReport("/dev/sda2", 99 * GIB, 51 * GIB),),
            ),
        ),
        logical_volumes=(
            LogicalVolumeReport(
                "vg0",
                "root",
                "u1",
                40 * GIB,
                "/dev/vg0/root",
                "/dev/mapper/vg0-root",
                "253:0",
                "-wi-ao----",
            ),
            LogicalVolumeReport(
                "vg0",
                "swap",
                "u2",
                4 * GIB,
                "/dev/vg0/swap",
                "/dev/mapper/vg0-swap",
                "253:1",
                "-wi-ao----",
            ),
            LogicalVolumeReport(
                "vg0",
                "spare",
                "u3",
                4 * GIB,
                "/dev/vg0/spare",
                "/dev/mapper/vg0-spare",
                None,
                "-wi-------",
            ),
        ),
    )


def btrfs_server() -> StorageFacts:
    """sda1 vfat /boot/efi; sda2 btrfs with @ at / and @home at /home (no top-level mount)."""
    opts = "rw,subvolid={},subvol=/{}"
    return StorageFacts(
        devices=(
            dev("sda", "8:0", 64 * GIB, "disk"),
            dev("sda1", "8:1", 512 * 2**20, parents=("sda",)),
            dev("sda2", "8:2", 63 * GIB, parents=("sda",)),
        ),
        probed={
            "/dev/sda": {"PTTYPE": "gpt"},
            "/dev/sda1": {"TYPE": "vfat", "UUID": "ABCD-0001"},
            "/dev/sda2": {"TYPE": "btrfs", "UUID": "fs-uuid"},
        },
        partition_numbers={"sda1": 1, "sda2": 2},
        mounts=(
            mount("0:31", "/", "btrfs", "/dev/sda2", root="/@", opts=opts.format(256, "@")),
            mount("8:1", "/boot/efi", "vfat", "/dev/sda1"),
            mount("0:31", "/home", "btrfs", "/dev/sda2", "/@home", opts.format(257, "@home")),
        ),
        usage={"/": usage(9 * GIB), "/boot/efi": usage(6 * 2**20)},
        btrfs=(
            BtrfsDetails(
                show=BtrfsShow(
                    "fs-uuid", "", 9 * GIB, (BtrfsDevice(1, 63 * GIB, GIB, "/dev/sda2"),)
                ),
                profiles={
                    "Data": BtrfsProfile("single", 10, 9),
                    "Metadata": BtrfsProfile("DUP", 2, 1),
                    "System": BtrfsProfile("DUP", 1, 1),
                    "GlobalReserve": BtrfsProfile("single", 5, 0),
                },
                subvolumes=(
                    BtrfsSubvolume("256", "5", "-", "u-root", "@"),
                    BtrfsSubvolume("257", "5", "-", "u-home", "@home"),
                    BtrfsSubvolume("258", "5", "u-root", "u-snap", "snapshots/1"),
                ),
                default_subvolume=("256", "@"),
                nodesize=16384,
                sectorsize=4096,
            ),
        ),
    )
