"""The speed limit in force: windows read by the local clock, and the watch that follows them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from smsagent.api.errors import SmsError
from smsagent.api.models import SpeedLimitWindow
from smsagent.migration.speedlimit import (
    SpeedLimitWatch,
    Window,
    limit_at,
    seconds_to_boundary,
    to_window,
)

DAY = datetime(2026, 11, 27)


def at(hhmm: str, second: int = 0) -> datetime:
    hours, minutes = hhmm.split(":")
    return DAY.replace(hour=int(hours), minute=int(minutes), second=second)


def windows(*specs: tuple[str, str, int]) -> list[Window]:
    return [to_window(SpeedLimitWindow(start=s, end=e, speed=mbit)) for s, e, mbit in specs]


class TestLimitAt:
    @pytest.mark.parametrize(
        ("specs", "moment", "expected"),
        [
            ((), "12:00", 0),
            ((("08:00", "18:00", 50),), "12:00", 50),
            ((("08:00", "18:00", 50),), "08:00", 50),
            ((("08:00", "18:00", 50),), "18:00", 0),
            ((("08:00", "18:00", 50),), "07:59", 0),
            ((("22:00", "06:00", 20),), "23:30", 20),
            ((("22:00", "06:00", 20),), "05:59", 20),
            ((("22:00", "06:00", 20),), "06:00", 0),
            ((("00:00", "23:59", 80),), "23:59", 80),
            ((("00:00", "00:00", 30),), "13:13", 30),
            ((("08:00", "24:00", 40),), "23:59", 40),
            ((("00:00", "23:59", 0),), "10:00", 0),
            ((("00:00", "23:59", 100), ("09:00", "10:00", 10)), "09:30", 10),
            ((("00:00", "23:59", 0), ("09:00", "10:00", 10)), "09:30", 10),
        ],
    )
    def test_window_in_force(
        self, specs: Sequence[tuple[str, str, int]], moment: str, expected: int
    ) -> None:
        """Start inclusive, end exclusive, over midnight, all day; the lowest positive wins."""
        assert limit_at(windows(*specs), at(moment)) == expected

    def test_task_limit_applies_outside_every_window(self) -> None:
        """Outside the windows the task's own `speed_limit` holds; inside, the window's."""
        night = windows(("22:00", "06:00", 20))
        assert limit_at(night, at("12:00"), default_mbit_s=70) == 70
        assert limit_at(night, at("23:00"), default_mbit_s=70) == 20

    def test_seconds_to_the_next_edge(self) -> None:
        """The next start or end, wrapping over midnight; None without windows."""
        some = windows(("08:00", "18:00", 50))
        assert seconds_to_boundary(some, at("07:59", 30)) == pytest.approx(30.0)
        assert seconds_to_boundary(some, at("12:00")) == pytest.approx(6 * 3600.0)
        assert seconds_to_boundary(some, at("19:00")) == pytest.approx(13 * 3600.0)
        assert seconds_to_boundary([], at("12:00")) is None


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Windows:
    """The `GET speed-limit` answers a watch sees, changed by the test."""

    def __init__(self, *specs: tuple[str, str, int]) -> None:
        self.answer: list[SpeedLimitWindow] = []
        self.error: bool = False
        self.reads = 0
        self.set(*specs)

    def set(self, *specs: tuple[str, str, int]) -> None:
        self.answer = [SpeedLimitWindow(start=s, end=e, speed=m) for s, e, m in specs]

    async def __call__(self) -> list[SpeedLimitWindow]:
        self.reads += 1
        if self.error:
            raise SmsError(method="GET", path="/v3/tasks/t/speed-limit", status=503)
        return self.answer


class TestWatch:
    async def test_refresh_reads_and_evaluates(self) -> None:
        """The first read sets the limit in force; the task's limit holds outside windows."""
        source = Windows(("08:00", "18:00", 50))
        clock = Clock(at("12:00"))
        watch = SpeedLimitWatch(source, 70, now=clock)
        assert await watch.refresh() == 50
        clock.now = at("19:00")
        assert watch.evaluate() == 70

    async def test_a_change_wakes_subscribers_once(self) -> None:
        """A subscriber's event is set when the limit changes, not when it stays."""
        source = Windows(("00:00", "23:59", 80))
        watch = SpeedLimitWatch(source, now=Clock(at("12:00")))
        await watch.refresh()
        changed = watch.next_change()
        await watch.refresh()
        assert not changed.is_set()
        source.set(("00:00", "23:59", 40))
        assert await watch.refresh() == 40
        assert changed.is_set()
        assert not watch.next_change().is_set()

    async def test_sms_error_keeps_the_last_windows(self) -> None:
        """When SMS cannot answer, the windows read last stay in force."""
        source = Windows(("00:00", "23:59", 80))
        watch = SpeedLimitWatch(source, now=Clock(at("12:00")))
        await watch.refresh()
        source.error = True
        assert await watch.refresh() == 80

    @pytest.mark.timeout(10)
    async def test_run_rereads_and_crosses_boundaries(self) -> None:
        """While running, a console change is read within `refresh_s`."""
        source = Windows(("00:00", "23:59", 80))
        watch = SpeedLimitWatch(source, now=Clock(at("12:00")), refresh_s=0.05)
        await watch.refresh()
        changed = watch.next_change()
        runner = asyncio.ensure_future(watch.run())
        try:
            source.set()
            await asyncio.wait_for(changed.wait(), timeout=5)
            assert watch.current_mbit_s == 0
            assert source.reads >= 2
        finally:
            runner.cancel()

    @pytest.mark.timeout(10)
    async def test_run_wakes_at_a_window_edge(self) -> None:
        """A window that begins takes effect at its start, without waiting for a re-read."""
        source = Windows(("12:00", "13:00", 25))
        clock = Clock(at("11:59", 59) + timedelta(microseconds=900_000))
        watch = SpeedLimitWatch(source, now=clock, refresh_s=3600)
        await watch.refresh()
        assert watch.current_mbit_s == 0
        changed = watch.next_change()
        runner = asyncio.ensure_future(watch.run())
        try:
            await asyncio.sleep(0)
            clock.now = at("12:00", 1)
            await asyncio.wait_for(changed.wait(), timeout=5)
            assert watch.current_mbit_s == 25
            assert source.reads == 1
        finally:
            runner.cancel()
