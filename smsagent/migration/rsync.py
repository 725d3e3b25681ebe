"""The rsync runner: the argv of a pass, exit codes as outcome classes, running, stopping, retrying.

Building the argv and classifying exit codes are pure; `run_rsync` runs one pass as a child in its
own process group and `run_rsync_with_retries` repeats a pass that a network failure interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Final, Optional

import structlog

from smsagent.migration.childproc import LineTail, drain_into, kill_group, minimal_env, stop_process
from smsagent.migration.rsync_output import OutputParser, Progress, RsyncStats
from smsagent.migration.target import AUTH_REFUSED, HOST_KEY_CHANGED, TargetSession

log = structlog.get_logger()

PARTIAL_DIR: Final = ".rsync-partial"
DEFAULT_IO_TIMEOUT_S: Final = 600
DEFAULT_GRACE_S: Final = 10.0

# SMS error codes of the data copy (spec §6.3).
MIGRATE_FAILED: Final = "SMS.0805"
SYNC_FAILED: Final = "SMS.0806"
NETWORK_FAILED: Final = "SMS.0807"
RSYNC_MISSING: Final = "SMS.6517"

ProgressCallback = Callable[[Progress], None]


class PassKind(str, Enum):
    """What a pass is for: the full copy, or a later incremental sync that also deletes."""

    migrate = "migrate"
    sync = "sync"


class ExitClass(str, Enum):
    """What an rsync exit means for the task."""

    ok = "ok"
    partial_warning = "partial_warning"  # 24: files vanished while copying a live system
    cancelled = "cancelled"  # our own stop
    retryable = "retryable"  # the connection or the remote side died; run the pass again
    fatal = "fatal"  # retrying cannot help until someone fixes the cause


@dataclass(frozen=True)
class ExitOutcome:
    """An exit class with the SMS error code and message to report (None/"" when ok)."""

    exit_class: ExitClass
    error_code: Optional[str]
    message: str


@dataclass(frozen=True)
class RsyncJob:
    """One rsync pass: which paths under the source root go to which remote directory, and how.

    Attributes:
        source_root: the local directory that stands for the server's `/` (normally `/`).
        sources: paths relative to `source_root`; `""` is the source root itself. With
            `--relative` each keeps its path under `destination`.
        destination: the directory on the target that receives the tree (the target root).
        kind: `sync` passes delete what no longer exists on the source.
        filter_rules: rsync filter rules, anchored at `source_root` (see `excludes.py`).
        bwlimit_kib_s: rsync's `--bwlimit` in KiB/s; 0 is unlimited.
        io_timeout_s: rsync's `--timeout`: give up when no data moves for this long.
        incremental_recursion: True streams the file list (less memory on huge trees); False
            (the default) makes rsync's file totals exact from the start and links hard links
            found in different directories without sending their data twice.
        one_file_system: do not descend into other mounts below a source.
        nanosecond_times: compare times to the nanosecond, not the second, so a directory touched
            twice within one second is still brought in line; turn off only when the target's
            file system keeps coarser times than the source's (each pass would resend).
        rsync_path: the local rsync.
        remote_rsync_path: rsync on the target, when it is not on the target's PATH.
    """

    source_root: str
    sources: tuple[str, ...]
    destination: str
    kind: PassKind = PassKind.migrate
    filter_rules: tuple[str, ...] = ()
    bwlimit_kib_s: int = 0
    io_timeout_s: int = DEFAULT_IO_TIMEOUT_S
    incremental_recursion: bool = False
    one_file_system: bool = True
    nanosecond_times: bool = True
    rsync_path: str = "rsync"
    remote_rsync_path: Optional[str] = None


def bwlimit_kib_s(limit_mbit_s: float, streams: int = 1) -> int:
    """rsync's `--bwlimit` (KiB/s) for one of `streams` parallel passes sharing `limit_mbit_s`.

    0 Mbit/s means unlimited and gives 0; any positive limit gives at least 1 KiB/s.
    """
    if limit_mbit_s <= 0:
        return 0
    bytes_per_s = limit_mbit_s * 1_000_000 / 8 / max(1, streams)
    return max(1, round(bytes_per_s / 1024))


def _source_argument(source_root: str, relative: str) -> str:
    """`root/./rel`: with `--relative`, the part after `/./` is the path kept on the target."""
    if not source_root.startswith("/"):
        msg = f"source_root {source_root!r} must be an absolute path"
        raise ValueError(msg)
    parts = relative.split("/") if relative else []
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        msg = f"source {relative!r} must be a normalized path relative to the source root"
        raise ValueError(msg)
    base = source_root.rstrip("/") or ""
    return f"{base}/./{relative}" if relative else f"{base}/./"


def _options(job: RsyncJob) -> list[str]:
    argv = [
        "-aHAXS",
        "--numeric-ids",
        "--relative",
        f"--partial-dir={PARTIAL_DIR}",
        f"--timeout={job.io_timeout_s}",
        "--open-noatime",
        "--no-h",
        "--info=progress2,stats2",
    ]
    if job.one_file_system:
        argv.append("--one-file-system")
    if not job.incremental_recursion:
        argv.append("--no-inc-recursive")
    if job.nanosecond_times:
        argv.append("--modify-window=-1")
    if job.kind is PassKind.sync:
        # Deletions are found during the run and applied at its end, so an interrupted pass
        # never leaves the target with files removed but their replacements not yet copied.
        argv.append("--delete-delay")
    if job.bwlimit_kib_s > 0:
        argv.append(f"--bwlimit={job.bwlimit_kib_s}")
    if job.remote_rsync_path:
        argv.append(f"--rsync-path={job.remote_rsync_path}")
    argv += [f"--filter={rule}" for rule in job.filter_rules]
    return argv


def build_argv(job: RsyncJob, target: Optional[TargetSession]) -> list[str]:
    """The complete rsync argv of a pass; `target` None copies to a local directory.

    Raises:
        ValueError: a source is not a normalized relative path, or there is none.
    """
    if not job.sources:
        msg = "an rsync pass needs at least one source"
        raise ValueError(msg)
    argv = [job.rsync_path, *_options(job)]
    destination = job.destination.rstrip("/") + "/"
    if target is not None:
        argv += ["-e", target.remote_shell()]
        destination = target.rsync_destination(destination)
    # Every source is absolute and the destination starts with "/" or a host, but "--" makes
    # sure no path is ever read as an option.
    argv.append("--")
    argv += [_source_argument(job.source_root, rel) for rel in job.sources]
    argv.append(destination)
    return argv


# -- exit codes --------------------------------------------------------------------------------

# rsync(1) EXIT VALUES. Codes not listed are fatal with a generic message.
_EXIT_MEANINGS: Final[Mapping[int, tuple[ExitClass, str]]] = {
    0: (ExitClass.ok, "success"),
    1: (ExitClass.fatal, "syntax or usage error"),
    2: (ExitClass.fatal, "protocol incompatibility (rsync on the target too old?)"),
    3: (ExitClass.fatal, "errors selecting input/output files or directories"),
    4: (ExitClass.fatal, "requested action not supported by rsync on one side"),
    5: (ExitClass.retryable, "error starting the client-server protocol"),
    10: (ExitClass.retryable, "error in socket I/O"),
    11: (ExitClass.fatal, "error in file I/O (is the target disk full?)"),
    12: (ExitClass.retryable, "error in the rsync protocol data stream (connection lost)"),
    13: (ExitClass.fatal, "errors with program diagnostics"),
    14: (ExitClass.retryable, "error in IPC code"),
    20: (ExitClass.cancelled, "received SIGINT, SIGTERM or SIGHUP"),
    21: (ExitClass.fatal, "some error returned by waitpid()"),
    22: (ExitClass.fatal, "error allocating core memory buffers"),
    23: (ExitClass.retryable, "partial transfer due to error"),
    24: (ExitClass.partial_warning, "some source files vanished before they could be copied"),
    25: (ExitClass.fatal, "the --max-delete limit stopped deletions"),
    30: (ExitClass.retryable, "timeout in data send/receive"),
    35: (ExitClass.retryable, "timeout waiting for the daemon connection"),
    255: (ExitClass.retryable, "the SSH connection to the target failed"),
}

# stderr messages that make a retryable code fatal: retrying cannot fix them.
_FATAL_STDERR: Final = (
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION"), HOST_KEY_CHANGED),
    (re.compile(r"Permission denied \(|Too many authentication failures"), AUTH_REFUSED),
    (re.compile(r"rsync: (command )?not found|rsync: No such file or directory"), None),
)


def _pass_code(kind: PassKind) -> str:
    return SYNC_FAILED if kind is PassKind.sync else MIGRATE_FAILED


def _detail(stderr_lines: Sequence[str]) -> str:
    """The most telling stderr line: rsync's own error summary, else the last line."""
    for line in reversed(stderr_lines):
        if line.startswith("rsync error:") or line.startswith("rsync: "):
            return line
    return stderr_lines[-1] if stderr_lines else ""


def classify_exit(
    returncode: int, *, kind: PassKind = PassKind.migrate, stderr_lines: Sequence[str] = ()
) -> ExitOutcome:
    """Map rsync's exit code (and, for SSH failures, its stderr) to an outcome class.

    A negative code (killed by a signal we did not send) is retryable.
    """
    if returncode < 0:
        exit_class, meaning = ExitClass.retryable, f"killed by signal {-returncode}"
    else:
        exit_class, meaning = _EXIT_MEANINGS.get(returncode, (ExitClass.fatal, "unknown error"))
    detail = _detail(stderr_lines)
    message = f"rsync exited {returncode}: {meaning}" + (f" ({detail})" if detail else "")
    if exit_class is ExitClass.ok:
        return ExitOutcome(exit_class, None, "")
    if exit_class in (ExitClass.partial_warning, ExitClass.cancelled):
        return ExitOutcome(exit_class, None, message)
    if exit_class is ExitClass.retryable:
        text = "\n".join(stderr_lines)
        for pattern, code in _FATAL_STDERR:
            if pattern.search(text):
                return ExitOutcome(ExitClass.fatal, code or _pass_code(kind), message)
        return ExitOutcome(exit_class, NETWORK_FAILED, message)
    return ExitOutcome(exit_class, _pass_code(kind), message)


# -- running -----------------------------------------------------------------------------------


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

    Raises:
        RsyncError: rsync is not installed (SMS.6517).
    """
    started_at = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else minimal_env(),
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        message = f"rsync is not installed on this server ({argv[0]!r} not found)"
        raise RsyncError(ExitOutcome(ExitClass.fatal, RSYNC_MISSING, message), None) from exc
    parser, stderr_tail = OutputParser(), LineTail()
    pump = asyncio.ensure_future(_pump(proc, parser, stderr_tail, on_progress))
    try:
        stop = await _supervise(proc, pump, cancel, grace_s)
        # A straggler (ssh) could hold the pipes open after rsync is gone.
        kill_group(proc)
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


# -- retrying ----------------------------------------------------------------------------------


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
    try:
        await asyncio.wait_for(cancel.wait(), timeout=delay_s)
    except asyncio.TimeoutError:
        return False
    return True


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
            argv, on_progress=on_progress, cancel=cancel, env=env, grace_s=grace_s, kind=kind
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


def running_as_root() -> bool:
    """rsync can keep owners, device nodes and every xattr only when it runs as root."""
    return os.geteuid() == 0
