"""The speed limit in force: the task's time windows (spec §3.16) read by the local clock.

A window `HH:MM`-`HH:MM` at `speed` Mbit/s applies from its start (inclusive) to its end
(exclusive); a window whose end is before its start runs over midnight, one whose end equals its
start lasts all day, and an end of `23:59` or `24:00` means the end of the day. Where windows
overlap the lowest positive limit wins; `speed` 0 means unlimited. Outside every window the task's
own `speed_limit` applies (0 or unset: unlimited).

`SpeedLimitWatch` keeps the limit current while a copy runs: it reads the windows from SMS every
`refresh_s` (a console change arrives within that time) and wakes at each window boundary, and it
tells its subscribers when the limit in force changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Final, Optional

import structlog

from smsagent.api.errors import SmsError
from smsagent.api.models import SpeedLimitWindow

log = structlog.get_logger(__name__)

MINUTES_PER_DAY: Final = 24 * 60
DEFAULT_REFRESH_S: Final = 60.0
UNLIMITED: Final = 0


@dataclass(frozen=True)
class Window:
    """One time window, in minutes of the day.

    Attributes:
        start_min: first minute the limit applies.
        end_min: first minute it no longer applies (may be below `start_min`: over midnight).
        speed_mbit_s: the limit; 0 is unlimited.
    """

    start_min: int
    end_min: int
    speed_mbit_s: int

    def covers(self, minute_of_day: float) -> bool:
        """Whether the window applies at `minute_of_day` (0 <= minute < 1440)."""
        if self.start_min == self.end_min:
            return True
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def to_window(wire: SpeedLimitWindow) -> Window:
    """The window a `SpeedLimitlJson` describes."""
    end_min = _minutes(wire.end)
    if end_min >= MINUTES_PER_DAY - 1:
        # "23:59" is how the console writes "until midnight".
        end_min = 0
    return Window(_minutes(wire.start), end_min, wire.speed)


def _minute_of_day(moment: datetime) -> float:
    return moment.hour * 60 + moment.minute + (moment.second + moment.microsecond / 1e6) / 60


def limit_at(windows: Sequence[Window], moment: datetime, default_mbit_s: int = UNLIMITED) -> int:
    """The limit in force at `moment` (local time), Mbit/s; 0 is unlimited.

    Args:
        default_mbit_s: the limit outside every window (the task's `speed_limit`).
    """
    minute = _minute_of_day(moment)
    matching = [window.speed_mbit_s for window in windows if window.covers(minute)]
    if not matching:
        return max(UNLIMITED, default_mbit_s)
    positive = [speed for speed in matching if speed > 0]
    return min(positive) if positive else UNLIMITED


def seconds_to_boundary(windows: Sequence[Window], moment: datetime) -> Optional[float]:
    """Seconds from `moment` to the next window start or end; None when there are no windows."""
    minute = _minute_of_day(moment)
    edges = {edge for window in windows for edge in (window.start_min, window.end_min)}
    if not edges:
        return None
    ahead_min = min((edge - minute) % MINUTES_PER_DAY or MINUTES_PER_DAY for edge in edges)
    return ahead_min * 60.0


FetchWindows = Callable[[], Awaitable[Sequence[SpeedLimitWindow]]]


class SpeedLimitWatch:
    """The limit in force for one task, kept current while its copy runs.

    Args:
        fetch: reads the task's windows from SMS (`GET speed-limit`).
        default_mbit_s: the task's own `speed_limit`, used outside every window.
        refresh_s: how often the windows are read again.
        now: the local wall clock.
    """

    def __init__(
        self,
        fetch: FetchWindows,
        default_mbit_s: int = UNLIMITED,
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self._fetch = fetch
        self._default_mbit_s = max(UNLIMITED, default_mbit_s)
        self._refresh_s = refresh_s
        self._now = now
        self._windows: tuple[Window, ...] = ()
        self._current_mbit_s = self._default_mbit_s
        self._changed: Optional[asyncio.Event] = None

    @property
    def current_mbit_s(self) -> int:
        """The limit in force, Mbit/s; 0 is unlimited."""
        return self._current_mbit_s

    def next_change(self) -> asyncio.Event:
        """An event set the next time the limit in force changes."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def refresh(self) -> int:
        """Read the windows again (keeping the last ones if SMS cannot answer) and re-evaluate."""
        try:
            windows = await self._fetch()
        except SmsError as exc:
            log.warning("speed_limit_unknown", error=str(exc), kept_mbit_s=self._current_mbit_s)
        else:
            self._windows = tuple(to_window(window) for window in windows)
        return self.evaluate()

    def evaluate(self) -> int:
        """Work out the limit in force now; wake the subscribers if it changed."""
        limit = limit_at(self._windows, self._now(), self._default_mbit_s)
        if limit != self._current_mbit_s:
            log.info("speed_limit_changed", from_mbit_s=self._current_mbit_s, to_mbit_s=limit)
            self._current_mbit_s = limit
            changed, self._changed = self._changed, None
            if changed is not None:
                changed.set()
        return limit

    def _sleep_s(self) -> float:
        boundary_s = seconds_to_boundary(self._windows, self._now())
        if boundary_s is None:
            return self._refresh_s
        # A moment past the boundary, so the new window is the one found.
        return min(self._refresh_s, boundary_s + 0.5)

    async def run(self) -> None:
        """Keep the limit current until cancelled (the first read is `refresh`'s job)."""
        loop = asyncio.get_running_loop()
        # The refresh schedule runs on the monotonic clock: a wall-clock step must not stall it.
        next_refresh_at = loop.time() + self._refresh_s
        while True:
            await asyncio.sleep(max(0.0, min(self._sleep_s(), next_refresh_at - loop.time())))
            if loop.time() >= next_refresh_at:
                await self.refresh()
                next_refresh_at = loop.time() + self._refresh_s
            else:
                self.evaluate()
