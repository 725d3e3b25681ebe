"""The emulator accepts the registration body of a real loop-device layout and sees it change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from pydantic import SecretStr

from smsagent.api.auth import AkSkCredentials
from smsagent.api.client import SmsClient
from smsagent.inventory.builder import (
    InventoryOptions,
    build_disk_info,
    build_registration_body,
    layout_fingerprint,
)
from smsagent.inventory.reporter import DiskReporter
from tests.support.blockdev import BlockLab, LoopDisk, Partition, missing_requirements
from tests.support.emulator import EmulatorProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.timeout(120),
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[BlockLab, LoopDisk]]:
    """A 256 MiB GPT loop disk with one mounted ext4 partition and room for another."""
    lab = BlockLab(tmp_path)
    try:
        made = lab.loop_disk("emulated", 256, "gpt", [Partition(64, "L")])
        lab.mkfs(made.partitions[0], "ext4")
        lab.mount(made.partitions[0], "ext4", "ext4")
        yield lab, made
    finally:
        lab.close()


def _client(emulator: EmulatorProcess) -> SmsClient:
    return SmsClient(emulator.url, AkSkCredentials(emulator.ak, SecretStr(emulator.sk)))


def _stored_partitions(state: dict[str, Any], disk: LoopDisk) -> Optional[list[str]]:
    for source in state["sources"]:
        for stored in source.get("disks") or []:
            if stored["name"] == disk.path:
                return [volume["name"] for volume in stored["physical_volumes"]]
    return None


async def test_registration_then_disk_report_after_a_new_partition(
    emulator: EmulatorProcess, disk: tuple[BlockLab, LoopDisk]
) -> None:
    """Registered with one partition; once a second is added the reporter's PUT stores both."""
    lab, loop_disk = disk
    options = InventoryOptions(extra_disks=(loop_disk.kname,))
    body = await asyncio.to_thread(build_registration_body, "smsinvtest-emulated", options=options)
    async with _client(emulator) as client:
        source_id = (await client.register_server(body)).id
        registered = await asyncio.to_thread(emulator.state)
        assert _stored_partitions(registered, loop_disk) == list(loop_disk.partitions)
        reporter = DiskReporter(
            collect=lambda: build_disk_info(options=options),
            check_interval_s=0.05,
            sent_fingerprint=layout_fingerprint(body),
            sent_at=time.monotonic(),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(reporter.run(client, source_id, stop, 7200.0))
        try:
            grown = await asyncio.to_thread(lab.add_partition, loop_disk, Partition(32, "L"))
            stored = await emulator.wait_for_async(
                lambda state: _stored_partitions(state, loop_disk) == list(grown.partitions),
                timeout_s=30,
            )
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=30)
    assert stored and reporter.reports_sent == 1
