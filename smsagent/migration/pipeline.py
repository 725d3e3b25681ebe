"""One copy pass of the file-level migration: what to copy, in parallel rsync streams, with
progress and the speed limit in force.

What is copied: every local file system under the source root, from the mount table (no pseudo,
network or duplicate mounts), minus spec §7.5's default exclusions, the task's own exclusions,
the contents of mounts that are not copied and the agent's own files.

How much there is (`totalsize`, spec §3.11): the used bytes of the file systems copied, as `df`
counts them (statvfs), like SMS itself; when the source root is a directory inside a file system
rather than its mount point, the bytes allocated below it (as `du -sx`). Excluded paths stay in the
total (spec §7.5 says so for the defaults; a walk to subtract the others would cost a second scan
of the whole server).

Progress of a full copy is the bytes rsync reports sent, added up over the streams and over
restarts, never falling and held below 100 % until the pass has ended; a sync pass sends little,
so its progress is the share of files rsync has checked. A change of the speed limit restarts the
streams with the new `--bwlimit` (rsync reuses its partial files).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import posixpath
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Optional

from smsagent.agent.handlers import HandlerContext
from smsagent.api.enums import SubtaskName
from smsagent.migration.childproc import mover_env
from smsagent.migration.excludes import filter_rules, migrate_excludes, sync_excludes
from smsagent.migration.mounts import MountEntry, MountSelection, select_filesystems
from smsagent.migration.rsync import (
    ExitClass,
    PassKind,
    Progress,
    RetryPolicy,
    RsyncJob,
    RsyncResult,
    build_argv,
    bwlimit_kib_s,
    run_rsync_with_retries,
)
from smsagent.migration.rsync_exit import guarded_rsync_path
from smsagent.migration.settings import MigrationSettings, SettingError
from smsagent.migration.speedlimit import SpeedLimitWatch
from smsagent.migration.streams import plan_streams, survey_tree
from smsagent.migration.target import TargetSession

STAGES: Final = {
    PassKind.migrate: SubtaskName.MIGRATE_LINUX_FILE,
    PassKind.sync: SubtaskName.SYNC_LINUX_FILE,
}
# Until a pass has ended its progress stays below this share: rsync's own 100 % is no proof.
SHOWN_CEILING: Final = 0.99


@dataclass(frozen=True)
class SourcePlan:
    """What this server has to copy.

    Attributes:
        source_root: the directory that stands for the server's `/` (normally `/`).
        filesystem_paths: the file systems copied, relative to the source root (`""` first).
        skipped_paths: mounts below the source root that are not copied.
        agent_paths: the agent's own files, as rules anchored at the source root.
        used_bytes: how much there is to copy (see the module docstring).
    """

    source_root: str
    filesystem_paths: tuple[str, ...]
    skipped_paths: tuple[str, ...]
    agent_paths: tuple[str, ...]
    used_bytes: int


def _agent_rules(source_root: str, own_paths: Sequence[Path]) -> tuple[str, ...]:
    root = posixpath.normpath(source_root)
    rules = []
    for own in own_paths:
        path = posixpath.normpath(str(own))
        if path != root and path.startswith(root.rstrip("/") + "/"):
            rules.append("/" + posixpath.relpath(path, root))
    return tuple(rules)


def used_bytes(selection: MountSelection, source_root: str) -> int:
    """The used bytes of the selected file systems (see the module docstring)."""
    root = posixpath.normpath(source_root)
    # A walk stops at every mount below the root: those copied are counted on their own.
    below = [fs.relative_path for fs in selection.filesystems[1:]]
    below += [mount.relative_path for mount in selection.skipped]
    skipped = frozenset(posixpath.join(root, relative) for relative in below)
    total = 0
    for filesystem in selection.filesystems:
        path = posixpath.join(root, filesystem.relative_path) if filesystem.relative_path else root
        if posixpath.normpath(filesystem.mount_point) == path:
            usage = os.statvfs(path)
            total += (usage.f_blocks - usage.f_bfree) * usage.f_frsize
        else:
            # The walk counts what lies below `path`; `du` also counts the directory itself.
            total += os.lstat(path).st_blocks * 512 + survey_tree(path, skipped).size_bytes
    return total


def plan_source(
    source_root: Path, own_paths: Sequence[Path], mounts: Sequence[MountEntry]
) -> SourcePlan:
    """What to copy from `source_root`, leaving out `own_paths` (state dir, env file).

    Blocking (statvfs, possibly a walk): run it in a thread.
    """
    root = str(source_root)
    selection = select_filesystems(mounts, root)
    return SourcePlan(
        source_root=root,
        filesystem_paths=tuple(fs.relative_path for fs in selection.filesystems),
        skipped_paths=tuple(mount.relative_path for mount in selection.skipped),
        agent_paths=_agent_rules(root, own_paths),
        used_bytes=used_bytes(selection, root),
    )


def copy_rules(plan: SourcePlan, settings: MigrationSettings, kind: PassKind) -> tuple[str, ...]:
    """The filter rules of a pass of `kind` (and of a verification of its result)."""
    build = migrate_excludes if kind is PassKind.migrate else sync_excludes
    user = settings.migrate_exclude_dir if kind is PassKind.migrate else settings.sync_exclude_dir
    excludes = build(
        user,
        agent_paths=plan.agent_paths,
        mount_paths=plan.filesystem_paths,
        skipped_mount_paths=plan.skipped_paths,
    )
    return filter_rules(excludes)


@dataclass(frozen=True)
class PassSpec:
    """One pass, ready to run.

    Attributes:
        stage: the SMS subtask it reports as.
        kind: migrate (full copy) or sync (also deletes).
        jobs: one rsync job per stream (their `bwlimit_kib_s` is set when each run starts).
        shares: each stream's share of the work (by surveyed size), summing to 1.
        total_bytes: `totalsize`.
    """

    stage: SubtaskName
    kind: PassKind
    jobs: tuple[RsyncJob, ...]
    shares: tuple[float, ...]
    total_bytes: int


def _only_dirs(plan: SourcePlan, settings: MigrationSettings, kind: PassKind) -> tuple[str, ...]:
    if kind is PassKind.migrate or not settings.only_sync_dirs:
        return ()
    present = tuple(
        path
        for path in settings.only_sync_dirs
        if Path(plan.source_root, path).is_dir() and not Path(plan.source_root, path).is_symlink()
    )
    if not present:
        msg = f"ONLY_SYNC_DIR: none of {', '.join('/' + p for p in settings.only_sync_dirs)} exist"
        raise SettingError(msg)
    return present


def build_pass(
    plan: SourcePlan, settings: MigrationSettings, kind: PassKind, destination: str
) -> PassSpec:
    """The streams of a pass of `kind` to `destination` on the target.

    Blocking (with several streams the source is surveyed): run it in a thread.

    Raises:
        SettingError: `ONLY_SYNC_DIR` names no directory that exists.
    """
    streams_wanted = settings.streams_migrate if kind is PassKind.migrate else settings.streams_sync
    streams = plan_streams(
        plan.source_root,
        plan.filesystem_paths,
        streams_wanted,
        only_dirs=_only_dirs(plan, settings, kind),
    )
    rules = copy_rules(plan, settings, kind)
    jobs = tuple(
        RsyncJob(
            source_root=plan.source_root,
            sources=stream.sources,
            destination=destination,
            kind=kind,
            filter_rules=(*rules, *stream.filter_rules),
            remote_rsync_path=guarded_rsync_path(destination),
        )
        for stream in streams
    )
    sizes = [max(stream.size_bytes, 1) for stream in streams]
    shares = tuple(size / sum(sizes) for size in sizes)
    return PassSpec(STAGES[kind], kind, jobs, shares, plan.used_bytes)


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
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    grace_s: float = 20.0
    save_interval_s: float = 5.0
    report_interval_s: float = 0.5


@dataclass(frozen=True)
class PassSummary:
    """How a pass went.

    Attributes:
        results: each stream's last rsync run.
        restarts: streams restarted for a new speed limit.
        retries: rsync runs repeated after a network failure.
        duration_s: wall time of the pass.
    """

    results: tuple[RsyncResult, ...]
    restarts: int
    retries: int
    duration_s: float

    def _stat(self, name: str) -> int:
        return sum(getattr(r.stats, name) or 0 for r in self.results if r.stats is not None)

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

    def detail(self) -> dict[str, int | bool]:
        """The summary for a command result's detail."""
        return {
            "files_transferred": self.files_transferred,
            "literal_bytes": self.literal_bytes,
            "files_deleted": self._stat("files_deleted"),
            "files_vanished": self.files_vanished,
            "stream_restarts": self.restarts,
            "retries": self.retries,
            "streams": len(self.results),
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
            self._save(force=True)
        duration_s = time.monotonic() - started_at
        return PassSummary(tuple(results), self._restarts, self._retries, duration_s)

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
            bytes_done = self.progress.bytes_done
            await self._ctx.progress.report(self._spec.stage, bytes_done, self._spec.total_bytes)
            self._save(force=False)
            await asyncio.sleep(self._options.report_interval_s)

    def _save(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < self._options.save_interval_s:
            return
        self._saved_at = now
        stage, total = self._spec.stage.value, self._spec.total_bytes
        done = self.progress.bytes_done
        self._ctx.update_task(lambda r: r.record_progress(stage, done, total, self._ctx.clock()))
