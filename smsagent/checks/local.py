"""Checks of this (the source) server: tools, `/tmp`, the file systems to copy and their size."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Optional

from smsagent.checks.model import Check, all_failed_as, bounded
from smsagent.childproc import DEFAULT_PATH
from smsagent.inventory.mounts import (
    MOUNTINFO,
    MountEntry,
    MountSelection,
    is_within,
    read_mountinfo,
    select_filesystems,
)

# SMS error codes of the source pre-checks (spec §6.3, §7.3).
RSYNC_MISSING: Final = "SMS.6517"
SSH_MISSING: Final = "SMS.1402"
TMP_NOEXEC: Final = "SMS.5102"
BIND_MOUNT: Final = "SMS.1353"
SOURCE_UNREADABLE: Final = "SMSAGENT.SOURCE_MOUNTS"

RSYNC_LOCAL: Final = "rsync_local"
SSH_CLIENT: Final = "ssh_client"
TMP_EXEC: Final = "tmp_exec"
SOURCE_DATA: Final = "source_data"
BIND_MOUNTS: Final = "bind_mounts"
SPEED_LIMIT_TC: Final = "speed_limit_tc"
LOCAL_CHECKS: Final = (RSYNC_LOCAL, SSH_CLIENT, TMP_EXEC, SOURCE_DATA, BIND_MOUNTS, SPEED_LIMIT_TC)


@dataclass(frozen=True)
class SourceData:
    """The file systems a migration would copy and the bytes they hold.

    Attributes:
        selection: the file systems to copy and the mounts left out.
        entries: the mount table they were chosen from.
        used_bytes: bytes in use on the chosen file systems, counted per file system as `df`
            does (a source root below a mount point counts its whole file system).
    """

    selection: MountSelection
    entries: tuple[MountEntry, ...]
    used_bytes: int


def human_bytes(count: int) -> str:
    """`1.5 GiB`, `12.0 MiB`, `512 B`: a size for a reason text."""
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def find_tool(name: str, search_path: str = DEFAULT_PATH) -> Optional[str]:
    """The absolute path of program `name` on the agent's search path, or None."""
    return shutil.which(name, path=search_path)


def tool_check(name: str, tool: str, found_at: Optional[str], error_code: str, use: str) -> Check:
    """OK when `tool` was found, else ERROR naming what it is needed for."""
    if found_at is None:
        return Check.error(name, f"{tool} is not installed; {use}", error_code)
    return Check.ok(name, f"{tool} found at {found_at}", path=found_at)


def check_rsync_local(search_path: str = DEFAULT_PATH) -> Check:
    """rsync must be on this server: it copies the files."""
    found = find_tool("rsync", search_path)
    return tool_check(RSYNC_LOCAL, "rsync", found, RSYNC_MISSING, "install it to copy files")


def check_ssh_client(search_path: str = DEFAULT_PATH) -> Check:
    """ssh must be on this server: rsync reaches the target through it."""
    found = find_tool("ssh", search_path)
    use = "install openssh-client (rsync reaches the target through it)"
    return tool_check(SSH_CLIENT, "ssh", found, SSH_MISSING, use)


def noexec_check(path: str, mount_flags: int) -> Check:
    """WARN when the mount holding `path` forbids running programs (statvfs `f_flag`)."""
    if mount_flags & os.ST_NOEXEC:
        return Check.warn(
            TMP_EXEC,
            f"{path} is mounted noexec; installers and tools that unpack helpers there "
            "cannot run them (remount it exec, or point TMPDIR elsewhere)",
            TMP_NOEXEC,
        )
    return Check.ok(TMP_EXEC, f"{path} allows running programs")


def check_tmp_exec(path: str = "/tmp") -> Check:
    """Whether programs can run from `path`, asked of the kernel for the mount that holds it."""
    # statvfs answers for the mount that really holds the path, through symlinks, bind mounts
    # and mount namespaces, where reading mountinfo would have to guess which entry applies.
    return noexec_check(path, os.statvfs(path).f_flag)


def used_bytes_of(
    selection: MountSelection, statvfs: Callable[[str], os.statvfs_result] = os.statvfs
) -> int:
    """Bytes in use on every chosen file system, from statvfs of its mount point."""
    total = 0
    for filesystem in selection.filesystems:
        usage = statvfs(filesystem.mount_point)
        total += (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    return total


def read_source_data(source_root: Path, mountinfo: Path = MOUNTINFO) -> SourceData:
    """Choose the file systems under `source_root` and count their used bytes.

    Raises:
        OSError: the mount table or a mount point cannot be read.
        ValueError: `source_root` is not absolute or lies on no mount.
    """
    entries = tuple(read_mountinfo(mountinfo))
    selection = select_filesystems(entries, str(source_root))
    return SourceData(selection, entries, used_bytes_of(selection))


def source_data_check(data: SourceData) -> Check:
    """OK with the size of what would be copied."""
    points = [fs.mount_point for fs in data.selection.filesystems]
    return Check.ok(
        SOURCE_DATA,
        f"{human_bytes(data.used_bytes)} in use on {len(points)} file system(s) to copy",
        used_bytes=data.used_bytes,
        mount_points=list(points),
    )


def duplicate_mounts(data: SourceData) -> list[str]:
    """Mount points left out because they show again a file system being copied.

    Mounts below a mount that is not copied at all (`/run`, `/proc`) do not count: nothing
    under them would have been copied anyway.
    """
    copied_devices = {fs.device for fs in data.selection.filesystems}
    skipped_points = [skipped.mount_point for skipped in data.selection.skipped]
    return [
        entry.mount_point
        for entry in data.entries
        if entry.mount_point in skipped_points
        and entry.device in copied_devices
        and not any(
            point != entry.mount_point and is_within(entry.mount_point, point)
            for point in skipped_points
        )
    ]


def bind_mounts_check(duplicates: Sequence[str]) -> Check:
    """WARN naming bind or repeated mounts: they are copied once, through their first mount."""
    if not duplicates:
        return Check.ok(BIND_MOUNTS, "no bind or repeated mounts of the file systems to copy")
    shown = ", ".join(duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
    return Check.warn(
        BIND_MOUNTS,
        f"bind or repeated mounts are skipped so their data is copied once: {shown}",
        BIND_MOUNT,
        mount_points=list(duplicates),
    )


def source_checks(source_root: Path, mountinfo: Path = MOUNTINFO) -> tuple[list[Check], int]:
    """The `source_data` and `bind_mounts` checks, and the bytes to copy (0 when unknown)."""
    try:
        data = read_source_data(source_root, mountinfo)
    except (OSError, ValueError) as exc:
        reason = f"cannot tell what to copy under {source_root}: {exc}"
        problem = Check.error(SOURCE_DATA, reason, SOURCE_UNREADABLE)
        return [problem, Check.not_checked(BIND_MOUNTS, "the mount table was not read")], 0
    checks = [source_data_check(data), bind_mounts_check(duplicate_mounts(data))]
    return checks, data.used_bytes


def speed_limit_check(limit_mbit_s: Optional[int], tc_path: Optional[str]) -> Check:
    """Whether `tc` is there when a speed limit is set.

    The agent keeps a limit with rsync's `--bwlimit`; `tc` would shape the whole interface, so
    its absence is a WARN, never an ERROR. `limit_mbit_s` None means no task is known.
    """
    where = f"tc found at {tc_path}" if tc_path else "tc is not installed"
    if not limit_mbit_s:
        scope = "no task to check" if limit_mbit_s is None else "the task sets no speed limit"
        return Check.ok(SPEED_LIMIT_TC, f"{scope}; {where}", tc=tc_path)
    if tc_path is None:
        return Check.warn(
            SPEED_LIMIT_TC,
            f"the task limits the speed to {limit_mbit_s} Mbit/s but tc is not installed; "
            "rsync keeps the limit per stream, nothing shapes the network interface",
            limit_mbit_s=limit_mbit_s,
        )
    return Check.ok(
        SPEED_LIMIT_TC,
        f"the task limits the speed to {limit_mbit_s} Mbit/s; {where}",
        limit_mbit_s=limit_mbit_s,
        tc=tc_path,
    )


def local_checks(
    source_root: Path, speed_limit_mbit_s: Optional[int], *, mountinfo: Path = MOUNTINFO
) -> tuple[list[Check], int]:
    """Every check of this server, and the bytes a migration would copy.

    Args:
        source_root: the root of the tree to migrate.
        speed_limit_mbit_s: the task's speed limit (0: none), or None without a task.
        mountinfo: the mount table to read.
    """
    checks = [check_rsync_local(), check_ssh_client(), check_tmp_exec()]
    source, used_bytes = source_checks(source_root, mountinfo)
    checks += source
    checks.append(speed_limit_check(speed_limit_mbit_s, find_tool("tc")))
    return checks, used_bytes


async def run_local_checks(
    source_root: Path, speed_limit_mbit_s: Optional[int], timeout_s: float
) -> tuple[list[Check], int]:
    """`local_checks` in a worker thread, within `timeout_s` (statvfs can hang on a sick disk)."""
    return await bounded(
        lambda: asyncio.to_thread(local_checks, source_root, speed_limit_mbit_s),
        timeout_s,
        lambda reason, error_code: (all_failed_as(*LOCAL_CHECKS)(reason, error_code), 0),
    )
