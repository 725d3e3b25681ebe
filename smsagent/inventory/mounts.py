"""Which file systems under the source root hold data to copy, read from /proc/self/mountinfo.

Only real local disk file systems are copied. Pseudo file systems (proc, sysfs, tmpfs, overlay,
squashfs...), network file systems and everything mounted below one of them are skipped, and so is
any mount that shows again a part of a file system already being copied (a bind mount, a second
mount of the same device, a btrfs top level above its subvolumes): rsync's `--one-file-system`
cannot see those duplicates because they are the same device.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MOUNTINFO: Final = Path("/proc/self/mountinfo")

# Block-backed (or, for zfs, pool-backed) local file systems that hold a server's data.
LOCAL_FS_TYPES: Final = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "vfat",
        "msdos",
        "exfat",
        "f2fs",
        "jfs",
        "reiserfs",
        "nilfs2",
        "bcachefs",
        "zfs",
        "ntfs",
        "ntfs3",
        "hfsplus",
    }
)

_ESCAPE_RE: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (proc(5))."""

    mount_id: int
    parent_id: int
    device: tuple[int, int]
    root: str
    mount_point: str
    fs_type: str
    source: str
    # The file system's own (super block) state, not this mount's: in a sandbox that mounts
    # everything read-only (systemd's ProtectSystem=strict) a file system the server writes to
    # still says `rw` here.
    read_only: bool = False


@dataclass(frozen=True)
class SourceFilesystem:
    """A file system to copy.

    Attributes:
        relative_path: where it is mounted, relative to the source root (`""`: the source root).
        mount_point: its absolute mount point (for the source root: the mount that holds it).
    """

    relative_path: str
    mount_point: str
    fs_type: str
    device: tuple[int, int]
    source: str


@dataclass(frozen=True)
class SkippedMount:
    """A mount under the source root that is not copied, and why.

    Its mount-point directory is still created on the target; its contents must be excluded
    explicitly, because `--one-file-system` cannot tell a bind mount from its own file system.
    """

    relative_path: str
    mount_point: str
    fs_type: str
    reason: str


@dataclass(frozen=True)
class MountSelection:
    """The file systems to copy (the source root's own first) and the mounts left out."""

    filesystems: tuple[SourceFilesystem, ...]
    skipped: tuple[SkippedMount, ...]


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (`\\040` for a space) and decode like the OS does."""
    raw = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field)
    return os.fsdecode(raw.encode("latin-1", "surrogateescape"))


def _parse_line(line: str) -> MountEntry:
    fields = line.split(" ")
    separator = fields.index("-", 6)  # optional fields sit between field 6 and the "-"
    major, minor = fields[2].split(":")
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        device=(int(major), int(minor)),
        root=_unescape(fields[3]),
        mount_point=_unescape(fields[4]),
        fs_type=fields[separator + 1],
        source=_unescape(fields[separator + 2]),
        read_only="ro" in fields[separator + 3].split(","),
    )


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text, in the kernel's order (a later mount on a path hides earlier ones).

    Raises:
        ValueError: naming the line that is not a mountinfo line.
    """
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(_parse_line(line))
        except (ValueError, IndexError) as exc:
            msg = f"mountinfo line {number} is malformed: {line!r}"
            raise ValueError(msg) from exc
    return entries


def read_mountinfo(path: Path = MOUNTINFO) -> list[MountEntry]:
    """This process's mount table."""
    # mountinfo paths are bytes; latin-1 maps every byte to one char for _unescape.
    return parse_mountinfo(path.read_bytes().decode("latin-1"))


def is_within(path: str, ancestor: str) -> bool:
    """True when `path` is `ancestor` or lies below it (both absolute, normalized)."""
    return ancestor == "/" or path == ancestor or path.startswith(ancestor + "/")


def _visible(entries: Sequence[MountEntry]) -> list[MountEntry]:
    """Drop mounts hidden by a later mount on the same mount point."""
    last_on_point = {entry.mount_point: entry for entry in entries}
    return [entry for entry in entries if last_on_point[entry.mount_point] is entry]


def _containing(entries: Sequence[MountEntry], source_root: str) -> MountEntry:
    holders = [entry for entry in entries if is_within(source_root, entry.mount_point)]
    if not holders:
        msg = f"source_root {source_root!r} lies on no mounted file system"
        raise ValueError(msg)
    return max(holders, key=lambda entry: len(entry.mount_point))


def _overlaps(entry: MountEntry, kept: Iterable[tuple[tuple[int, int], str, str]]) -> str:
    """The mount point of a kept file system that `entry` duplicates, or ""."""
    for device, root, mount_point in kept:
        if entry.device == device and (is_within(entry.root, root) or is_within(root, entry.root)):
            return mount_point
    return ""


def _skip_reason(
    entry: MountEntry,
    kept: list[tuple[tuple[int, int], str, str]],
    skipped_points: list[str],
    local_types: frozenset[str],
) -> str:
    for point in skipped_points:
        if is_within(entry.mount_point, point):
            return f"below {point}, which is not copied"
    if entry.fs_type not in local_types:
        return f"{entry.fs_type} is not a local disk file system"
    duplicate_of = _overlaps(entry, kept)
    if duplicate_of:
        return f"bind or repeated mount of the file system already copied at {duplicate_of}"
    return ""


def select_filesystems(
    entries: Sequence[MountEntry],
    source_root: str,
    *,
    local_types: frozenset[str] = LOCAL_FS_TYPES,
) -> MountSelection:
    """The file systems to copy under `source_root`, each once, and the mounts left out.

    The file system that holds `source_root` is always copied (whatever its type: the operator
    asked for it); mounts below it are copied when they are local disk file systems that show
    no data already being copied.

    Raises:
        ValueError: `source_root` is not absolute or lies on no mount.
    """
    if not source_root.startswith("/"):
        msg = f"source_root {source_root!r} must be an absolute path"
        raise ValueError(msg)
    root = posixpath.normpath(source_root)
    visible = _visible(entries)
    home = _containing(visible, root)
    # The part of the holding file system that the source root shows.
    home_root = posixpath.normpath(
        posixpath.join(home.root, posixpath.relpath(root, home.mount_point))
    )
    kept = [(home.device, home_root, root)]
    chosen = [SourceFilesystem("", home.mount_point, home.fs_type, home.device, home.source)]
    skipped: list[SkippedMount] = []
    below = [e for e in visible if e.mount_point != root and is_within(e.mount_point, root)]
    for entry in sorted(below, key=lambda e: e.mount_point.count("/")):
        reason = _skip_reason(entry, kept, [s.mount_point for s in skipped], local_types)
        if reason:
            relative = posixpath.relpath(entry.mount_point, root)
            skipped.append(SkippedMount(relative, entry.mount_point, entry.fs_type, reason))
            continue
        kept.append((entry.device, entry.root, entry.mount_point))
        relative = posixpath.relpath(entry.mount_point, root)
        chosen.append(
            SourceFilesystem(relative, entry.mount_point, entry.fs_type, entry.device, entry.source)
        )
    return MountSelection(tuple(chosen), tuple(skipped))
