"""Reading a source volume: the sub-blocks that differ from what the target holds.

A pass walks the volume's used sub-blocks in order, a chunk at a time (`LINUX_BLOCK_CACHE_SIZE`),
reads each chunk with O_DIRECT (the production server's page cache is left alone, and a block
written through a file since the last pass is read from the disk, not from a stale device
cache), digests its sub-blocks and keeps the runs whose digest differs from the table. A full
copy is the same pass against an empty table.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from smsagent.migration.block.digests import DigestTable, digest
from smsagent.migration.block.extents import SUB_BLOCK, UsedMap
from smsagent.migration.block.volumes import ERROR_SOURCE_VOLUME, VolumeError

ZERO_BLOCK: Final = bytes(SUB_BLOCK)
ZERO_DIGEST: Final = digest(ZERO_BLOCK)


@dataclass(frozen=True)
class Piece:
    """A run of sub-blocks to send: `data`, or zeros when `data` is None.

    Attributes:
        offset: the byte offset in the volume.
        length: its length in bytes.
        first: its first sub-block.
        digests: the digest of each of its sub-blocks (set in the table once acknowledged).
        data: the bytes, or None for a run of zeros (a volume without an allocation map).
    """

    offset: int
    length: int
    first: int
    digests: tuple[int, ...]
    data: bytes | None

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Chunk:
    """One chunk read: where it ends in the volume, how much was read, and what differs."""

    end: int
    read_bytes: int
    pieces: tuple[Piece, ...]


def chunk_spans(used: UsedMap, chunk_bytes: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """(offset, length) of each chunk of used sub-blocks at or after `start`."""
    per_chunk = max(1, chunk_bytes // SUB_BLOCK)
    first_block = start // SUB_BLOCK
    for first, count in used.runs():
        end = first + count
        first = max(first, first_block)
        while first < end:
            blocks = min(per_chunk, end - first)
            offset = first * SUB_BLOCK
            yield offset, min(blocks * SUB_BLOCK, used.size - offset)
            first += blocks


class SourceReadError(VolumeError):
    """The source device cannot be read (not a dropped connection: no reconnect helps)."""

    def __init__(self, device: str, offset: int, exc: OSError) -> None:
        super().__init__(
            ERROR_SOURCE_VOLUME, f"{device} cannot be read at byte {offset}: {exc.strerror or exc}"
        )
        self.device = device


class VolumeReader:
    """Reads chunks of one source device, bypassing the page cache where the device allows.

    Raises:
        SourceReadError: the device cannot be opened or read.
    """

    def __init__(self, device: str, chunk_bytes: int) -> None:
        self.device = device
        self._direct = True
        try:
            self._fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        except OSError:
            self._direct = False
            try:
                self._fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise SourceReadError(device, 0, exc) from exc
        size = -(-chunk_bytes // SUB_BLOCK) * SUB_BLOCK
        self._buffer = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs

    def read(self, offset: int, length: int) -> bytes:
        view = memoryview(self._buffer)[:length]
        try:
            done = 0
            while done < length:
                try:
                    count = os.preadv(self._fd, [view[done:]], offset + done)
                except OSError as exc:
                    if not self._direct:
                        raise SourceReadError(self.device, offset + done, exc) from exc
                    self._reopen_buffered()
                    continue
                if count == 0:
                    ended = OSError(0, "the device ends before it")
                    raise SourceReadError(self.device, offset + done, ended)
                done += count
            if not self._direct:
                os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_DONTNEED)
            return bytes(view)
        finally:
            view.release()

    def _reopen_buffered(self) -> None:
        os.close(self._fd)
        self._fd = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        self._direct = False

    def close(self) -> None:
        os.close(self._fd)
        self._buffer.close()


def changed_chunk(
    reader: VolumeReader, table: DigestTable, offset: int, length: int, *, zeros: bool
) -> Chunk:
    """Read [offset, offset + length) and keep the runs of sub-blocks the table does not hold.

    With `zeros`, a run of all-zero sub-blocks becomes a zero piece (no data travels).
    """
    data = reader.read(offset, length)
    pieces: list[Piece] = []
    run_start = -1
    run_digests: list[int] = []
    run_zero = False

    def close_run(end: int) -> None:
        nonlocal run_start
        if run_start < 0:
            return
        body = None if run_zero else data[run_start:end]
        pieces.append(
            Piece(
                offset + run_start,
                end - run_start,
                (offset + run_start) // SUB_BLOCK,
                tuple(run_digests),
                body,
            )
        )
        run_start = -1
        run_digests.clear()

    for at in range(0, length, SUB_BLOCK):
        block = data[at : at + SUB_BLOCK]
        value = digest(block)
        if value == table.get((offset + at) // SUB_BLOCK):
            close_run(at)
            continue
        is_zero = zeros and (value == ZERO_DIGEST if len(block) == SUB_BLOCK else not any(block))
        if run_start >= 0 and is_zero != run_zero:
            close_run(at)
        if run_start < 0:
            run_start, run_zero = at, is_zero
        run_digests.append(value)
    close_run(length)
    return Chunk(offset + length, length, tuple(pieces))
