"""The rsync runner: one pass as a child in its own process group, stopped on request, retried.

`run_rsync` runs a pass to its end or until asked to stop; `run_rsync_with_retries` runs it again
after a network failure (rsync then reuses its partial files). The argv and the exit classes come
from `rsync_argv` and `rsync_exit`, re-exported here so callers need one import.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Optional

import structlog

from smsagent.childproc import (
    LineTail,
    drain_into,
    end_group,
    in_cgroup,
    minimal_env,
    stop_process,
)
from smsagent.migration.rsync_argv import (
    DEFAULT_IO_TIMEOUT_S,
    PARTIAL_DIR,
    PassKind,
    RsyncJob,
    build_argv,
    bwlimit_kib_s,
)
from smsagent.migration.rsync_exit import (
    MIGRATE_FAILED,
    NETWORK_FAILED,
    RSYNC_MISSING,
    SYNC_FAILED,
    ExitClass,
    ExitOutcome,
    classify_exit,
)
from smsagent.migration.rsync_output import OutputParser, Progress, RecordCallback, RsyncStats
from smsagent.waits import wait_any

__all__ = [
    "DEFAULT_GRACE_S",
    "DEFAULT_IO_TIMEOUT_S",
    "MIGRATE_FAILED",
    "NETWORK_FAILED",
    "PARTIAL_DIR",
    "RSYNC_MISSING",
    "SYNC_FAILED",
    "ExitClass",
    "ExitOutcome",
    "PassKind",
    "Progress",
    "ProgressCallback",
    "RetryCallback",
    "RetryPolicy",
    "RsyncError",
    "RsyncJob",
    "RsyncResult",
    "RsyncStats",
    "build_argv",
    "bwlimit_kib_s",
    "classify_exit",
    "run_rsync",
    "run_rsync_with_retries",
]

log = structlog.get_logger()

DEFAULT_GRACE_S: Final = 10.0

ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class RsyncResult:
    """How one rsync run ended.

    Times are `time.monotonic()` seconds: `stop_requested_at` is when the cancel event was seen,
    `terminate_sent_at` when SIGTERM went to rsync (both None unless stopped).
    """

    returncode: int
    outcome: ExitOutcome
    stats: Optional[RsyncStats]
    last_progress: Optional[Progress]
    stderr_tail: tuple[str, ...]
    started_at: float
    ended_at: float
    stop_requested_at: Optional[float] = None
    terminate_sent_at: Optional[float] = None

    @property
    def cancelled(self) -> bool:
        """True when the run ended because it was asked to stop."""
        return self.outcome.exit_class is ExitClass.cancelled

    @property
    def duration_s(self) -> float:
        """Wall time of the run."""
        return self.ended_at - self.started_at


class RsyncError(Exception):
    """A pass failed for good; `error_code` is the SMS code to report, `result` the last run
    (None when rsync could not even be started)."""

    def __init__(self, outcome: ExitOutcome, result: Optional[RsyncResult]) -> None:
        super().__init__(f"{outcome.error_code}: {outcome.message}")
        self.error_code = outcome.error_code or MIGRATE_FAILED
        self.message = outcome.message
        self.result = result


async def _pump_stdout(
    stream: Optional[asyncio.StreamReader],
    parser: OutputParser,
    on_progress: Optional[ProgressCallback],
) -> None:
    """Read stdout in chunks (never by line: records end in `\\r`) and report each record."""
    if stream is None:
        return
    while chunk := await stream.read(65536):
        for progress in parser.feed(chunk):
            if on_progress is not None:
                on_progress(progress)
    for progress in parser.close():
        if on_progress is not None:
            on_progress(progress)


async def _pump(
    proc: asyncio.subprocess.Process,
    parser: OutputParser,
    stderr_tail: LineTail,
    on_progress: Optional[ProgressCallback],
) -> None:
    """Drain stdout and stderr together: a full pipe would block rsync."""
    await asyncio.gather(
        _pump_stdout(proc.stdout, parser, on_progress), drain_into(proc.stderr, stderr_tail)
    )


@dataclass
class _Stop:
    requested_at: Optional[float] = None
    terminate_sent_at: Optional[float] = None


async def _exited(proc: asyncio.subprocess.Process) -> None:
    await proc.wait()


async def _requested(cancel: asyncio.Event) -> None:
    await cancel.wait()


async def _supervise(
    proc: asyncio.subprocess.Process,
    pump: asyncio.Task[None],
    cancel: Optional[asyncio.Event],
    grace_s: float,
) -> _Stop:
    """Wait for rsync to exit; stop it at once if `cancel` is set or the output reader fails."""
    stop = _Stop()
    exited = asyncio.ensure_future(_exited(proc))
    stopping = asyncio.ensure_future(_requested(cancel)) if cancel is not None else None
    try:
        while not exited.done():
            waiters = {exited}
            if stopping is not None and stop.requested_at is None:
                waiters.add(stopping)
            if not pump.done():
                waiters.add(pump)
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if pump in done and pump.exception() is not None:
                await stop_process(proc, grace_s)
                pump.result()  # re-raises the reader's (the progress callback's) error
            if stopping is not None and stopping in done and stop.requested_at is None:
                stop.requested_at = time.monotonic()
                stop.terminate_sent_at = time.monotonic()
                await stop_process(proc, grace_s)
    finally:
        for waiter in (exited, stopping):
            if waiter is not None and not waiter.done():
                waiter.cancel()
    return stop


async def run_rsync(
    argv: Sequence[str],
    *,
    on_progress: Optional[ProgressCallback] = None,
    cancel: Optional[asyncio.Event] = None,
    env: Optional[Mapping[str, str]] = None,
    grace_s: float = DEFAULT_GRACE_S,
    kind: PassKind = PassKind.migrate,
    on_record: Optional[RecordCallback] = None,
    cgroup: Optional[Path] = None,
) -> RsyncResult:
    """Run one rsync pass to its end, or until `cancel` is set, and say how it ended.

    rsync runs in its own process group with a minimal environment. Setting `cancel` sends
    SIGTERM to rsync at once (it then tells the target to keep the partial file); the whole
    group gets SIGKILL after `grace_s`. The child is always reaped, also when this coroutine
    is cancelled.

    Args:
        on_progress: called with every progress record, from the event loop; if it raises,
            rsync is stopped and the error propagates.
        env: the child's whole environment; default `minimal_env()`.
        on_record: called with every stdout record that is not progress (e.g. itemized
            changes), from the event loop.
        cgroup: the `cgroup.procs` of the cgroup rsync (and its ssh) must run in, from its
            first instruction on.

    Raises:
        RsyncError: rsync is not installed (SMS.6517).
    """
    started_at = time.monotonic()
    child_env = dict(env) if env is not None else minimal_env()
    try:
        if cgroup is not None and shutil.which(argv[0], path=child_env.get("PATH")) is None:
            # Started through the cgroup trampoline, a missing rsync would be a shell's exit.
            raise FileNotFoundError(argv[0])
        proc = await asyncio.create_subprocess_exec(
            *in_cgroup(argv, cgroup),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        message = f"rsync is not installed on this server ({argv[0]!r} not found)"
        raise RsyncError(ExitOutcome(ExitClass.fatal, RSYNC_MISSING, message), None) from exc
    parser, stderr_tail = OutputParser(on_record), LineTail()
    pump = asyncio.ensure_future(_pump(proc, parser, stderr_tail, on_progress))
    try:
        stop = await _supervise(proc, pump, cancel, grace_s)
        # A straggler (ssh) could hold the pipes open after rsync is gone.
        await end_group(proc, grace_s)
        await pump
    except BaseException:
        pump.cancel()
        await asyncio.shield(stop_process(proc, grace_s))
        raise
    return _result(proc, parser, stderr_tail, kind, started_at, stop)


def _result(
    proc: asyncio.subprocess.Process,
    parser: OutputParser,
    stderr_tail: LineTail,
    kind: PassKind,
    started_at: float,
    stop: _Stop,
) -> RsyncResult:
    returncode = proc.returncode if proc.returncode is not None else -1
    lines = stderr_tail.lines()
    outcome = classify_exit(returncode, kind=kind, stderr_lines=lines)
    if stop.requested_at is not None and outcome.exit_class is not ExitClass.ok:
        # Whatever rsync reported while being stopped (20, or 255 if ssh went first), the
        # run ended because we asked it to.
        outcome = ExitOutcome(ExitClass.cancelled, None, "stopped on request")
    return RsyncResult(
        returncode=returncode,
        outcome=outcome,
        stats=parser.stats(),
        last_progress=parser.last_progress,
        stderr_tail=tuple(lines),
        started_at=started_at,
        ended_at=time.monotonic(),
        stop_requested_at=stop.requested_at,
        terminate_sent_at=stop.terminate_sent_at,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable pass is run again.

    Attributes:
        retries: runs after the first one (the `transfer_retries` setting).
        base_delay_s: the first wait; each later wait doubles, up to `max_delay_s`, with jitter.
    """

    retries: int = 5
    base_delay_s: float = 2.0
    max_delay_s: float = 60.0

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """The wait before run `attempt + 1`: half fixed, half random, so agents spread out."""
        ceiling_s = min(self.max_delay_s, self.base_delay_s * 2.0**attempt)
        return ceiling_s / 2 + rng.random() * ceiling_s / 2


RetryCallback = Callable[[int, RsyncResult, float], None]


async def _wait_or_cancel(cancel: Optional[asyncio.Event], delay_s: float) -> bool:
    """Sleep `delay_s`; True if `cancel` was set meanwhile."""
    if cancel is None:
        await asyncio.sleep(delay_s)
        return False
    return await wait_any(cancel, timeout_s=delay_s)


async def run_rsync_with_retries(
    argv: Sequence[str],
    *,
    policy: RetryPolicy,
    on_progress: Optional[ProgressCallback] = None,
    cancel: Optional[asyncio.Event] = None,
    env: Optional[Mapping[str, str]] = None,
    grace_s: float = DEFAULT_GRACE_S,
    kind: PassKind = PassKind.migrate,
    on_retry: Optional[RetryCallback] = None,
    rng: Optional[random.Random] = None,
    on_record: Optional[RecordCallback] = None,
    cgroup: Optional[Path] = None,
) -> RsyncResult:
    """Run a pass, running it again after retryable failures (the partial files are reused).

    Returns:
        the last run, whose class is `ok`, `partial_warning` or `cancelled`.

    Raises:
        RsyncError: a fatal failure, or retryable ones beyond `policy.retries` (SMS.0807).
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        result = await run_rsync(
            argv,
            on_progress=on_progress,
            cancel=cancel,
            env=env,
            grace_s=grace_s,
            kind=kind,
            on_record=on_record,
            cgroup=cgroup,
        )
        exit_class = result.outcome.exit_class
        if exit_class is ExitClass.fatal:
            raise RsyncError(result.outcome, result)
        if exit_class is not ExitClass.retryable:
            return result
        if attempt >= policy.retries:
            message = f"gave up after {attempt + 1} runs: {result.outcome.message}"
            raise RsyncError(ExitOutcome(ExitClass.fatal, NETWORK_FAILED, message), result)
        delay_s = policy.delay_s(attempt, rng)
        attempt += 1
        log.warning(
            "rsync_retry",
            attempt=attempt,
            returncode=result.returncode,
            delay_s=round(delay_s, 2),
            error=result.outcome.message,
        )
        if on_retry is not None:
            on_retry(attempt, result, delay_s)
        if await _wait_or_cancel(cancel, delay_s):
            stopped = ExitOutcome(ExitClass.cancelled, None, "stopped on request")
            return dataclasses.replace(result, outcome=stopped, stop_requested_at=time.monotonic())
