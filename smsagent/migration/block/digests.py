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

import contextlib
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Optional

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
        self._deferred: Optional[dict[int, int]] = None

    def get(self, block: int) -> int:
        if self._deferred is not None and block in self._deferred:
            return self._deferred[block]
        return int(self._view[block])

    def set(self, block: int, value: int) -> None:
        if self._deferred is not None:
            self._deferred[block] = value
        else:
            self._view[block] = value

    def clear(self, first: int, count: int) -> None:
        if self._deferred is not None:
            self._deferred.update(dict.fromkeys(range(first, first + count), UNKNOWN))
        else:
            self._view[first : first + count] = memoryview(bytes(count * ENTRY)).cast("Q")

    def clear_outside(self, runs: Iterable[tuple[int, int]]) -> None:
        """Forget every sub-block outside `runs` (first, count), sorted: what the file system no
        longer uses may be written on the target by anyone, and is sent again once used."""
        position = 0
        for first, count in [*runs, (self.blocks, 0)]:
            if first > position:
                self.clear(position, min(first, self.blocks) - position)
            position = max(position, first + count)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold every write in memory until the block ends, then apply them: while the source's
        file systems are frozen, the table's file (on one of them, perhaps) must not be written."""
        self._deferred = {}
        try:
            yield
        finally:
            pending, self._deferred = self._deferred, None
            for block, value in pending.items():
                self._view[block] = value

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
