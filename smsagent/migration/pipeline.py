"""One copy pass of the file-level migration: the rsync streams of a `PassSpec` (`plan.py`) run
in parallel, with progress and the speed limit in force.

Two figures are kept apart. How far the pass is (`replicatesize` of `totalsize`, in the unit of
`totalsize`, the used bytes of the file systems copied): for a full copy the file data rsync has
transferred, added up over the streams and over restarts, never falling and held below 100 % until
the pass has ended; a sync pass sends little, so its progress is the share of files rsync has
compared. What was sent (the rate comes from it alone): while rsync runs, the file data it reports
transferred; at the end of each run, its own count of the bytes it sent (`Total bytes sent`: file
list, checksums and data, what the link carried). A change of the speed limit restarts the streams
with the new `--bwlimit` (rsync reuses its partial files).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Optional

from smsagent.agent.handler_api import HandlerContext
from smsagent.childproc import mover_env
from smsagent.migration.plan import PassSpec
from smsagent.migration.rsync import (
    ExitClass,
    PassKind,
    Progress,
    RetryPolicy,
    RsyncResult,
    build_argv,
    bwlimit_kib_s,
    run_rsync_with_retries,
)
from smsagent.migration.speedlimit import SpeedLimitWatch
from smsagent.target.session import TargetSession
from smsagent.units import mbit_s, mib

# Until a pass has ended its progress stays below this share: rsync's own 100 % is no proof.
SHOWN_CEILING: Final = 0.99


class PassProgress:
    """The progress of one pass over all its streams and restarts, never falling.

    Args:
        spec: the pass.
        start_bytes: how far an earlier, interrupted run of the same stage got.
    """

    def __init__(self, spec: PassSpec, start_bytes: int = 0) -> None:
        streams = len(spec.jobs)
        self._spec = spec
        self._start_bytes = start_bytes
        self._carried = [0] * streams
        self._current = [0] * streams
        self._checked = [0.0] * streams
        self._shown = min(start_bytes, self.ceiling)

    @property
    def ceiling(self) -> int:
        """The most a pass that has not ended shows."""
        return int(self._spec.total_bytes * SHOWN_CEILING)

    @property
    def bytes_done(self) -> int:
        """The bytes to report as replicated."""
        return self._shown

    @property
    def bytes_sent(self) -> int:
        """The file data rsync has reported transferred in this pass, over restarts."""
        return sum(self._carried) + sum(self._current)

    @property
    def carried_bytes(self) -> int:
        """What the runs cut short (restarts, retries) had transferred."""
        return sum(self._carried)

    def update(self, stream: int, progress: Progress) -> None:
        """Take a progress record of stream `stream`."""
        if progress.bytes_done < self._current[stream]:
            self.restart(stream)  # a new rsync run counts from zero again
        self._current[stream] = progress.bytes_done
        if progress.is_total_final and progress.files_total:
            checked = progress.files_total - (progress.files_to_check or 0)
            self._checked[stream] = max(self._checked[stream], checked / progress.files_total)
        self._shown = max(self._shown, min(self._estimate(), self.ceiling))

    def restart(self, stream: int) -> None:
        """Stream `stream` runs rsync again: what its last run sent stays counted."""
        self._carried[stream] += self._current[stream]
        self._current[stream] = 0

    def _estimate(self) -> int:
        if self._spec.kind is PassKind.sync:
            share = sum(s * c for s, c in zip(self._spec.shares, self._checked))
            return int(self._spec.total_bytes * share)
        return self._start_bytes + sum(self._carried) + sum(self._current)


@dataclass(frozen=True)
class PassOptions:
    """How a pass runs.

    Attributes:
        retry: reruns after network failures (`transfer_retries`).
        grace_s: how long rsync may wind down after SIGTERM before its group is killed.
        save_interval_s: how often the stage's progress is written to the task record.
        report_interval_s: how often the progress is passed to the reporter.
        mover_cgroup: the `cgroup.procs` the movers start in (the task's resource limits);
            None: the agent's own cgroup.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    grace_s: float = 20.0
    save_interval_s: float = 5.0
    report_interval_s: float = 0.5
    mover_cgroup: Optional[Path] = None


@dataclass(frozen=True)
class PassSummary:
    """How a pass went.

    Attributes:
        results: each stream's last rsync run.
        restarts: streams restarted for a new speed limit.
        retries: rsync runs repeated after a network failure.
        duration_s: wall time of the pass.
        kind: a full copy or a sync pass.
        bytes_total: `totalsize`: what there was to copy (a full copy) or to compare (a sync).
        carried_bytes: what runs cut short (restarts, retries) had transferred.
    """

    results: tuple[RsyncResult, ...]
    restarts: int
    retries: int
    duration_s: float
    kind: PassKind = PassKind.migrate
    bytes_total: int = 0
    carried_bytes: int = 0

    def _stat(self, name: str) -> int:
        return sum(getattr(r.stats, name) or 0 for r in self.results if r.stats is not None)

    @property
    def bytes_sent(self) -> int:
        """What the pass sent: rsync's `Total bytes sent` of each stream's last run, plus the
        file data of the runs cut short (rsync prints no statistics when it is stopped)."""
        sent = self.carried_bytes
        for result in self.results:
            if result.stats is not None and result.stats.bytes_sent is not None:
                sent += result.stats.bytes_sent
            elif result.last_progress is not None:
                sent += result.last_progress.bytes_done
        return sent

    @property
    def rate_bytes_s(self) -> float:
        """Bytes sent over the time the pass took."""
        return self.bytes_sent / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def files_total(self) -> int:
        """Entries rsync considered (files, directories, links), as its `Number of files`."""
        return self._stat("files_total")

    @property
    def files_transferred(self) -> int:
        """Regular files sent (by the last run of each stream)."""
        return self._stat("files_transferred")

    @property
    def literal_bytes(self) -> int:
        """File data sent as is (not matched against what the target had)."""
        return self._stat("literal_bytes")

    @property
    def files_vanished(self) -> bool:
        """Whether files disappeared while they were being copied (rsync exit 24)."""
        return any(r.outcome.exit_class is ExitClass.partial_warning for r in self.results)

    def describe(self) -> str:
        """One line for people: what there was, what was sent, at which rate."""
        did = "copied" if self.kind is PassKind.migrate else "compared"
        return (
            f"{did} {mib(self.bytes_total)} ({self.files_total} files), "
            f"sent {mib(self.bytes_sent)} ({self.files_transferred} files transferred) "
            f"in {self.duration_s:.1f} s at {mbit_s(self.rate_bytes_s)}"
        )

    def detail(self) -> dict[str, int | float | bool]:
        """The summary for a command result's detail (sizes in bytes: `bytes_total` is the
        pass's `totalsize`, `bytes_sent` what rsync sent)."""
        return {
            "bytes_total": self.bytes_total,
            "files_total": self.files_total,
            "bytes_sent": self.bytes_sent,
            "files_transferred": self.files_transferred,
            "literal_bytes": self.literal_bytes,
            "files_deleted": self._stat("files_deleted"),
            "files_vanished": self.files_vanished,
            "stream_restarts": self.restarts,
            "retries": self.retries,
            "streams": len(self.results),
            "duration_s": round(self.duration_s, 3),
        }


async def _set_when_first(stop: asyncio.Event, waits: Sequence[Awaitable[object]]) -> None:
    """Set `stop` as soon as any of `waits` completes."""
    pending = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
    finally:
        for waiter in pending:
            waiter.cancel()


class PassRunner:
    """Runs one pass: its streams in parallel, each restarted when the speed limit changes,
    progress reported and saved, and every child stopped when the work must stop.

    Args:
        ctx: the handler's context (cancellation, progress, task record).
        spec: the pass.
        target: the SSH session rsync goes through (None: the destination is a local
            directory).
        limits: the speed limit in force (already read once).
        options: retries, grace, save interval.
        start_bytes: progress an interrupted run of this stage had reached.
    """

    def __init__(
        self,
        ctx: HandlerContext,
        spec: PassSpec,
        target: Optional[TargetSession],
        limits: SpeedLimitWatch,
        options: PassOptions,
        start_bytes: int = 0,
    ) -> None:
        self._ctx = ctx
        self._spec = spec
        self._target = target
        self._limits = limits
        self._options = options
        self.progress = PassProgress(spec, start_bytes)
        # The newest record of each stream not yet counted: rsync writes one per file sent,
        # tens of thousands a second with small files, so they are taken in now and then.
        self._pending: list[Optional[Progress]] = [None] * len(spec.jobs)
        self._moved = asyncio.Event()
        self._abort = asyncio.Event()
        self._restarts = 0
        self._retries = 0
        self._saved_at = 0.0

    async def run(self) -> PassSummary:
        """Run every stream to its end.

        Raises:
            WorkCancelled: the work was asked to stop (every rsync has been stopped).
            RsyncError: a stream failed for good (the others have been stopped).
        """
        started_at = time.monotonic()
        helpers = [
            asyncio.ensure_future(self._limits.run()),
            asyncio.ensure_future(self._report()),
        ]
        streams = [asyncio.ensure_future(self._stream(i)) for i in range(len(self._spec.jobs))]
        try:
            results = await self._streams_done(streams, helpers)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            # However the pass ends, a resume must not count less than was reported.
            self._take_pending()
            await self._save(force=True)
        duration_s = time.monotonic() - started_at
        return PassSummary(
            tuple(results),
            self._restarts,
            self._retries,
            duration_s,
            kind=self._spec.kind,
            bytes_total=self._spec.total_bytes,
            carried_bytes=self.progress.carried_bytes,
        )

    async def _streams_done(
        self,
        streams: Sequence[asyncio.Task[Optional[RsyncResult]]],
        helpers: Sequence[asyncio.Task[None]],
    ) -> list[RsyncResult]:
        """Wait for every stream; at the first failure stop the others and raise it."""
        watched: set[asyncio.Future[Any]] = {*streams, *helpers}
        try:
            while not all(stream.done() for stream in streams):
                done, watched = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is not None:
                        raise error
        except BaseException:
            # Stop the other streams the way a STOP would (SIGTERM: partial files kept).
            self._abort.set()
            await asyncio.gather(*streams, return_exceptions=True)
            raise
        return [result for stream in streams if (result := stream.result()) is not None]

    async def _stream(self, index: int) -> Optional[RsyncResult]:
        """Run stream `index` to its end, restarting it whenever the speed limit changes."""
        while True:
            changed = self._limits.next_change()
            job = dataclasses.replace(
                self._spec.jobs[index],
                bwlimit_kib_s=bwlimit_kib_s(self._limits.current_mbit_s, len(self._spec.jobs)),
            )
            stop = asyncio.Event()
            waits = (self._ctx.cancel.wait(), changed.wait(), self._abort.wait())
            waker = asyncio.ensure_future(_set_when_first(stop, waits))
            try:
                result = await run_rsync_with_retries(
                    build_argv(job, self._target),
                    policy=self._options.retry,
                    on_progress=lambda progress: self._on_progress(index, progress),
                    cancel=stop,
                    env=mover_env(self._ctx.task_id or "-"),
                    grace_s=self._options.grace_s,
                    kind=self._spec.kind,
                    on_retry=lambda *_: self._on_retry(index),
                    cgroup=self._options.mover_cgroup,
                )
            finally:
                waker.cancel()
            if not result.cancelled:
                return result
            self._ctx.cancel.raise_if_cancelled()
            if self._abort.is_set():
                return None
            self._restarts += 1
            self._take_pending()
            self.progress.restart(index)
            self._ctx.log.info(
                "rsync_restarted", stream=index, speed_limit_mbit_s=self._limits.current_mbit_s
            )

    def _on_retry(self, index: int) -> None:
        self._retries += 1
        self._take_pending()
        self.progress.restart(index)

    def _on_progress(self, index: int, progress: Progress) -> None:
        self._pending[index] = progress
        self._moved.set()

    def _take_pending(self) -> None:
        for index, progress in enumerate(self._pending):
            if progress is not None:
                self.progress.update(index, progress)
        self._pending = [None] * len(self._pending)

    async def _report(self) -> None:
        """Pass the progress to the reporter (which throttles further) at most every
        `report_interval_s`, and save it now and then, so that a restart resumes with the
        bytes already counted."""
        while True:
            await self._moved.wait()
            self._moved.clear()
            self._take_pending()
            await self._ctx.progress.report(
                self._spec.stage,
                self.progress.bytes_done,
                self._spec.total_bytes,
                bytes_sent=self.progress.bytes_sent,
            )
            await self._save(force=False)
            await asyncio.sleep(self._options.report_interval_s)

    async def _save(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < self._options.save_interval_s:
            return
        self._saved_at = now
        stage, total = self._spec.stage.value, self._spec.total_bytes
        done = self.progress.bytes_done
        await self._ctx.update_task(
            lambda r: r.record_progress(stage, done, total, self._ctx.clock())
        )
