"""The digest table of a volume: what the target holds, sub-block by sub-block.

One 8-byte xxh3 digest per 64 KiB sub-block, in a file in the agent's state directory that is
memory-mapped (a 1 TiB volume needs 128 MiB of table, which the page cache holds, not the heap).
An entry is the digest of what the target has durably written there, or 0 when that is not
known; so a sync pass reads the source once, compares, and sends only what differs, and never
reads the target.

The table stays true through a crash: an entry is cleared before its sub-block is sent and set
only after the target acknowledged it (fsync'd). A `kill -9` keeps both (the page cache is the
kernel's); `flush()` makes them durable against a power loss and runs before the task record
is saved.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Final

import xxhash

from smsagent.migration.block.extents import SUB_BLOCK

ENTRY: Final = 8
UNKNOWN: Final = 0


def digest(data: bytes) -> int:
    """The digest of one sub-block; never `UNKNOWN`."""
    value = xxhash.xxh3_64_intdigest(data)
    return value or 1


class DigestTable:
    """The table of one volume of `size` bytes, in the file `path` (made if missing).

    A table whose file has another size belongs to another layout: it is started afresh.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.blocks = -(-size // SUB_BLOCK)
        length = max(self.blocks * ENTRY, ENTRY)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(descriptor).st_size != length:
                os.ftruncate(descriptor, 0)
                os.ftruncate(descriptor, length)
            self._map = mmap.mmap(descriptor, length)
        finally:
            os.close(descriptor)
        self._view = memoryview(self._map).cast("Q")

    def get(self, block: int) -> int:
        return int(self._view[block])

    def set(self, block: int, value: int) -> None:
        self._view[block] = value

    def clear(self, first: int, count: int) -> None:
        self._view[first : first + count] = memoryview(bytes(count * ENTRY)).cast("Q")

    def known(self) -> int:
        """How many sub-blocks have a digest (for logs and tests)."""
        return sum(1 for value in self._view if value != UNKNOWN)

    def reset(self) -> None:
        self.clear(0, self.blocks)

    def flush(self) -> None:
        self._map.flush()

    def close(self) -> None:
        self._view.release()
        self._map.close()
