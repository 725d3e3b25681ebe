"""Point-in-time copies of logical volumes: an LVM snapshot of each source LV while it is read.

A mounted ext2/3/4 or XFS on a logical volume is copied from a snapshot of it. `lvcreate
--snapshot` suspends the volume for an instant (device-mapper freezes its file system first, so
the snapshot holds a clean state); the pass then reads the snapshot, and its allocation map from
a private read-only mount of it, while the server goes on writing to the origin. That volume's
copy is one point in time: no live passes to converge, no freeze of the production file system.

The snapshot's copy-on-write space comes from the volume group's free extents: half of them,
shared among the group's snapshots, at most the origin's size, at least `MIN_COW_BYTES`; a group
with less gets none and its volumes are copied as a partition is (live passes, then a frozen
final pass). A snapshot whose space runs out becomes invalid and its reads fail: the work then
drops the snapshots and copies those volumes the same way. Thin volumes are left to that path.

Every snapshot is tagged with its task (`smsagent_task_<id>`) and removed as soon as the passes
that read it end. Should the agent end first, however it ends (`kill -9` too), a watchdog started
before the first snapshot removes them: it looks once a second whether the agent's process is
still there. The LVM commands and the watchdog run outside the agent's sandbox (`outside`): the
sandbox may not write to the server's disks, /etc/lvm or /run, and the watchdog must outlive the
agent's unit. A snapshot left by a power loss survives the reboot (LVM keeps it) and is removed
at the task's next command (`remove_leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Optional

from smsagent import outside
from smsagent.childproc import minimal_env
from smsagent.migration.block.extents import UsedMap, used_map
from smsagent.migration.block.volumes import BlockVolume

MIN_COW_BYTES: Final = 64 * 1024 * 1024
FREE_SHARE: Final = 0.5
COMMAND_TIMEOUT_S: Final = 120.0
SNAPSHOT_PREFIX: Final = "smsagent_snap_"
# A snapshot's own file system is mounted only to read its allocation map: read-only, and
# without replaying a journal (which would write to the snapshot).
_MAP_MOUNT_OPTIONS: Final = {"xfs": "ro,norecovery,nouuid"}
_EXT_MAP_MOUNT_OPTIONS: Final = "ro,noload"
# lv_attr's first letter: a plain volume, or the origin of another snapshot.
_PLAIN: Final = frozenset("-o")
_LVM_ENV: Final = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
_LVS_FIELDS: Final = (
    "vg_name,lv_name,lv_kernel_major,lv_kernel_minor,lv_attr,lv_size,vg_free,vg_extent_size"
)


class SnapshotError(Exception):
    """An LVM command failed (the volumes are then copied without a snapshot)."""


@dataclass(frozen=True)
class LogicalVolume:
    """A logical volume as `lvs` lists it; sizes in bytes."""

    vg: str
    lv: str
    attr: str
    size: int
    vg_free: int
    extent: int


@dataclass(frozen=True)
class Snapshot:
    """A snapshot taken for one volume of the task."""

    index: int
    vg: str
    name: str
    origin: str
    cow_bytes: int

    @property
    def device(self) -> str:
        return f"/dev/{self.vg}/{self.name}"


def task_tag(task_id: str) -> str:
    """The LVM tag of the task's snapshots (LVM allows letters, digits and `_+.-` in tags)."""
    return "smsagent_task_" + re.sub(r"[^A-Za-z0-9_+.-]", "_", task_id)


async def _run(argv: Sequence[str]) -> str:
    """Run an LVM command (outside the agent's sandbox); its standard output.

    Raises:
        SnapshotError: it failed or could not be run.
    """
    try:
        done = await outside.run(argv, COMMAND_TIMEOUT_S, "lvm", env=_LVM_ENV)
    except outside.OutsideError as exc:
        raise SnapshotError(str(exc)) from exc
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise SnapshotError(f"{argv[0]} exited {done.returncode}: {' '.join(lines[-2:])}")
    return done.stdout


def parse_lvs(text: str) -> dict[int, LogicalVolume]:
    """`lvs --separator '|'` output with `_LVS_FIELDS`, keyed by device number (`st_rdev`)."""
    found: dict[int, LogicalVolume] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 8:
            continue
        vg, lv, major, minor, attr, size, vg_free, extent = fields
        try:
            numbers = int(major), int(minor)
            volume = LogicalVolume(vg, lv, attr, int(size), int(vg_free), int(extent))
        except ValueError:
            continue
        if min(numbers) >= 0:  # an inactive volume has none (-1)
            found[os.makedev(*numbers)] = volume
    return found


async def logical_volumes() -> dict[int, LogicalVolume]:
    """The active logical volumes by device number; none where LVM is not installed."""
    if shutil.which("lvs") is None:
        return {}
    argv = ["lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|"]
    return parse_lvs(await _run([*argv, "-o", _LVS_FIELDS]))


def cow_sizes(
    wanted: Sequence[tuple[int, LogicalVolume]],
) -> tuple[dict[int, int], dict[int, str]]:
    """The copy-on-write size of each volume's snapshot, and why others get none.

    `wanted` pairs a volume's index with its logical volume.
    """
    per_group: dict[str, int] = {}
    for _, lv in wanted:
        per_group[lv.vg] = per_group.get(lv.vg, 0) + 1
    sizes: dict[int, int] = {}
    skipped: dict[int, str] = {}
    for index, lv in wanted:
        if lv.attr[:1] not in _PLAIN:
            skipped[index] = f"{lv.vg}/{lv.lv} is not a plain logical volume ({lv.attr})"
            continue
        share = int(lv.vg_free * FREE_SHARE) // per_group[lv.vg]
        size = min(share, lv.size) // max(lv.extent, 1) * max(lv.extent, 1)
        if size < MIN_COW_BYTES:
            skipped[index] = (
                f"volume group {lv.vg} has {lv.vg_free // 2**20} MiB free, too little for a "
                f"snapshot of {lv.lv}"
            )
            continue
        sizes[index] = size
    return sizes, skipped


def _watchdog(tag: str) -> outside.Detached:
    """A process that removes the tagged snapshots once the agent's process has ended (it
    looks once a second), unless stopped before."""
    script = (
        f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
        f"LVM_SUPPRESS_FD_WARNINGS=1 exec lvremove --force --yes @{tag}"
    )
    return outside.start_detached(["sh", "-c", script], "snapshot-watchdog")


async def remove_leftovers(task_id: str, log: Any) -> list[str]:
    """Remove the task's snapshots that an earlier run left (a power loss); their names."""
    if shutil.which("lvs") is None:
        return []
    tag = task_tag(task_id)
    try:
        text = await _run(["lvs", "--noheadings", "-o", "vg_name,lv_name", f"@{tag}"])
    except SnapshotError:
        return []
    names = ["/".join(line.split()) for line in text.splitlines() if line.strip()]
    if names:
        try:
            await _run(["lvremove", "--force", "--yes", f"@{tag}"])
        except SnapshotError as exc:
            log.warning("source_snapshot_leftover", snapshots=names, error=str(exc))
            return []
        log.warning("source_snapshot_leftover_removed", snapshots=names)
    return names


async def invalid(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    """The snapshots whose copy-on-write space ran out (LVM marks them invalid)."""
    if not snapshots:
        return []
    argv = ["lvs", "--noheadings", "-o", "lv_attr"]
    broken: list[Snapshot] = []
    for snapshot in snapshots:
        try:
            attr = (await _run([*argv, f"{snapshot.vg}/{snapshot.name}"])).strip()
        except SnapshotError:
            broken.append(snapshot)
            continue
        if len(attr) > 4 and attr[4] == "I":
            broken.append(snapshot)
    return broken


def snapshot_map(snapshot: Snapshot, fstype: str, size: int, workdir: str) -> UsedMap:
    """The used blocks of a snapshot's file system, from a private read-only mount of it.

    Raises:
        SnapshotError: it cannot be mounted, or its map read.
    """
    try:
        Path(workdir).mkdir(mode=0o700, parents=True, exist_ok=True)  # not made before a first pass
        with tempfile.TemporaryDirectory(prefix="snapmap-", dir=workdir) as point:
            return _mounted_map(snapshot, fstype, size, point)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SnapshotError(f"the used blocks of {snapshot.device} cannot be read: {exc}") from exc


def _mounted_map(snapshot: Snapshot, fstype: str, size: int, point: str) -> UsedMap:
    options = _MAP_MOUNT_OPTIONS.get(fstype, _EXT_MAP_MOUNT_OPTIONS)
    argv = ["mount", "-t", fstype, "-o", options, snapshot.device, point]
    done = subprocess.run(
        argv, capture_output=True, text=True, env=minimal_env(), check=False, timeout=60
    )
    if done.returncode != 0:
        raise SnapshotError(f"{snapshot.device} cannot be mounted: {done.stderr.strip()}")
    try:
        return used_map(size, point)
    finally:
        subprocess.run(
            ["umount", point], capture_output=True, env=minimal_env(), check=False, timeout=60
        )


def _device_number(path: str) -> Optional[int]:
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return info.st_rdev if stat.S_ISBLK(info.st_mode) else None


async def _logical(volumes: Sequence[BlockVolume], log: Any) -> list[tuple[int, LogicalVolume]]:
    """The volumes that are logical volumes: (index, its LV)."""
    if not volumes:
        return []
    try:
        listed = await logical_volumes()
    except SnapshotError as exc:
        log.warning("source_snapshot_unavailable", error=str(exc))
        return []
    found = []
    for volume in volumes:
        number = _device_number(volume.source_device)
        if number is not None and number in listed:
            found.append((volume.index, listed[number]))
    return found


@contextlib.asynccontextmanager
async def snapshots(
    volumes: Sequence[BlockVolume], task_id: str, log: Any
) -> AsyncIterator[dict[int, Snapshot]]:
    """A snapshot of each of `volumes` that is a logical volume with room for one, by volume
    index, for the body; removed on exit (by the watchdog should the agent end first).

    A volume without one (no LVM, no room, a failed `lvcreate`) is missing from the mapping, and
    is logged with the reason.
    """
    wanted = await _logical(volumes, log)
    if not wanted:
        yield {}
        return
    sizes, skipped = cow_sizes(wanted)
    for index, reason in skipped.items():
        log.warning("source_snapshot_skipped", volume=index, reason=reason)
    tag = task_tag(task_id)
    try:
        watchdog = await asyncio.to_thread(_watchdog, tag)
    except outside.OutsideError as exc:
        # Without it a snapshot could outlive a killed agent until the task's next command.
        log.warning("source_snapshot_unavailable", error=str(exc))
        yield {}
        return
    taken: dict[int, Snapshot] = {}
    try:
        for index, lv in wanted:
            if index not in sizes:
                continue
            snapshot = Snapshot(index, lv.vg, f"{SNAPSHOT_PREFIX}{index}", lv.lv, sizes[index])
            argv = [
                "lvcreate", "--snapshot", "--yes", "--name", snapshot.name,
                "--size", f"{snapshot.cow_bytes}b", "--addtag", "smsagent", "--addtag", tag,
                f"{lv.vg}/{lv.lv}",
            ]  # fmt: skip
            try:
                await _run(argv)
            except SnapshotError as exc:
                log.warning("source_snapshot_failed", volume=index, error=str(exc))
                continue
            taken[index] = snapshot
            log.info(
                "source_snapshot_taken",
                volume=index,
                origin=f"{lv.vg}/{lv.lv}",
                snapshot=snapshot.device,
                cow_bytes=snapshot.cow_bytes,
            )
        yield taken
    finally:
        if taken:
            try:
                await _run(["lvremove", "--force", "--yes", f"@{tag}"])
                log.info("source_snapshot_removed", snapshots=[s.device for s in taken.values()])
            except SnapshotError as exc:
                log.warning("source_snapshot_remove_failed", error=str(exc))
        await outside.stop_detached(watchdog)
