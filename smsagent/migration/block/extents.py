"""Which parts of a source volume hold data: the file system's own allocation map.

A mounted ext4 or XFS answers `FS_IOC_GETFSMAP` with its free-space records in milliseconds;
everything that is not free (data, metadata, journal, inode tables) is used and copied. Where
no map exists (no file system the kernel maps, an unmounted volume, vfat, btrfs), the whole
volume is read and runs of zeros are sent as zero frames rather than data (`UsedMap.whole`).

The copy works in sub-blocks (`SUB_BLOCK`, 64 KiB): a sub-block is used when any byte of it is,
so the copy reads whole sub-blocks, which suits O_DIRECT alignment and the digest table.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Optional

SUB_BLOCK: Final = 64 * 1024
FS_IOC_GETFSMAP: Final = 0xC0C0583B
# struct fsmap: device, flags, physical, owner, offset, length, 3 reserved u64.
_RECORD: Final = struct.Struct("=IIQQQQ24x")
# struct fsmap_head: iflags, oflags, count, entries, 6 reserved u64; then two keys.
_HEAD: Final = struct.Struct("=IIII48x")
_KEYS_END: Final = _HEAD.size + 2 * _RECORD.size
FMR_OWN_FREE: Final = 1
FMR_OF_LAST: Final = 0x20
_BATCH: Final = 512
_NO_MAP: Final = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


@dataclass(frozen=True)
class UsedMap:
    """The used byte ranges of a volume of `size` bytes, sorted and disjoint.

    Attributes:
        size: the volume's size in bytes.
        ranges: (offset, length) of every used range.
        whole: no allocation map: every sub-block is read, zero runs travel as zero frames.
        source: where the map came from (`getfsmap`, `none`), for logs.
    """

    size: int
    ranges: tuple[tuple[int, int], ...]
    whole: bool
    source: str

    @property
    def used_bytes(self) -> int:
        return sum(length for _, length in self.ranges)

    def runs(self, block: int = SUB_BLOCK) -> Iterator[tuple[int, int]]:
        """(first sub-block, count) of each run of used sub-blocks, in order."""
        current: Optional[list[int]] = None
        for offset, length in self.ranges:
            first = offset // block
            last = (offset + length - 1) // block
            if current is not None and first <= current[0] + current[1]:
                current[1] = max(current[1], last - current[0] + 1)
                continue
            if current is not None:
                yield current[0], current[1]
            current = [first, last - first + 1]
        if current is not None:
            yield current[0], current[1]


def whole_map(size: int) -> UsedMap:
    """Every byte of the volume, for a volume without an allocation map."""
    return UsedMap(size, ((0, size),) if size else (), whole=True, source="none")


def used_map(size: int, mount_point: Optional[str]) -> UsedMap:
    """The used ranges of a volume of `size` bytes mounted at `mount_point` (or not mounted).

    The file system is synced first, so what its map calls used has its data on the device.
    """
    if mount_point is None:
        return whole_map(size)
    try:
        free = _free_ranges(mount_point)
    except OSError as exc:
        if exc.errno in _NO_MAP:
            return whole_map(size)
        raise
    return UsedMap(size, tuple(complement(free, size)), whole=False, source="getfsmap")


def complement(free: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The ranges of [0, size) not covered by `free` (which may overlap and be unsorted)."""
    used: list[tuple[int, int]] = []
    position = 0
    for offset, length in sorted(free):
        if offset > position:
            used.append((position, min(offset, size) - position))
        position = max(position, offset + length)
        if position >= size:
            break
    if position < size:
        used.append((position, size - position))
    return [(offset, length) for offset, length in used if length > 0]


def _free_ranges(mount_point: str) -> list[tuple[int, int]]:
    """The free-space records of the file system at `mount_point`, from FS_IOC_GETFSMAP."""
    descriptor = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
        if hasattr(os, "syncfs"):
            os.syncfs(descriptor)  # type: ignore[attr-defined,unused-ignore]
        return list(_query(descriptor))
    finally:
        os.close(descriptor)


def _query(descriptor: int) -> Iterator[tuple[int, int]]:
    low = _RECORD.pack(0, 0, 0, 0, 0, 0)
    high = _RECORD.pack(0xFFFFFFFF, 0xFFFFFFFF, 2**64 - 1, 2**64 - 1, 2**64 - 1, 0)
    device: Optional[int] = None
    while True:
        buffer = bytearray(_HEAD.pack(0, 0, _BATCH, 0) + low + high + bytes(_BATCH * _RECORD.size))
        fcntl.ioctl(descriptor, FS_IOC_GETFSMAP, buffer)
        entries = _HEAD.unpack_from(buffer, 0)[3]
        if entries == 0:
            return
        for index in range(entries):
            at = _KEYS_END + index * _RECORD.size
            record_device, flags, physical, owner, _, length = _RECORD.unpack_from(buffer, at)
            device = record_device if device is None else device
            # Records of another device (an external journal, a realtime device) are not
            # this volume's.
            if record_device == device and owner == FMR_OWN_FREE:
                yield physical, length
            if flags & FMR_OF_LAST:
                return
        last = _KEYS_END + (entries - 1) * _RECORD.size
        low = bytes(buffer[last : last + _RECORD.size])
