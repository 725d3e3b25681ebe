"""The receiver's disk side: direct writes with a buffered tail, and the disk thread's batches.

These run on regular files in the test's directory (the e2e tests write loop devices through a
real TLS connection); a file system without direct I/O falls back to buffered writes, which the
same checks cover.
"""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from smsagent.migration.block import receiver

pytestmark = pytest.mark.timeout(30)

KIB = 1024


def a_volume(tmp_path: Path, size: int) -> receiver.Volume:
    path = tmp_path / "target.img"
    path.write_bytes(b"\xee" * size)
    return receiver.Volume(str(path), size)


def test_aligned_and_unaligned_pieces_land_where_they_were_sent(tmp_path: Path) -> None:
    """An aligned piece goes direct, a device's odd-sized last piece buffered, and direct
    writes go on after it; every byte lands, and the fsync makes them durable."""
    size = 256 * KIB + 1000
    volume = a_volume(tmp_path, size)
    direct_at_start = volume.direct
    first, second, tail = os.urandom(64 * KIB), os.urandom(128 * KIB), os.urandom(1000)
    try:
        volume.write(0, first)
        volume.write(256 * KIB, tail)
        volume.write(64 * KIB, second)
        assert volume.direct == direct_at_start  # the tail did not turn direct writes off
        volume.sync()
    finally:
        volume.close()
    body = (tmp_path / "target.img").read_bytes()
    assert body[: 64 * KIB] == first
    assert body[64 * KIB : 192 * KIB] == second
    assert body[192 * KIB : 256 * KIB] == b"\xee" * (64 * KIB)
    assert body[256 * KIB :] == tail


def test_a_piece_larger_than_the_aligned_buffer_is_written_whole(tmp_path: Path) -> None:
    size = receiver.DIRECT_BUFFER * 2 + 64 * KIB
    volume = a_volume(tmp_path, size)
    data = os.urandom(size)
    try:
        volume.write(0, data)
        volume.sync()
    finally:
        volume.close()
    assert (tmp_path / "target.img").read_bytes() == data


def test_the_disk_thread_reports_a_batch_durable_once_the_source_pauses(tmp_path: Path) -> None:
    volume = a_volume(tmp_path, 1024 * KIB)
    disk = receiver.DiskWriter(batch_bytes=16 * 1024 * KIB)
    pieces = [os.urandom(256 * KIB) for _ in range(4)]
    try:
        for seq, piece in enumerate(pieces):
            disk.write(seq, volume, seq * 256 * KIB, piece, len(piece))
        disk.idle()
        assert disk.durable == 3
        readable, _, _ = select.select([disk.wake_read], [], [], 0)
        assert readable, "the network thread is woken to send the acknowledgement"
    finally:
        disk.close()
        volume.close()
    assert (tmp_path / "target.img").read_bytes() == b"".join(pieces)


def test_a_failing_disk_ends_the_connection_instead_of_hanging(tmp_path: Path) -> None:
    volume = a_volume(tmp_path, 1024 * KIB)
    os.close(volume.fd)
    volume.fd = os.open(os.devnull, os.O_RDONLY)  # every write now fails
    disk = receiver.DiskWriter(batch_bytes=16 * 1024 * KIB)
    try:
        disk.write(0, volume, 0, os.urandom(64 * KIB), 64 * KIB)
        disk.idle()
        assert isinstance(disk.error, OSError)
        assert disk.durable is None
    finally:
        disk.close()
        volume.close()


def test_a_wake_pipe_nobody_reads_never_stops_the_disk_thread(tmp_path: Path) -> None:
    """While frames keep arriving the network thread may not read the wake pipe for a long
    time: the disk thread goes on making batches durable."""
    volume = a_volume(tmp_path, 64 * KIB)
    disk = receiver.DiskWriter(batch_bytes=16 * 1024 * KIB)
    try:
        while True:  # fill the pipe as a long connection would
            try:
                os.write(disk.wake_write, b"x" * 4096)
            except BlockingIOError:
                break
        data = os.urandom(64 * KIB)
        for seq in range(3):
            disk.write(seq, volume, 0, data, len(data))
            disk.idle()
        assert disk.durable == 2 and disk.error is None
    finally:
        disk.close()
        volume.close()
