"""Parse btrfs-progs output: file systems, their RAID profiles, subvolumes and default subvolume."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Optional

SHOW_ARGV: Final = ("btrfs", "filesystem", "show", "--raw")

_LABEL_LINE: Final = re.compile(r"^Label:\s+(?:'(?P<label>.*)'|none)\s+uuid:\s+(?P<uuid>\S+)")
_USED_LINE: Final = re.compile(r"Total devices\s+(?P<count>\d+)\s+FS bytes used\s+(?P<used>\d+)")
_DEVICE_LINE: Final = re.compile(
    r"devid\s+(?P<devid>\d+)\s+size\s+(?P<size>\d+)\s+used\s+(?P<used>\d+)\s+path\s+(?P<path>\S+)"
)
_DF_LINE: Final = re.compile(
    r"^(?P<kind>\w+),\s*(?P<profile>[\w-]+):\s*total=(?P<total>\d+),\s*used=(?P<used>\d+)"
)
_SUBVOLUME_LINE: Final = re.compile(
    r"^ID\s+(?P<id>\d+)\s+gen\s+\d+\s+parent\s+(?P<parent>\d+)\s+top level\s+\d+"
    r"\s+parent_uuid\s+(?P<parent_uuid>\S+)\s+uuid\s+(?P<uuid>\S+)\s+path\s+(?P<path>.+)$"
)
_DEFAULT_LINE: Final = re.compile(r"^ID\s+(?P<id>\d+)\b(?:.*\bpath\s+(?P<path>.+))?")

TOP_LEVEL_ID: Final = "5"


@dataclass(frozen=True)
class BtrfsDevice:
    devid: int
    size_bytes: int
    used_bytes: int
    path: str


@dataclass(frozen=True)
class BtrfsShow:
    """One file system of `btrfs filesystem show`."""

    uuid: str
    label: str
    used_bytes: int
    devices: tuple[BtrfsDevice, ...]

    @property
    def size_bytes(self) -> int:
        """The capacity: the sum of the member devices' sizes."""
        return sum(device.size_bytes for device in self.devices)


@dataclass(frozen=True)
class BtrfsProfile:
    profile: str
    total_bytes: int
    used_bytes: int


@dataclass(frozen=True)
class BtrfsSubvolume:
    subvol_id: str
    parent_id: str
    parent_uuid: str
    uuid: str
    path: str

    @property
    def is_snapshot(self) -> bool:
        """A snapshot records the subvolume it was taken from; a plain subvolume has `-`."""
        return self.parent_uuid not in ("", "-")


def show_argv() -> list[str]:
    """Every btrfs file system btrfs-progs can see, sizes in bytes."""
    return list(SHOW_ARGV)


def df_argv(mount_point: str) -> list[str]:
    """Allocation per block-group type (Data, System, Metadata, GlobalReserve) of a mounted fs."""
    return ["btrfs", "filesystem", "df", "--raw", mount_point]


def subvolume_list_argv(mount_point: str) -> list[str]:
    """Subvolumes with parent id (-p), uuid (-u) and parent uuid (-q)."""
    return ["btrfs", "subvolume", "list", "-p", "-u", "-q", mount_point]


def get_default_argv(mount_point: str) -> list[str]:
    """The subvolume mounted when no `subvol=` option is given."""
    return ["btrfs", "subvolume", "get-default", mount_point]


def parse_filesystem_show(text: str) -> list[BtrfsShow]:
    """File systems in output order; a block starts at each `Label:` line."""
    found: list[BtrfsShow] = []
    current: Optional[BtrfsShow] = None
    for line in text.splitlines():
        label = _LABEL_LINE.match(line.strip())
        if label:
            if current:
                found.append(current)
            current = BtrfsShow(label.group("uuid"), label.group("label") or "", 0, ())
            continue
        if current is not None:
            current = _add_show_line(current, line)
    if current:
        found.append(current)
    return found


def _add_show_line(current: BtrfsShow, line: str) -> BtrfsShow:
    used = _USED_LINE.search(line)
    if used:
        return BtrfsShow(current.uuid, current.label, int(used.group("used")), current.devices)
    device = _DEVICE_LINE.search(line)
    if device:
        member = BtrfsDevice(
            int(device.group("devid")),
            int(device.group("size")),
            int(device.group("used")),
            device.group("path"),
        )
        return BtrfsShow(
            current.uuid, current.label, current.used_bytes, (*current.devices, member)
        )
    return current


def parse_filesystem_df(text: str) -> dict[str, BtrfsProfile]:
    """Map `Data`, `System`, `Metadata`, `GlobalReserve` to their profile and sizes."""
    profiles = {}
    for line in text.splitlines():
        match = _DF_LINE.match(line.strip())
        if match:
            profiles[match.group("kind")] = BtrfsProfile(
                match.group("profile"), int(match.group("total")), int(match.group("used"))
            )
    return profiles


def parse_subvolume_list(text: str) -> list[BtrfsSubvolume]:
    """Subvolumes of `btrfs subvolume list -p -u -q`, in listing order."""
    volumes = []
    for line in text.splitlines():
        match = _SUBVOLUME_LINE.match(line.strip())
        if match:
            volumes.append(
                BtrfsSubvolume(
                    subvol_id=match.group("id"),
                    parent_id=match.group("parent"),
                    parent_uuid=match.group("parent_uuid"),
                    uuid=match.group("uuid"),
                    path=match.group("path").strip(),
                )
            )
    return volumes


def parse_get_default(text: str) -> Optional[tuple[str, str]]:
    """(id, path) of the default subvolume; the top level (`ID 5 (FS_TREE)`) has path `/`."""
    match = _DEFAULT_LINE.match(text.strip())
    if not match:
        return None
    subvol_id = match.group("id")
    path = match.group("path")
    if subvol_id == TOP_LEVEL_ID or not path:
        return subvol_id, "/"
    return subvol_id, path.strip()
