"""Progress figures: whole percent, the rate over the last seconds, throttled sending."""

from __future__ import annotations

import asyncio

import pytest

from smsagent.agent.progress import RateMeter, TaskProgress, percent
from smsagent.api.enums import SubtaskName
from smsagent.api.models import UpdateTaskSpeedReq


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [(0, 100, 0), (99, 100, 99), (999, 1000, 99), (1000, 1000, 100), (5, 0, 100), (150, 100, 100)],
)
def test_percent_reaches_100_only_when_done(done, total, expected):
    """Percent is floored, so 100 means everything is done."""
    assert percent(done, total) == expected


def test_rate_is_over_the_recent_window():
    """The rate uses the samples of the last window, not the whole history."""
    meter = RateMeter(window_s=5.0)
    meter.add(0.0, 0)
    meter.add(100.0, 1_000)  # a long quiet start
    meter.add(102.0, 3_000)
    meter.add(106.0, 7_000)
    assert meter.bytes_per_s() == pytest.approx(1_000.0)


def test_rate_restarts_with_a_new_stage():
    """Bytes going down (a new stage) start a new measurement."""
    meter = RateMeter()
    meter.add(0.0, 5_000)
    meter.add(1.0, 0)
    assert meter.bytes_per_s() == 0.0


class RecordingClient:
    def __init__(self) -> None:
        self.bodies: list[UpdateTaskSpeedReq] = []
        self.sent = asyncio.Event()

    async def update_task_speed(self, task_id: str, body: UpdateTaskSpeedReq) -> None:
        self.bodies.append(body)
        self.sent.set()


async def test_unforced_reports_are_throttled_and_the_latest_wins():
    """Many reports within the interval send the first and then only the newest one."""
    clock = [0.0]
    client = RecordingClient()
    progress = TaskProgress(client, "t1", interval_s=5.0, monotonic=lambda: clock[0])
    await progress.report(SubtaskName.MIGRATE_LINUX_FILE, 0, 1000, force=True)
    await asyncio.wait_for(client.sent.wait(), 5)
    for done in (100, 200, 300):
        await progress.report(SubtaskName.MIGRATE_LINUX_FILE, done, 1000)
    await asyncio.sleep(0)  # let the sender see the change; it waits for the interval
    assert [b.replicatesize for b in client.bodies] == [0]
    await progress.close()
    assert [b.replicatesize for b in client.bodies] == [0, 300]
    assert client.bodies[-1].progress == 30
    assert client.bodies[-1].totalsize == 1000


async def test_a_forced_report_is_sent_without_waiting():
    """A forced report (stage end) does not wait for the interval."""
    client = RecordingClient()
    progress = TaskProgress(client, "t1", interval_s=3600.0)
    await progress.report(SubtaskName.MIGRATE_LINUX_FILE, 0, 10, force=True)
    await asyncio.wait_for(client.sent.wait(), 5)
    client.sent.clear()
    await progress.report(SubtaskName.MIGRATE_LINUX_FILE, 10, 10, force=True)
    await asyncio.wait_for(client.sent.wait(), 5)
    assert client.bodies[-1].progress == 100
    await progress.close()
    assert len(client.bodies) == 2


async def test_close_right_after_a_forced_report_returns():
    """`close()` ends the sender even when the cancel arrives just as a forced report wakes it
    from its throttling wait (`asyncio.wait_for` before Python 3.12 swallowed that cancel, and
    the work waited for the sender for ever)."""
    clock = [0.0]
    client = RecordingClient()
    progress = TaskProgress(client, "t1", interval_s=5.0, monotonic=lambda: clock[0])
    await progress.report(SubtaskName.MIGRATE_LINUX_FILE, 0, 10, force=True)
    await asyncio.wait_for(client.sent.wait(), 5)
    await progress.report(SubtaskName.MIGRATE_LINUX_FILE, 5, 10)
    for _ in range(5):
        await asyncio.sleep(0)  # the sender now waits out the interval
    await progress.report(SubtaskName.MIGRATE_LINUX_FILE, 10, 10, force=True)
    closing = asyncio.ensure_future(progress.close())
    done, _ = await asyncio.wait({closing}, timeout=2.0)
    closing.cancel()
    assert done, "close() did not return"
    assert client.bodies[-1].progress == 100


async def test_the_rate_comes_from_the_bytes_sent_not_from_how_far_the_stage_is():
    """A sync pass that compared everything in a second but sent 1 MB shows 8 Mbit/s, not the
    comparison's pace; the trace names both figures in MiB."""
    clock = [0.0]
    client = RecordingClient()
    progress = TaskProgress(client, "t1", interval_s=1.0, monotonic=lambda: clock[0])
    total = 60 * 1024 * 1024
    await progress.report(SubtaskName.SYNC_LINUX_FILE, 0, total, force=True, bytes_sent=0)
    clock[0] = 1.0
    await progress.report(
        SubtaskName.SYNC_LINUX_FILE, total, total, force=True, bytes_sent=1_000_000
    )
    await progress.close()
    last = client.bodies[-1]
    assert last.migrate_speed == pytest.approx(8.0)
    assert last.process_trace == "SYNC_LINUX_FILE: 60.0 MiB of 60.0 MiB, sent 1.0 MiB, 8.0 Mbit/s"


async def test_a_stage_that_sends_nothing_shows_no_rate():
    """Without `bytes_sent` (formatting, configuring) no rate and no remaining time are made up."""
    clock = [0.0]
    client = RecordingClient()
    progress = TaskProgress(client, "t1", interval_s=1.0, monotonic=lambda: clock[0])
    await progress.report(SubtaskName.CONFIGURE_LINUX_FILE, 0, 1, force=True)
    await asyncio.wait_for(client.sent.wait(), 5)
    clock[0] = 0.1
    await progress.report(SubtaskName.CONFIGURE_LINUX_FILE, 1, 1, force=True)
    await progress.close()
    assert [b.migrate_speed for b in client.bodies] == [0.0, 0.0]
    assert client.bodies[-1].remain_time is None


async def test_a_stage_end_is_sent_before_the_next_stage_replaces_it() -> None:
    """The last forced figures of a stage reach SMS even when the next stage reports at once."""
    sent: list[tuple[str, int]] = []
    release = asyncio.Event()

    class Client:
        async def update_task_speed(self, task_id: str, body: UpdateTaskSpeedReq) -> None:
            await release.wait()
            sent.append((str(body.subtask_name.value), body.progress))

    progress = TaskProgress(Client(), "t1", interval_s=60.0)
    await progress.report(SubtaskName.MIGRATE_LINUX_BLOCK, 10, 100)
    await asyncio.sleep(0)  # the first report is on its way, held by the server
    await progress.report(SubtaskName.MIGRATE_LINUX_BLOCK, 100, 100, force=True)
    await progress.report(SubtaskName.CONFIGURE_LINUX_BLOCK, 0, 1, force=True)
    release.set()
    await progress.close()
    assert ("MIGRATE_LINUX_BLOCK", 100) in sent
    assert sent.index(("MIGRATE_LINUX_BLOCK", 100)) < sent.index(("CONFIGURE_LINUX_BLOCK", 0))
