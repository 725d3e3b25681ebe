"""Parse `lsblk --json --bytes` into a flat list of block devices with their parents."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Optional

# Columns every lsblk since util-linux 2.27 knows; FSTYPE/UUID/PTTYPE come from udev and are
# often empty (containers, no udevd), so blkid fills them in later.
LSBLK_ARGV: Final = (
    "lsblk",
    "--json",
    "--bytes",
    "--output",
    "NAME,KNAME,MAJ:MIN,SIZE,TYPE,PKNAME,RM,RO,FSTYPE,UUID,PTTYPE,LABEL",
)


class LsblkFormatError(ValueError):
    """The lsblk output is not the JSON document we asked for."""


@dataclass(frozen=True)
class BlockDevice:
    """One block device: a disk, a partition, an LV, a loop device...

    Args:
        name: lsblk NAME; for device-mapper devices the mapper name (`vg-root`).
        kname: the kernel name (`sda1`, `dm-0`).
        major_minor: `MAJ:MIN`, the key mountinfo uses.
        kind: lsblk TYPE (`disk`, `part`, `lvm`, `loop`, `rom`, `crypt`...).
        parents: knames of the devices this one sits on (two or more for a spanning LV).
    """

    name: str
    kname: str
    major_minor: str
    size_bytes: int
    kind: str
    parents: tuple[str, ...] = ()
    removable: bool = False
    read_only: bool = False
    fstype: Optional[str] = None
    uuid: Optional[str] = None
    pttype: Optional[str] = None
    label: Optional[str] = None

    @property
    def path(self) -> str:
        """The path users know it by: `/dev/mapper/NAME` for device-mapper, else `/dev/NAME`."""
        if self.kname.startswith("dm-"):
            return f"/dev/mapper/{self.name}"
        return f"/dev/{self.name}"

    @property
    def kernel_path(self) -> str:
        """`/dev/KNAME`, which exists for every device on a devtmpfs."""
        return f"/dev/{self.kname}"


def parse_lsblk(text: str) -> list[BlockDevice]:
    """Flatten lsblk's tree; a device listed under several parents appears once with all of them.

    Raises:
        LsblkFormatError: the text is not lsblk JSON.
    """
    try:
        document = json.loads(text)
        nodes = document["blockdevices"]
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"lsblk output is not a JSON object with 'blockdevices': {exc}"
        raise LsblkFormatError(msg) from exc
    merged: dict[str, BlockDevice] = {}
    for node, parent in _walk(nodes, None):
        device = _device(node, parent)
        known = merged.get(device.kname)
        if known is not None:
            device = _merge(known, device)
        merged[device.kname] = device
    return list(merged.values())


def _walk(nodes: Any, parent: Optional[str]) -> Iterator[tuple[Mapping[str, Any], Optional[str]]]:
    if not isinstance(nodes, list):
        return
    for node in nodes:
        if not isinstance(node, dict):
            continue
        yield node, parent
        yield from _walk(node.get("children"), _text(node.get("kname")))


def _device(node: Mapping[str, Any], parent: Optional[str]) -> BlockDevice:
    kname = _text(node.get("kname")) or _text(node.get("name")) or ""
    return BlockDevice(
        name=_text(node.get("name")) or kname,
        kname=kname,
        major_minor=_text(node.get("maj:min")) or "",
        size_bytes=_integer(node.get("size")),
        kind=_text(node.get("type")) or "",
        parents=(parent,) if parent else (),
        removable=_flag(node.get("rm")),
        read_only=_flag(node.get("ro")),
        fstype=_text(node.get("fstype")),
        uuid=_text(node.get("uuid")),
        pttype=_text(node.get("pttype")),
        label=_text(node.get("label")),
    )


def _merge(known: BlockDevice, again: BlockDevice) -> BlockDevice:
    parents = known.parents + tuple(p for p in again.parents if p not in known.parents)
    return dataclasses.replace(known, parents=parents)


def _text(value: Any) -> Optional[str]:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _integer(value: Any) -> int:
    # Old lsblk prints numbers as strings; an unparsable size is a device we cannot size.
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _flag(value: Any) -> bool:
    # lsblk 2.33+ prints JSON booleans, older versions "0"/"1".
    if isinstance(value, bool):
        return value
    return str(value).strip() in ("1", "true")
