"""Disk-layout changes on real loop devices: the fingerprint, the disk-info body, the reporter."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from smsagent.api.models import PutDiskInfoReq, ServerDisk
from smsagent.inventory.builder import InventoryOptions, build_disk_info, layout_fingerprint
from smsagent.inventory.reporter import DiskReporter
from tests.support.blockdev import BlockLab, LoopDisk, Partition, missing_requirements, run
from tests.support.inventory_sdk import sdk_round_trip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.timeout(120),
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[BlockLab]:
    built = BlockLab(tmp_path)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def disk(lab: BlockLab) -> LoopDisk:
    """A 256 MiB GPT disk with one mounted 64 MiB ext4 partition and free space after it."""
    made = lab.loop_disk("changes", 256, "gpt", [Partition(64, "L")])
    lab.mkfs(made.partitions[0], "ext4")
    lab.mount(made.partitions[0], "ext4", "ext4")
    return made


def _disk_info(disk: LoopDisk) -> PutDiskInfoReq:
    return build_disk_info(options=InventoryOptions(extra_disks=(disk.kname,)))


def _loop_disk(body: PutDiskInfoReq, disk: LoopDisk) -> ServerDisk:
    return next(d for d in body.disks or [] if d.name == disk.path)


class TestFingerprint:
    def test_written_data_keeps_the_fingerprint(self, lab: BlockLab, disk: LoopDisk) -> None:
        """Used bytes change with every write; the layout (and its fingerprint) does not."""
        before = _disk_info(disk)
        (lab.root / "ext4" / "grow").write_bytes(os.urandom(4 * 1024 * 1024))
        run("sync")
        after = _disk_info(disk)
        assert _loop_disk(after, disk).used_size > _loop_disk(before, disk).used_size
        assert layout_fingerprint(after) == layout_fingerprint(before)

    def test_added_partition_changes_fingerprint_and_body(
        self, lab: BlockLab, disk: LoopDisk
    ) -> None:
        """A new 32 MiB partition appears in the disk-info body and changes the fingerprint."""
        before = _disk_info(disk)
        grown = lab.add_partition(disk, Partition(32, "L"))
        after = _disk_info(disk)
        assert layout_fingerprint(after) != layout_fingerprint(before)
        volumes = _loop_disk(after, disk).physical_volumes
        assert [v.name for v in volumes] == list(grown.partitions)
        assert volumes[1].size == int(run("blockdev", "--getsize64", grown.partitions[1]))
        assert volumes[1].size == 32 * 1024 * 1024

    def test_disk_info_body_fits_the_sdk_model(self, disk: LoopDisk) -> None:
        """The disk-info body round-trips through the official SDK's PutDiskInfoReq."""
        wire = _disk_info(disk).to_wire()
        assert sdk_round_trip(wire, "PutDiskInfoReq") == wire


class RecordingClient:
    """Stands in for SmsClient: this test is about when the reporter sends, not about HTTP."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[tuple[str, PutDiskInfoReq]] = asyncio.Queue()

    async def update_disk_info(self, source_id: str, body: PutDiskInfoReq) -> None:
        await self.sent.put((source_id, body))


class TestDiskReporter:
    async def test_reports_an_added_partition_at_the_next_check(
        self, lab: BlockLab, disk: LoopDisk
    ) -> None:
        """After registration nothing is re-sent until a partition is added; then it is, once."""
        registered = await asyncio.to_thread(_disk_info, disk)
        reporter = DiskReporter(
            collect=lambda: _disk_info(disk),
            check_interval_s=0.05,
            sent_fingerprint=layout_fingerprint(registered),
            sent_at=0.0,
        )
        client, stop = RecordingClient(), asyncio.Event()
        running = asyncio.create_task(
            reporter.run(client, "src-1", stop, 3600.0, clock=lambda: 1.0)
        )
        try:
            await asyncio.to_thread(lab.add_partition, disk, Partition(32, "L"))
            source_id, body = await asyncio.wait_for(client.sent.get(), timeout=30)
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=30)
        assert source_id == "src-1"
        assert len(_loop_disk(body, disk).physical_volumes) == 2
        assert client.sent.empty() and reporter.reports_sent == 1
