"""When the disk reporter sends: at the interval, on a layout change, and again after a failure.

The client here records calls instead of speaking HTTP: these tests are about the schedule; the
disk-info call itself is SmsClient's and is tested against the emulator there.
"""

from __future__ import annotations

import asyncio

import pytest

from smsagent.api.errors import ServerError
from smsagent.api.models import PhysicalVolume, PutDiskInfoReq, ServerDisk
from smsagent.inventory.builder import layout_fingerprint
from smsagent.inventory.reporter import DiskReporter

pytestmark = pytest.mark.timeout(10)


def disk_info(partitions: int, used_size: int = 0) -> PutDiskInfoReq:
    volumes = [
        PhysicalVolume(name=f"/dev/sdb{n}", size=2**20, used_size=used_size)
        for n in range(partitions)
    ]
    disk = ServerDisk(
        name="/dev/sdb",
        device_use="NORMAL",
        size=2**30,
        used_size=used_size,
        physical_volumes=volumes,
    )
    return PutDiskInfoReq(disks=[disk], volumegroups=[], btrfs_list=[])


class Layouts:
    """What `collect` returns next; tests change it between checks."""

    def __init__(self, body: PutDiskInfoReq) -> None:
        self.body = body

    def __call__(self) -> PutDiskInfoReq:
        return self.body


class RecordingClient:
    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, PutDiskInfoReq]] = []
        self.failures = failures
        self.delivered = asyncio.Event()

    async def update_disk_info(self, source_id: str, body: PutDiskInfoReq) -> None:
        if self.failures:
            self.failures -= 1
            raise ServerError(method="PUT", path=f"/v3/sources/{source_id}/diskinfo", status=503)
        self.sent.append((source_id, body))
        self.delivered.set()


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def registered_reporter(layouts: Layouts, clock: Clock) -> DiskReporter:
    return DiskReporter(
        collect=layouts,
        check_interval_s=0.01,
        sent_fingerprint=layout_fingerprint(layouts.body),
        sent_at=clock(),
    )


class TestCheckOnce:
    async def test_nothing_is_sent_right_after_registration(self) -> None:
        """Same layout, interval not over: no request."""
        layouts, clock, client = Layouts(disk_info(1)), Clock(), RecordingClient()
        reporter = registered_reporter(layouts, clock)
        assert await reporter.check_once(client, "src", 7200.0, clock) is False
        assert client.sent == []

    async def test_used_bytes_alone_do_not_trigger_a_report(self) -> None:
        """Data written to a disk is not a layout change."""
        layouts, clock, client = Layouts(disk_info(1)), Clock(), RecordingClient()
        reporter = registered_reporter(layouts, clock)
        layouts.body = disk_info(1, used_size=5 * 2**20)
        assert await reporter.check_once(client, "src", 7200.0, clock) is False

    async def test_a_layout_change_is_sent_at_once(self) -> None:
        """A new partition is sent at the next check, with the new layout."""
        layouts, clock, client = Layouts(disk_info(1)), Clock(), RecordingClient()
        reporter = registered_reporter(layouts, clock)
        layouts.body = disk_info(2)
        assert await reporter.check_once(client, "src", 7200.0, clock) is True
        assert client.sent == [("src", disk_info(2))]
        assert await reporter.check_once(client, "src", 7200.0, clock) is False

    async def test_the_interval_resends_an_unchanged_layout(self) -> None:
        """After `interval_s` the same layout is sent again, and again an interval later."""
        layouts, clock, client = Layouts(disk_info(1)), Clock(), RecordingClient()
        reporter = registered_reporter(layouts, clock)
        clock.now_s += 7199.0
        assert await reporter.check_once(client, "src", 7200.0, clock) is False
        clock.now_s += 1.0
        assert await reporter.check_once(client, "src", 7200.0, clock) is True
        clock.now_s += 7199.0
        assert await reporter.check_once(client, "src", 7200.0, clock) is False

    async def test_a_failed_report_is_retried_at_the_next_check(self) -> None:
        """An SMS error does not count as sent; the next check sends it."""
        layouts, clock, client = Layouts(disk_info(1)), Clock(), RecordingClient(failures=1)
        reporter = registered_reporter(layouts, clock)
        layouts.body = disk_info(3)
        assert await reporter.check_once(client, "src", 7200.0, clock) is False
        assert await reporter.check_once(client, "src", 7200.0, clock) is True
        assert len(client.sent) == 1 and reporter.reports_sent == 1

    async def test_never_sent_means_send_now(self) -> None:
        """Without a registration fingerprint the first check sends."""
        client = RecordingClient()
        reporter = DiskReporter(collect=Layouts(disk_info(1)), check_interval_s=0.01)
        assert await reporter.check_once(client, "src", 7200.0) is True


class TestRun:
    async def test_run_checks_until_stopped(self) -> None:
        """`run` keeps checking, sends a change, and returns soon after the stop event."""
        layouts, clock, client = Layouts(disk_info(1)), Clock(), RecordingClient()
        reporter = registered_reporter(layouts, clock)
        stop = asyncio.Event()
        running = asyncio.create_task(reporter.run(client, "src", stop, 7200.0, clock))
        layouts.body = disk_info(2)
        await asyncio.wait_for(client.delivered.wait(), timeout=5)
        stop.set()
        await asyncio.wait_for(running, timeout=2)
        assert client.sent == [("src", disk_info(2))]

    async def test_run_returns_at_once_when_already_stopped(self) -> None:
        """A set stop event ends `run` without collecting."""
        stop = asyncio.Event()
        stop.set()

        def never() -> PutDiskInfoReq:
            raise AssertionError("collected after stop")

        await DiskReporter(collect=never).run(RecordingClient(), "src", stop, 7200.0)
