"""Collect the storage facts (block devices, file systems, LVM, btrfs) through a Probe."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, Future
from typing import Callable, Optional, TypeVar

import structlog

from smsagent.inventory import btrfs, lvm
from smsagent.inventory.blkid import blkid_argv, parse_blkid_export
from smsagent.inventory.facts import BtrfsDetails, StorageFacts
from smsagent.inventory.lsblk import LSBLK_ARGV, BlockDevice, LsblkFormatError, parse_lsblk
from smsagent.inventory.mountinfo import MOUNTINFO_PATH, Mount, parse_mountinfo
from smsagent.inventory.probe import Probe
from smsagent.inventory.superblock import SUPERBLOCK_BYTES, inode_size

log = structlog.get_logger()

T = TypeVar("T")

# Devices that never hold server data: RAM disks, compressed swap in RAM, optical drives.
_SKIPPED_PREFIXES = ("ram", "zram", "fd", "sr")
# blkid -p exits 2 when a device carries nothing it recognises; the others are still printed.
_BLKID_OK = (0, 2)


def collect_storage(probe: Probe, pool: Executor, timeout_s: float) -> StorageFacts:
    """Run the independent probes concurrently, then the ones that need their answers."""
    lsblk_text = pool.submit(probe.run, LSBLK_ARGV, timeout_s)
    mountinfo_text = pool.submit(probe.read_text, MOUNTINFO_PATH)
    vgs_text = pool.submit(probe.run, lvm.VGS_ARGV, timeout_s)
    lvs_text = pool.submit(probe.run, lvm.LVS_ARGV, timeout_s)
    btrfs_text = pool.submit(probe.run, btrfs.show_argv(), timeout_s)

    devices = _devices(lsblk_text.result())
    mounts = tuple(parse_mountinfo(mountinfo_text.result() or ""))
    if not mounts:
        log.warning("inventory_fact_absent", fact="mounts", reason=f"{MOUNTINFO_PATH} unreadable")
    heads = {d.kname: pool.submit(_read_head, probe, d) for d in devices}
    numbers = {d.kname: pool.submit(_partition_number, probe, d) for d in devices}
    usage = _map(pool, lambda m: probe.statvfs(m.mount_point), _usage_mounts(mounts))
    btrfs_found = _parse_or_absent("btrfs", btrfs.parse_filesystem_show, btrfs_text.result())
    details = [pool.submit(_btrfs_details, probe, show, mounts, timeout_s) for show in btrfs_found]

    readable = {kname: head for kname, f in heads.items() if (head := f.result()) is not None}
    probed = _probe_devices(probe, devices, readable, timeout_s)
    return StorageFacts(
        devices=tuple(devices),
        probed=probed,
        partition_numbers={k: n for k, f in numbers.items() if (n := f.result()) is not None},
        mounts=mounts,
        usage={m.mount_point: u for m, u in usage.items() if u is not None},
        inode_sizes=_inode_sizes(devices, probed, readable),
        volume_groups=tuple(_parse_or_absent("volume_groups", lvm.parse_vgs, vgs_text.result())),
        logical_volumes=tuple(
            _with_device_numbers(
                _parse_or_absent("logical_volumes", lvm.parse_lvs, lvs_text.result()), devices
            )
        ),
        btrfs=tuple(future.result() for future in details),
    )


def _with_device_numbers(
    volumes: Sequence[lvm.LogicalVolumeReport], devices: Sequence[BlockDevice]
) -> list[lvm.LogicalVolumeReport]:
    """The LVs, each active one with its device number.

    `lvs` learns the numbers from the kernel through /dev/mapper/control, which a sandbox may
    not let it open (the agent's unit allows block devices only): it then says -1, as for an
    inactive LV, and the LV would look unused and unmounted. lsblk reads sysfs instead, and
    lists each active LV by its /dev/mapper name.
    """
    by_path = {d.path: d.major_minor for d in devices if d.kname.startswith("dm-")}
    return [
        lv
        if lv.major_minor or lv.dm_path not in by_path
        else dataclasses.replace(lv, major_minor=by_path[lv.dm_path])
        for lv in volumes
    ]


def _devices(text: Optional[str]) -> list[BlockDevice]:
    if text is None:
        log.warning("inventory_fact_absent", fact="disks", reason="lsblk missing or failed")
        return []
    try:
        devices = parse_lsblk(text)
    except LsblkFormatError as exc:
        log.warning("inventory_fact_absent", fact="disks", reason=str(exc))
        return []
    return [d for d in devices if d.size_bytes > 0 and not d.kname.startswith(_SKIPPED_PREFIXES)]


def _read_head(probe: Probe, device: BlockDevice) -> Optional[bytes]:
    # Reading the superblock area tells both whether blkid can open the device and the inode size.
    return probe.read_bytes(device.kernel_path, 0, SUPERBLOCK_BYTES)


def _partition_number(probe: Probe, device: BlockDevice) -> Optional[int]:
    if device.kind != "part":
        return None
    text = probe.read_text(f"/sys/class/block/{device.kname}/partition")
    return int(text) if text and text.strip().isdigit() else None


def _probe_devices(
    probe: Probe, devices: Sequence[BlockDevice], readable: Iterable[str], timeout_s: float
) -> dict[str, dict[str, str]]:
    # One blkid for all devices; it stops at the first it cannot open, so only readable ones go in.
    openable = set(readable)
    paths = [d.kernel_path for d in devices if d.kname in openable]
    unreadable = sorted(d.kernel_path for d in devices if d.kname not in openable)
    if unreadable:
        log.info("inventory_devices_unreadable", devices=unreadable, facts="file system, UUID")
    if not paths:
        return {}
    text = probe.run(blkid_argv(paths), timeout_s, ok_returncodes=_BLKID_OK)
    return parse_blkid_export(text or "")


def _inode_sizes(
    devices: Sequence[BlockDevice],
    probed: dict[str, dict[str, str]],
    heads: dict[str, bytes],
) -> dict[str, int]:
    sizes = {}
    for device in devices:
        fstype = probed.get(device.kernel_path, {}).get("TYPE") or device.fstype
        head = heads.get(device.kname)
        size = inode_size(fstype, head) if head is not None else None
        if size is not None:
            sizes[device.kname] = size
    return sizes


def _usage_mounts(mounts: Sequence[Mount]) -> list[Mount]:
    """One mount per device-backed file system: statvfs of pseudo and network mounts is not ours."""
    chosen: dict[str, Mount] = {}
    for mount in mounts:
        backed_by_device = not mount.major_minor.startswith("0:") or mount.source.startswith(
            "/dev/"
        )
        key = mount.source if mount.major_minor.startswith("0:") else mount.major_minor
        if backed_by_device and (key not in chosen or mount.root == "/"):
            chosen[key] = mount
    return list(chosen.values())


def _btrfs_details(
    probe: Probe, show: btrfs.BtrfsShow, mounts: Sequence[Mount], timeout_s: float
) -> BtrfsDetails:
    mount = _btrfs_mount(show, mounts)
    nodesize = probe.read_text(f"/sys/fs/btrfs/{show.uuid}/nodesize")
    sectorsize = probe.read_text(f"/sys/fs/btrfs/{show.uuid}/sectorsize")
    if mount is None:
        log.info("inventory_btrfs_unmounted", uuid=show.uuid, absent="profiles, subvolumes")
        return BtrfsDetails(show=show)
    df_text = probe.run(btrfs.df_argv(mount.mount_point), timeout_s)
    list_text = probe.run(btrfs.subvolume_list_argv(mount.mount_point), timeout_s)
    default_text = probe.run(btrfs.get_default_argv(mount.mount_point), timeout_s)
    return BtrfsDetails(
        show=show,
        profiles=btrfs.parse_filesystem_df(df_text or ""),
        subvolumes=tuple(btrfs.parse_subvolume_list(list_text or "")),
        default_subvolume=btrfs.parse_get_default(default_text or ""),
        nodesize=_int_or_none(nodesize),
        sectorsize=_int_or_none(sectorsize),
    )


def _btrfs_mount(show: btrfs.BtrfsShow, mounts: Sequence[Mount]) -> Optional[Mount]:
    members = {device.path for device in show.devices}
    candidates = [m for m in mounts if m.fstype == "btrfs" and m.source in members]
    top_level = [m for m in candidates if m.root == "/"]
    ranked = top_level or candidates
    return ranked[0] if ranked else None


def _parse_or_absent(fact: str, parse: Callable[[str], list[T]], text: Optional[str]) -> list[T]:
    if text is None:
        log.info("inventory_fact_absent", fact=fact, reason="tool missing or failed")
        return []
    try:
        return parse(text)
    except ValueError as exc:
        log.warning("inventory_fact_absent", fact=fact, reason=str(exc))
        return []


def _map(pool: Executor, func: Callable[[Mount], T], items: Sequence[Mount]) -> dict[Mount, T]:
    futures: dict[Mount, Future[T]] = {item: pool.submit(func, item) for item in items}
    return {item: future.result() for item, future in futures.items()}


def _int_or_none(text: Optional[str]) -> Optional[int]:
    return int(text) if text and text.strip().isdigit() else None
