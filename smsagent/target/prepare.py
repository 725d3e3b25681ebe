"""FORMAT_DISK_LINUX_FILE: lay the target's disks out as the task says, over the task's SSH session.

Check first, then act: the target's devices are read once and every disk is checked
(`disks.check_disks`); one refusal anywhere means nothing is written anywhere. Then, disk by disk:
old signatures wiped, partitions made (MBR or GPT as the layout says; the BIOS boot partition and
the ESP typed as such), LVM groups and volumes built, each file system made with its type, and
the tree mounted under the agent's own root in mount-point order. What was made (devices and new
UUIDs) is returned as a `PreparedTarget`, which the caller records so that a resumed task mounts
the same file systems again (`remount`) instead of making new ones.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Final, Optional

from smsagent.target.disks import (
    DISK_IN_USE,
    LSBLK_COLUMNS,
    TargetDevices,
    check_disks,
    parse_lsblk,
    parse_pvs,
    refusal_message,
)
from smsagent.target.layout import (
    MIB,
    Disk,
    Partition,
    PartitionStyle,
    TargetLayout,
    VolumeKind,
)
from smsagent.target.prepared import PreparedTarget, PreparedVolume
from smsagent.target.session import CompletedRemote, TargetSession

PREPARE_FAILED: Final = "SMS.1113"  # failed to set the partitions up on the target
MOUNT_FAILED: Final = "SMS.3205"  # failed to mount a partition on the target
TARGET_CHANGED: Final = "SMSAGENT.TARGET_CHANGED"

COMMAND_TIMEOUT_S: Final = 120.0
MKFS_TIMEOUT_S: Final = 600.0
NODE_WAIT_S: Final = 15.0

# Partition type per kind: GPT type GUIDs and MBR type bytes, as sfdisk takes them.
_GPT_TYPES: Final = {
    VolumeKind.FILESYSTEM: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
    VolumeKind.ESP: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    VolumeKind.SWAP: "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    VolumeKind.BIOS_BOOT: "21686148-6449-6E6F-744E-656564454649",
    VolumeKind.LVM_PV: "E6D6D379-F507-44C2-A23C-238F2A3DF928",
}
_MBR_TYPES: Final = {
    VolumeKind.FILESYSTEM: "83",
    VolumeKind.ESP: "ef",
    VolumeKind.SWAP: "82",
    VolumeKind.BIOS_BOOT: "ef02",  # never on MBR (the layout allows it on GPT only)
    VolumeKind.LVM_PV: "8e",
}
_MKFS: Final[dict[str, tuple[str, ...]]] = {
    "ext2": ("mkfs.ext2", "-F", "-q"),
    "ext3": ("mkfs.ext3", "-F", "-q"),
    "ext4": ("mkfs.ext4", "-F", "-q"),
    "xfs": ("mkfs.xfs", "-f", "-q"),
    "vfat": ("mkfs.vfat",),
    "btrfs": ("mkfs.btrfs", "-f", "-q"),
    "swap": ("mkswap",),
}


# Growing a mounted file system to its volume: ext* by device, the others by mount point.
_GROW: Final[dict[str, tuple[str, ...]]] = {
    "ext2": ("resize2fs",),
    "ext3": ("resize2fs",),
    "ext4": ("resize2fs",),
    "xfs": ("xfs_growfs",),
    "btrfs": ("btrfs", "filesystem", "resize", "max"),
}

# What the configure stage binds into the tree (/dev, /proc, /sys, /run) mounts as.
_PSEUDO_FS: Final = frozenset(
    {"devtmpfs", "proc", "sysfs", "tmpfs", "devpts", "securityfs", "efivarfs"}
)


@dataclass(frozen=True)
class _Mount:
    target: str
    source: str
    fstype: str


def _unraw(field: str) -> str:
    """findmnt --raw escapes spaces and other bytes as \\xNN."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), field)


# $1 the root. A root mounted twice (a mount over a mount) is taken down layer by layer.
_UNMOUNT_SCRIPT: Final = """\
i=0
while mountpoint -q -- "$1" && [ "$i" -lt 8 ]; do
  umount --recursive -- "$1" || exit 1
  i=$((i + 1))
done
sync
"""


class PrepareError(Exception):
    """The target's disks cannot be laid out; `error_code` is what SMS is told."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Step:
    """One remote command of the preparation, and what it is for (in messages and logs)."""

    argv: tuple[str, ...]
    what: str
    timeout_s: float = COMMAND_TIMEOUT_S


Checkpoint = Callable[[], None]
"""Called between steps; raises to stop the work (STOP, shutdown)."""


def sfdisk_script(disk: Disk) -> str:
    """The partition table of `disk` as an sfdisk script."""
    label = "gpt" if disk.partition_style is PartitionStyle.GPT else "dos"
    lines = [f"label: {label}", "unit: sectors", ""]
    types = _GPT_TYPES if disk.partition_style is PartitionStyle.GPT else _MBR_TYPES
    bootable = _bootable(disk)
    for partition in disk.partitions:
        if partition.logical and not any(p.logical for p in _before(disk, partition)):
            lines.append("type=5")  # the extended partition: the rest of the disk
        size_mib = -(-partition.size // MIB)
        line = f"size={size_mib}MiB, type={types[partition.kind]}"
        if partition is bootable:
            line += ", bootable"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _before(disk: Disk, partition: Partition) -> list[Partition]:
    return list(disk.partitions[: disk.partitions.index(partition)])


def _bootable(disk: Disk) -> Optional[Partition]:
    """The MBR partition to flag active: the one holding /boot, else /; none on GPT."""
    if disk.partition_style is not PartitionStyle.MBR:
        return None
    for mount_point in ("/boot", "/"):
        for partition in disk.partitions:
            if partition.fs is not None and partition.fs.mount_point == mount_point:
                return partition
    return None


def build_steps(layout: TargetLayout, *, filesystems: bool = True) -> list[Step]:
    """The commands that lay `layout` out, in order, after the checks passed (pure).

    Without `filesystems` (a block-level copy brings them) only swap is made.
    """
    steps: list[Step] = []
    for disk in layout.disks:
        # Whatever the disk held before: file system, RAID and LVM signatures, partition tables.
        steps.append(Step(("wipefs", "--all", "--force", disk.device), f"wipe {disk.device}"))
        if disk.whole is not None:
            continue  # the volume is the disk itself: no table
        script = sfdisk_script(disk)
        steps.append(
            Step(
                (
                    "sh",
                    "-c",
                    'printf "%s" "$1" | sfdisk --quiet --wipe always --wipe-partitions always "$2"',
                    "sfdisk",
                    script,
                    disk.device,
                ),
                f"partition {disk.device}",
            )
        )
    for group in layout.volume_groups:
        steps.append(
            Step(
                ("pvcreate", "--force", "--yes", *group.members),
                f"LVM physical volumes of {group.name}",
            )
        )
        steps.append(
            Step(("vgcreate", "--yes", group.name, *group.members), f"volume group {group.name}")
        )
        for lv in group.logical_volumes:
            size_mib = -(-lv.size // MIB)
            steps.append(
                Step(
                    (
                        "lvcreate",
                        "--yes",
                        "--wipesignatures",
                        "y",
                        "--name",
                        lv.name,
                        "--size",
                        f"{size_mib}m",
                        group.name,
                    ),
                    f"logical volume {lv.path}",
                )
            )
    for volume in layout.volumes():
        if not filesystems and not volume.fs.is_swap:
            continue
        mkfs = _MKFS[volume.fs.fstype]
        steps.append(
            Step((*mkfs, volume.device), f"{volume.fs.fstype} on {volume.device}", MKFS_TIMEOUT_S)
        )
    return steps


class TargetPreparer:
    """Lays out and mounts the target's disks through `session`.

    Args:
        session: SSH to the target.
        root: where the target tree is mounted on the target (the copy's destination).
        checkpoint: called between steps; raises to stop.
        log: a structlog logger for each step (`target_prepare_step`), or None.
    """

    def __init__(
        self, session: TargetSession, root: str, checkpoint: Checkpoint, log: Any = None
    ) -> None:
        self._session = session
        self._root = posixpath.normpath(root)
        self._checkpoint = checkpoint
        self._log = log

    async def inspect(self) -> TargetDevices:
        """The target's devices, its LVM physical volumes and its root's source."""
        listing = await self._must(
            ("lsblk", "--json", "--bytes", "--paths", "--output", LSBLK_COLUMNS),
            "list the target's disks",
        )
        pvs = await self._session.run(
            ("pvs", "--reportformat", "json", "--options", "pv_name,vg_name"), COMMAND_TIMEOUT_S
        )
        root = await self._session.run(
            ("findmnt", "--noheadings", "--output", "SOURCE", "/"), COMMAND_TIMEOUT_S
        )
        try:
            roots = parse_lsblk(listing.stdout.decode("utf-8", "replace"))
            groups = parse_pvs(pvs.stdout.decode("utf-8", "replace")) if pvs.ok else {}
        except ValueError as exc:
            raise PrepareError(PREPARE_FAILED, str(exc)) from exc
        source = root.stdout.decode("utf-8", "replace").strip() if root.ok else ""
        return TargetDevices(roots, groups, source or None)

    async def prepare(self, layout: TargetLayout, *, filesystems: bool = True) -> PreparedTarget:
        """Check every disk, then lay the layout out and mount it.

        Without `filesystems` (a block-level copy brings them) only partitions, LVM and swap are
        made and nothing is mounted; `adopt` reads the copied file systems' UUIDs afterwards.

        Raises:
            PrepareError: a disk is refused (nothing written), or a step failed.
        """
        await self._check_own_mounts(layout)
        await self.unmount()
        devices = await self.inspect()
        refusals = check_disks(layout, devices, own_root=self._root)
        if refusals:
            raise PrepareError(refusals[0].code, refusal_message(refusals))
        await self._release_old_groups(layout, devices)
        for step in build_steps(layout, filesystems=filesystems):
            self._checkpoint()
            if self._log is not None:
                self._log.info("target_prepare_step", step=step.what)
            await self._must(step.argv, step.what, step.timeout_s)
            if step.what.startswith("partition "):
                await self._wait_for_partitions(layout, step.argv[-1])
        made = [v.device for v in layout.volumes() if filesystems or v.fs.is_swap]
        uuids = await self._uuids(made)
        volumes = tuple(
            PreparedVolume(
                device=v.device,
                fstype=v.fs.fstype,
                mount_point=v.fs.mount_point,
                uuid=uuids.get(v.device, ""),
                source_uuid=v.fs.source_uuid,
            )
            for v in layout.volumes()
        )
        prepared = PreparedTarget(
            root=self._root,
            boot_mode=layout.boot_mode,
            boot_disk=layout.boot_disk.device,
            volumes=volumes,
            volume_groups=tuple(g.name for g in layout.volume_groups),
        )
        if filesystems:
            await self.mount(prepared)
        return prepared

    async def activate(self, prepared: PreparedTarget) -> None:
        """Activate the prepared LVM groups (after a restart of the target, say)."""
        for group in prepared.volume_groups:
            await self._must(("vgchange", "--activate", "y", group), f"activate {group}")

    async def adopt(self, prepared: PreparedTarget) -> PreparedTarget:
        """The prepared target with the UUIDs of the file systems a block copy brought.

        Raises:
            PrepareError: a volume holds no file system after the copy.
        """
        await self.activate(prepared)
        uuids = await self._uuids([v.device for v in prepared.volumes])
        volumes = tuple(dataclasses.replace(v, uuid=uuids[v.device]) for v in prepared.volumes)
        return dataclasses.replace(prepared, volumes=volumes)

    async def grow(self, prepared: PreparedTarget) -> list[str]:
        """Grow each mounted file system to its volume's size; returns what was grown.

        Online, on the mounted tree: no file system check is needed first, and a file system
        already as large as its volume is left as it is.
        """
        grown: list[str] = []
        for volume in prepared.mounts():
            self._checkpoint()
            where = self._path(volume.mount_point or "/")
            argv = _GROW.get(volume.fstype)
            if argv is None:
                continue
            target = volume.device if volume.fstype.startswith("ext") else where
            await self._must((*argv, target), f"grow {volume.device}", MKFS_TIMEOUT_S)
            grown.append(volume.device)
        return grown

    async def remount(self, prepared: PreparedTarget) -> None:
        """Mount what an earlier run prepared, after checking it is still what was made.

        Raises:
            PrepareError: a volume is gone or holds another file system (TARGET_CHANGED).
        """
        await self.activate(prepared)
        uuids = await self._uuids([v.device for v in prepared.volumes], missing_ok=True)
        for volume in prepared.volumes:
            found = uuids.get(volume.device)
            if found != volume.uuid:
                now = f"UUID {found}" if found else "no file system"
                raise PrepareError(
                    TARGET_CHANGED,
                    f"{volume.device} was prepared with UUID {volume.uuid} but now holds {now}; "
                    "the target was changed since (start the task again from the beginning)",
                )
        await self.mount(prepared)

    async def mount(self, prepared: PreparedTarget) -> None:
        """Mount the tree under the root, parents first; what is mounted already stays."""
        mounted = await self._mounts_below()
        for volume in prepared.mounts():
            self._checkpoint()
            where = self._path(volume.mount_point or "/")
            if where in mounted:
                continue
            await self._must(("mkdir", "-p", "--", where), f"make {where}")
            await self._must(
                (
                    "mount",
                    "-t",
                    volume.fstype,
                    *_mount_options(volume.fstype),
                    volume.device,
                    where,
                ),
                f"mount {volume.device} at {where}",
                code=MOUNT_FAILED,
            )

    async def unmount(self) -> None:
        """Take down every mount at or below the root, deepest first (all of them the agent's
        own: `prepare` refuses a root where something else is mounted), then sync.

        One remote command, so that a STOP is answered without a round trip per mount.
        """
        result = await self._session.run(
            ("sh", "-c", _UNMOUNT_SCRIPT, "unmount", self._root), COMMAND_TIMEOUT_S
        )
        if not result.ok:
            detail = result.stderr_tail[-1] if result.stderr_tail else f"exit {result.returncode}"
            raise PrepareError(MOUNT_FAILED, f"{self._root} cannot be unmounted: {detail}")

    # -- helpers --

    def _path(self, mount_point: str) -> str:
        relative = mount_point.strip("/")
        return posixpath.join(self._root, relative) if relative else self._root

    async def _mounts_below(self) -> list[str]:
        return [mount.target for mount in await self._mount_table_below()]

    async def _mount_table_below(self) -> list[_Mount]:
        """The mounts at or below the root, deepest first."""
        result = await self._session.run(
            ("findmnt", "--raw", "--noheadings", "--output", "TARGET,SOURCE,FSTYPE"),
            COMMAND_TIMEOUT_S,
        )
        if not result.ok:
            return []
        root = self._root.rstrip("/")
        found: dict[str, _Mount] = {}
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            fields = line.split(" ")
            if len(fields) != 3:
                continue
            target, source, fstype = (_unraw(field) for field in fields)
            if target == self._root or target.startswith(root + "/"):
                found[target] = _Mount(target, source, fstype)
        return sorted(found.values(), key=lambda m: (-m.target.count("/"), m.target))

    async def _check_own_mounts(self, layout: TargetLayout) -> None:
        """Refuse when something the task does not name is mounted at or below the root."""
        ours = {v.device for v in layout.volumes()} | {
            f"/dev/mapper/{lv.volume_group.replace('-', '--')}-{lv.name.replace('-', '--')}"
            for group in layout.volume_groups
            for lv in group.logical_volumes
        }
        for mount in await self._mount_table_below():
            if mount.source not in ours and mount.fstype not in _PSEUDO_FS:
                raise PrepareError(
                    DISK_IN_USE,
                    f"{mount.source} is mounted at {mount.target}, inside the target root "
                    f"{self._root}, and the task does not name it; nothing was written",
                )

    async def _release_old_groups(self, layout: TargetLayout, devices: TargetDevices) -> None:
        """Deactivate and remove LVM groups that live only on the task's disks (checked)."""
        groups: set[str] = set()
        for disk in layout.disks:
            node = devices.find(disk.device)
            if node is not None:
                groups |= {
                    devices.pv_groups[n.path] for n in node.walk() if n.path in devices.pv_groups
                }
        for group in sorted(groups):
            self._checkpoint()
            await self._session.run(("vgchange", "--activate", "n", group), COMMAND_TIMEOUT_S)
            await self._must(
                ("vgremove", "--force", "--force", "--yes", group),
                f"remove the old volume group {group}",
            )

    async def _wait_for_partitions(self, layout: TargetLayout, device: str) -> None:
        """Make the kernel see the new partitions and wait for their device nodes.

        sfdisk asks the kernel to re-read the table; where it cannot (a loop device without
        partition scanning), partx adds them. Without udev there is nothing to settle.
        """
        disk = next(d for d in layout.disks if d.device == device)
        await self._session.run(("partx", "--update", device), COMMAND_TIMEOUT_S)
        await self._session.run(("partx", "--add", device), COMMAND_TIMEOUT_S)
        await self._session.run(("udevadm", "settle", "--timeout=10"), COMMAND_TIMEOUT_S)
        paths = [p.path for p in disk.partitions]
        waited = await self._session.run(
            (
                "sh",
                "-c",
                'n=$1; shift; i=0; while [ "$i" -lt "$n" ]; do ok=1; '
                'for p in "$@"; do [ -b "$p" ] || ok=0; done; [ "$ok" = 1 ] && exit 0; '
                "sleep 0.2; i=$((i + 1)); done; exit 1",
                "wait-partitions",
                str(int(NODE_WAIT_S / 0.2)),
                *paths,
            ),
            NODE_WAIT_S + COMMAND_TIMEOUT_S,
        )
        if not waited.ok:
            raise PrepareError(
                PREPARE_FAILED,
                f"the partitions of {device} did not appear ({', '.join(paths)}) "
                f"within {NODE_WAIT_S:g} s",
            )

    async def _uuids(self, devices: Sequence[str], *, missing_ok: bool = False) -> dict[str, str]:
        """The UUID each device's file system or swap reports now (`blkid -p`, no cache)."""
        found: dict[str, str] = {}
        for device in devices:
            result = await self._session.run(
                ("blkid", "--probe", "--output", "export", "--", device), COMMAND_TIMEOUT_S
            )
            values = dict(
                line.split("=", 1)
                for line in result.stdout.decode("utf-8", "replace").splitlines()
                if "=" in line
            )
            uuid = values.get("UUID")
            if uuid:
                found[device] = uuid
            elif not missing_ok:
                raise PrepareError(PREPARE_FAILED, f"{device} has no UUID after it was formatted")
        return found

    async def _must(
        self,
        argv: Sequence[str],
        what: str,
        timeout_s: float = COMMAND_TIMEOUT_S,
        *,
        code: str = PREPARE_FAILED,
    ) -> CompletedRemote:
        result = await self._session.run(argv, timeout_s)
        if not result.ok:
            detail = result.stderr_tail[-1] if result.stderr_tail else f"exit {result.returncode}"
            raise PrepareError(
                code, f"{what} failed on the target: {detail} ({shlex.join(argv[:3])}...)"
            )
        return result


def _mount_options(fstype: str) -> tuple[str, ...]:
    """Options for mounting a target file system.

    XFS refuses to mount a second file system with a UUID it has mounted already. A block copy
    gives the target the source's UUID, and a target machine made from the same image as the
    source, or a helper with the source's disk attached, may hold one: `nouuid` skips only that
    check.
    """
    return ("-o", "nouuid") if fstype == "xfs" else ()
