"""Parse `blkid -p -o export`: what is on each device (file system, partition table, UUIDs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Optional

from smsagent.api.enums import PartitionStyle

BLKID_ARGV: Final = ("blkid", "-p", "-o", "export")

# blkid names partition tables after their on-disk format; SMS knows two of them.
_PARTITION_STYLES: Final = {"dos": PartitionStyle.MBR, "gpt": PartitionStyle.GPT}


def blkid_argv(device_paths: Sequence[str]) -> list[str]:
    """The low-level probe of the given devices; `-p` bypasses blkid's cache, which may be stale."""
    return [*BLKID_ARGV, *device_paths]


def parse_blkid_export(text: str) -> dict[str, dict[str, str]]:
    """Map each DEVNAME to its KEY=value tags; blocks are separated by blank lines."""
    devices: dict[str, dict[str, str]] = {}
    tags: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if "DEVNAME" in tags:
                devices[tags["DEVNAME"]] = tags
            tags = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            tags[key.strip()] = _unescape(value)
    return devices


def partition_style(pttype: Optional[str]) -> Optional[PartitionStyle]:
    """MBR or GPT from a blkid/lsblk PTTYPE; None for no table or one SMS cannot migrate."""
    if pttype is None:
        return None
    return _PARTITION_STYLES.get(pttype.lower())


def _unescape(value: str) -> str:
    # The export format backslash-escapes shell-special characters (spaces in labels, quotes).
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)
