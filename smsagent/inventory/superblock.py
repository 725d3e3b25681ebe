"""Read the inode size from an ext2/3/4 or XFS superblock (no other tool prints it cheaply)."""

from __future__ import annotations

import struct
from typing import Final, Optional

# Both superblocks live in the first 2 KiB: XFS at byte 0, ext at byte 1024.
SUPERBLOCK_BYTES: Final = 2048

_EXT_OFFSET: Final = 1024
_EXT_MAGIC: Final = 0xEF53
_EXT_GOOD_OLD_INODE_SIZE: Final = 128
_XFS_MAGIC: Final = b"XFSB"


def inode_size(fstype: Optional[str], head: bytes) -> Optional[int]:
    """Inode size in bytes from the first SUPERBLOCK_BYTES of a device, or None if unknown."""
    if fstype in ("ext2", "ext3", "ext4"):
        return _ext_inode_size(head)
    if fstype == "xfs":
        return _xfs_inode_size(head)
    return None


def _ext_inode_size(head: bytes) -> Optional[int]:
    # struct ext4_super_block: s_magic at 0x38, s_rev_level at 0x4C, s_inode_size at 0x58.
    block = head[_EXT_OFFSET : _EXT_OFFSET + 0x5A]
    if len(block) < 0x5A or struct.unpack_from("<H", block, 0x38)[0] != _EXT_MAGIC:
        return None
    if struct.unpack_from("<I", block, 0x4C)[0] == 0:
        return _EXT_GOOD_OLD_INODE_SIZE
    size: int = struct.unpack_from("<H", block, 0x58)[0]
    return size


def _xfs_inode_size(head: bytes) -> Optional[int]:
    # struct xfs_dsb (big-endian): sb_magicnum at 0, sb_inodesize at 104.
    if len(head) < 106 or head[:4] != _XFS_MAGIC:
        return None
    size: int = struct.unpack_from(">H", head, 104)[0]
    return size
