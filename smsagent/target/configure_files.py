"""Changing files of the migrated tree so that the source's original is always kept once.

Every edit goes through `edit_files`: the file is read, a pure text transform applied, and only
if the text changed is the original copied to its backup (unless a backup exists already, so the
backup is always the source's own file, however often configure runs) and the new text written
atomically. Moving a file aside renames it to its backup name, numbered if that is taken.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Callable, Final, Optional

from smsagent.target.configure_report import (
    CONFIGURE_FAILED,
    Action,
    ConfigureError,
    ConfigureReport,
)
from smsagent.target.tree import TargetTree

BACKUP_SUFFIX: Final = ".smsagent.bak"
# Directories whose every file is read, whatever its name: ifupdown's `source
# /etc/network/interfaces.d/*`, initramfs-tools' conf.d (sourced in name order, so a backup
# would override the file it backs up), NetworkManager's keyfiles. A backup of a file in one of
# them goes to a sibling directory instead (`interfaces.d.smsagent.bak/eth0`).
_WHOLE_DIRS: Final = frozenset(
    {
        "/etc/network/interfaces.d",
        "/etc/initramfs-tools/conf.d",
        "/etc/NetworkManager/system-connections",
    }
)
# Numbered backups tried when moving something aside whose backup name is taken.
_MAX_NUMBERED: Final = 100

# A text transform: the file's text -> the text it should have.
Transform = Callable[[str], str]


def backup_path(path: str) -> str:
    """Where the source's original of `path` is kept."""
    parent, name = posixpath.split(path)
    if parent in _WHOLE_DIRS:
        return f"{parent}{BACKUP_SUFFIX}/{name}"
    return f"{path}{BACKUP_SUFFIX}"


def decode(data: bytes) -> str:
    """Text of a setting file; undecodable bytes survive the round trip unchanged."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


async def edit_files(
    tree: TargetTree,
    report: ConfigureReport,
    edits: Mapping[str, Transform],
    detail: str,
) -> dict[str, bool]:
    """Apply each transform to its file (all read in one go); a missing file is skipped.

    Returns:
        for each path, whether it was changed.
    """
    contents = await tree.read_files(list(edits))
    changed: dict[str, bool] = {}
    for path, transform in edits.items():
        data = contents[path]
        if data is None:
            changed[path] = False
            continue
        changed[path] = await write_if_changed(
            tree, report, path, data, transform(decode(data)), detail
        )
    return changed


async def write_if_changed(
    tree: TargetTree,
    report: ConfigureReport,
    path: str,
    old: Optional[bytes],
    new_text: str,
    detail: str,
    *,
    mode: int = 0o644,
) -> bool:
    """Write `new_text` to `path` unless it holds it already; back up an existing original.

    Returns:
        whether the file was written.
    """
    new = encode(new_text)
    if old == new:
        report.add(path, Action.UNCHANGED, detail)
        return False
    backup = None
    if old is not None:
        backup = await keep_backup(tree, path)
    await tree.write_file(path, new, mode=mode, make_parents=True)
    report.add(path, Action.EDITED if old is not None else Action.CREATED, detail, backup)
    return True


async def keep_backup(tree: TargetTree, path: str) -> str:
    """Copy `path` to its backup unless one exists (then that one is the source's original)."""
    backup = backup_path(path)
    if await tree.lstat(backup) is None:
        await tree.copy_file(path, backup, make_parents=True)
    return backup


async def move_aside(tree: TargetTree, report: ConfigureReport, path: str, detail: str) -> bool:
    """Rename `path` (a file, directory or link) to its backup name so nothing reads it.

    The first free name of `<backup>`, `<backup>.1`, ... is taken: a path that came back (a
    later sync copied it again) is moved aside too, and no earlier backup is overwritten.

    Returns:
        whether something was moved.
    """
    if await tree.lstat(path) is None:
        return False
    base = backup_path(path)
    for number in range(_MAX_NUMBERED):
        candidate = base if number == 0 else f"{base}.{number}"
        if await tree.lstat(candidate) is None:
            await tree.rename(path, candidate, make_parents=True)
            report.add(path, Action.MOVED_ASIDE, detail, candidate)
            return True
    raise ConfigureError(
        CONFIGURE_FAILED, f"cannot move {path} aside: {base} and {_MAX_NUMBERED - 1} more exist"
    )
