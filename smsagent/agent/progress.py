"""Progress reports for a task: `PUT /v3/tasks/{id}/progress`, throttled, latest wins.

A handler calls `report()` as often as it likes; it never waits for the network. A sender
task sends the newest figures when `progress_interval` has passed since the last report, or
at once for a forced report (stage start and end). A slow server therefore delays reports but
never builds a backlog, and a failed report is simply superseded by the next one.

Two figures, never mixed: `bytes_done` of `bytes_total` is how far the stage is (`replicatesize`
of `totalsize`, in the unit of `totalsize`: the used bytes of the file systems copied), and
`bytes_sent` is what the movers actually sent. The rate (`migrate_speed`, the remaining time) comes
from `bytes_sent` alone, so a sync pass that compares a whole server but sends a few files shows
the rate of those few files, never the comparison's pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Final, Optional, Protocol

import structlog

from smsagent.api.enums import SubtaskName
from smsagent.api.errors import SmsError
from smsagent.api.models import UpdateTaskSpeedReq
from smsagent.inventory.usage import UsageSampler
from smsagent.units import BITS_PER_MBIT, mbit_s, mib
from smsagent.waits import wait_any

log = structlog.get_logger(__name__)

RATE_WINDOW_S: Final = 5.0  # the console's rate is the data moved in the last 5 s


class ProgressClient(Protocol):
    async def update_task_speed(self, task_id: str, body: UpdateTaskSpeedReq) -> None: ...


@dataclass(frozen=True)
class Figures:
    """What one report says."""

    stage: SubtaskName
    bytes_done: int
    bytes_total: int
    at_s: float
    bytes_sent: Optional[int] = None
    compress_percent: Optional[float] = None


def percent(bytes_done: int, bytes_total: int) -> int:
    """Whole percent done, 100 only when everything is done."""
    if bytes_total <= 0:
        return 100 if bytes_done >= 0 else 0
    share = min(max(bytes_done, 0), bytes_total) * 100 // bytes_total
    return int(share if bytes_done < bytes_total else 100)


class RateMeter:
    """Bytes per second over the last `window_s`, from (time, bytes) samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at_s: float, bytes_done: int) -> None:
        if self._samples and bytes_done < self._samples[-1][1]:
            self._samples.clear()  # a new stage counts from zero
        self._samples.append((at_s, bytes_done))
        while len(self._samples) > 2 and at_s - self._samples[1][0] >= self._window_s:
            self._samples.popleft()

    def bytes_per_s(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def process_trace(figures: Figures, rate_bytes_s: float) -> str:
    """The free-text detail shown with the progress: how far, and (when data moves) what was
    sent and at which rate."""
    text = f"{figures.stage.value}: {mib(figures.bytes_done)} of {mib(figures.bytes_total)}"
    if figures.bytes_sent is None:
        return text
    return f"{text}, sent {mib(figures.bytes_sent)}, {mbit_s(rate_bytes_s)}"


class TaskProgress:
    """The `ProgressReporter` of one task's work; `close()` sends what is still owed.

    Args:
        client: sends the reports.
        task_id: the task reported on.
        interval_s: shortest period between unforced reports.
        monotonic: seconds for throttling and rates.
        now: local wall time, sent as `agent_time`.
    """

    def __init__(
        self,
        client: ProgressClient,
        task_id: str,
        interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self._client = client
        self._task_id = task_id
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._now = now
        self._rate = RateMeter()
        self._usage = UsageSampler(monotonic)
        self._latest: Optional[Figures] = None
        self._last_sent: Optional[Figures] = None
        self._sent_at: Optional[float] = None
        self._changed = asyncio.Event()
        self._forced = asyncio.Event()
        self._held: list[Figures] = []
        self._sender: Optional[asyncio.Task[None]] = None

    async def report(
        self,
        stage: SubtaskName,
        bytes_done: int,
        bytes_total: int,
        *,
        force: bool = False,
        bytes_sent: Optional[int] = None,
        compress_percent: Optional[float] = None,
    ) -> None:
        """Record the newest figures; they are sent by the sender task.

        `bytes_sent` counts what the stage has sent so far (None: the stage sends no data, and
        no rate is shown).
        """
        figures = Figures(
            stage, bytes_done, bytes_total, self._monotonic(), bytes_sent, compress_percent
        )
        if self._latest is not None and self._latest.stage != stage:
            self._rate = RateMeter()
            if self._forced.is_set():
                # A stage's forced last figures (its 100 %) are not replaced by the next
                # stage's first ones before they were sent: SMS would never see the stage end.
                self._held.append(self._latest)
        if bytes_sent is not None:
            self._rate.add(figures.at_s, bytes_sent)
        self._latest = figures
        if force:
            self._forced.set()
        self._changed.set()
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_loop())

    async def close(self) -> None:
        """Send the newest figures if unsent, then stop the sender."""
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        if self._latest is not None and self._latest != self._last_sent:
            await self._send()

    async def _send_loop(self) -> None:
        while True:
            await self._changed.wait()
            if self._sent_at is not None and not self._forced.is_set():
                wait_s = self._sent_at + self._interval_s - self._monotonic()
                if wait_s > 0:
                    await wait_any(self._forced, timeout_s=wait_s)
            await self._send()

    async def _send(self) -> None:
        figures = self._latest
        if figures is None:
            return
        self._changed.clear()
        self._forced.clear()
        self._sent_at = self._monotonic()
        held, self._held = self._held, []
        for earlier in held:
            await self._post(earlier)
        if await self._post(figures):
            self._last_sent = figures

    async def _post(self, figures: Figures) -> bool:
        try:
            await self._client.update_task_speed(self._task_id, self._body(figures))
        except SmsError as exc:
            log.warning("progress_report_failed", error=str(exc))
            return False
        return True

    def _body(self, figures: Figures) -> UpdateTaskSpeedReq:
        rate_bytes_s = max(self._rate.bytes_per_s(), 0.0) if figures.bytes_sent is not None else 0.0
        remaining = max(figures.bytes_total - figures.bytes_done, 0)
        usage = self._usage.sample()
        return UpdateTaskSpeedReq(
            subtask_name=figures.stage,
            progress=percent(figures.bytes_done, figures.bytes_total),
            replicatesize=max(figures.bytes_done, 0),
            totalsize=max(figures.bytes_total, 0),
            process_trace=process_trace(figures, rate_bytes_s),
            migrate_speed=round(rate_bytes_s * 8 / BITS_PER_MBIT, 3),
            compress_rate=(
                None if figures.compress_percent is None else round(figures.compress_percent, 1)
            ),
            remain_time=int(remaining / rate_bytes_s) if rate_bytes_s > 0 else None,
            total_cpu_usage=usage.total_cpu_pct,
            agent_cpu_usage=usage.agent_cpu_pct,
            total_mem_usage=usage.total_mem_mb,
            agent_mem_usage=usage.agent_mem_mb,
            agent_time=self._now().strftime("%Y-%m-%dT%H:%M:%S"),
        )
