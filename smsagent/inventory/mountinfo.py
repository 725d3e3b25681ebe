"""Parse `/proc/self/mountinfo`: which file system is mounted where, from which device."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Optional

MOUNTINFO_PATH: Final = "/proc/self/mountinfo"

_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo.

    Args:
        major_minor: the device number of the mounted file system; `0:N` for btrfs, fuse and
            pseudo file systems, whose device must be found through `source` instead.
        root: the directory of the file system that is mounted here (`/data` for a btrfs
            subvolume or a bind mount of a subdirectory).
        source: the mount source, a device path for block-backed file systems.
    """

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    fstype: str
    source: str
    super_options: str

    def option(self, name: str) -> Optional[str]:
        """The value of a `name=value` super option (e.g. btrfs `subvolid`), or None."""
        for item in self.super_options.split(","):
            key, sep, value = item.partition("=")
            if sep and key == name:
                return value
        return None


def parse_mountinfo(text: str) -> list[Mount]:
    """All well-formed lines, in the kernel's order (parents before children); others skipped."""
    mounts = []
    for line in text.splitlines():
        mount = _parse_line(line)
        if mount is not None:
            mounts.append(mount)
    return mounts


def _parse_line(line: str) -> Optional[Mount]:
    fields = line.split()
    if "-" not in fields:
        return None
    separator = fields.index("-")
    if separator < 6 or len(fields) < separator + 3:
        return None
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    after = fields[separator + 1 :]
    return Mount(
        mount_id=mount_id,
        parent_id=parent_id,
        major_minor=fields[2],
        root=_unescape(fields[3]),
        mount_point=_unescape(fields[4]),
        fstype=after[0],
        source=_unescape(after[1]),
        super_options=after[2] if len(after) > 2 else "",
    )


def _unescape(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as three-digit octal escapes.
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
