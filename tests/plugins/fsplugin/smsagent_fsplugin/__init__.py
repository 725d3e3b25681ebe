"""A task-type handler plugin for smsagent's tests: `FSCOPY_TEST` copies one directory into
another, resumably, reporting progress, through nothing but its `HandlerContext`.

The task names the directories in its own fields `fscopy_source` and `fscopy_target`; without
them the agent's `source_root` and `target_root` settings are used. Its field
`fscopy_file_delay_s` (seconds, default 0) pauses after each file, so that a test can stop,
signal or kill a copy mid-way; the pause ends early when the work is asked to stop. Its field
`fscopy_stop_delay_s` (default 0) makes a stopped copy take that long to wind down, as a mover
cleaning up would, so that a test can act while the task is `stopping`.

Log events: `fscopy_started` (stage, `resume_from`: the last entry a resume skips to),
`fscopy_file_copied` (each file or symlink written, by `path`), `fscopy_stopping` (a stopped
copy starts winding down), `fscopy_done`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Optional

from smsagent.agent.handler_api import (
    Action,
    CommandEnvelope,
    HandlerContext,
    HandlerOutcome,
    State,
    TaskRecord,
    WorkCancelled,
)
from smsagent.api.enums import CommandName, SubtaskName

TASK_TYPE: Final = "FSCOPY_TEST"
COPY_STAGE: Final = SubtaskName.MIGRATE_LINUX_FILE
SYNC_STAGE: Final = SubtaskName.SYNC_LINUX_FILE
ERROR_BAD_PATHS: Final = "FSCOPY.BAD_PATHS"
PART_SUFFIX: Final = ".fscopy-part"
FILE_DELAY_FIELD: Final = "fscopy_file_delay_s"
STOP_DELAY_FIELD: Final = "fscopy_stop_delay_s"


@dataclass(frozen=True)
class Entry:
    """One thing to copy, by its path relative to the source."""

    relative: str
    kind: str
    size: int


def scan(source: Path) -> list[Entry]:
    """Every directory, symlink and regular file under `source`, in a stable order."""
    entries: list[Entry] = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        base = Path(root)
        for name in [*dirs, *sorted(files)]:
            path = base / name
            info = path.lstat()
            relative = str(path.relative_to(source))
            if stat.S_ISLNK(info.st_mode):
                entries.append(Entry(relative, "symlink", 0))
            elif stat.S_ISDIR(info.st_mode):
                entries.append(Entry(relative, "dir", 0))
            elif stat.S_ISREG(info.st_mode):
                entries.append(Entry(relative, "file", info.st_size))
    return sorted(entries, key=lambda entry: entry.relative)


def _read_chunks(path: Path, chunk_bytes: int) -> Generator[bytes, None, None]:
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


def _same_file(source: Path, target: Path) -> bool:
    try:
        a, b = source.stat(), target.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(b.st_mode) and a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


class _Copy:
    """One pass of copying `source` into `target` for one stage."""

    def __init__(
        self,
        ctx: HandlerContext,
        stage: SubtaskName,
        source: Path,
        target: Path,
        chunk_bytes: int,
        file_delay_s: float = 0.0,
        stop_delay_s: float = 0.0,
    ) -> None:
        self.ctx, self.stage, self.source, self.target = ctx, stage, source, target
        self.chunk_bytes = chunk_bytes
        self.file_delay_s = file_delay_s
        self.stop_delay_s = stop_delay_s
        self.bytes_done = 0
        self.bytes_total = 0
        self.cursor = ""
        self.saved_at = 0.0

    async def run(self) -> int:
        """Copy what the stored cursor says is left; returns the files copied."""
        entries = await asyncio.to_thread(scan, self.source)
        self.bytes_total = sum(entry.size for entry in entries)
        record = await self.ctx.update_task(
            lambda r: r.begin_stage(self.stage.value, self.ctx.clock())
        )
        self.cursor = _cursor(record, self.stage)
        self.bytes_done = sum(e.size for e in entries if e.relative <= self.cursor)
        await self.ctx.progress.report(self.stage, self.bytes_done, self.bytes_total, force=True)
        self.ctx.log.info("fscopy_started", stage=self.stage.value, resume_from=self.cursor)
        copied = 0
        try:
            for entry in entries:
                if entry.relative <= self.cursor:
                    continue
                written = await self._copy_entry(entry)
                copied += written
                self.cursor = entry.relative
                await self._save(force=False)
                if written:
                    self.ctx.log.info("fscopy_file_copied", path=entry.relative)
                    await self._pause()
        except WorkCancelled:
            if self.stop_delay_s > 0:
                self.ctx.log.info("fscopy_stopping", wind_down_s=self.stop_delay_s)
                await asyncio.sleep(self.stop_delay_s)
            raise
        finally:
            await self._save(force=True)
        await self.ctx.update_task(lambda r: r.finish_stage(self.stage.value, self.ctx.clock()))
        await self.ctx.progress.report(self.stage, self.bytes_total, self.bytes_total, force=True)
        return copied

    async def _copy_entry(self, entry: Entry) -> int:
        self.ctx.cancel.raise_if_cancelled()
        source, target = self.source / entry.relative, self.target / entry.relative
        if entry.kind == "dir":
            target.mkdir(exist_ok=True)
            shutil.copystat(source, target)
            return 0
        if entry.kind == "symlink":
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to(os.readlink(source))
            return 1
        if _same_file(source, target):
            self.bytes_done += entry.size
            return 0
        await self._copy_file(source, target)
        return 1

    async def _copy_file(self, source: Path, target: Path) -> None:
        part = target.with_name(target.name + PART_SUFFIX)
        chunks = _read_chunks(source, self.chunk_bytes)
        try:
            with part.open("wb") as out:
                while chunk := await asyncio.to_thread(next, chunks, b""):
                    self.ctx.cancel.raise_if_cancelled()
                    await asyncio.to_thread(out.write, chunk)
                    self.bytes_done += len(chunk)
                    await self.ctx.progress.report(self.stage, self.bytes_done, self.bytes_total)
        except BaseException:
            chunks.close()
            part.unlink(missing_ok=True)
            raise
        shutil.copystat(source, part)
        part.replace(target)

    async def _pause(self) -> None:
        """Wait `file_delay_s`, or less if the work is asked to stop (checked at the next file)."""
        if self.file_delay_s <= 0:
            return
        # asyncio.wait, not wait_for: before Python 3.12 wait_for can swallow a task cancel.
        waiter = asyncio.ensure_future(self.ctx.cancel.wait())
        try:
            await asyncio.wait({waiter}, timeout=self.file_delay_s)
        finally:
            waiter.cancel()

    async def _save(self, *, force: bool) -> None:
        # A resume redoes at most the files of the last second; saving after every file
        # would cost an fsync each.
        now = time.monotonic()
        if not force and now - self.saved_at < 1.0:
            return
        self.saved_at = now
        resume = {"cursor": self.cursor, "source": str(self.source), "target": str(self.target)}
        await self.ctx.update_task(
            lambda r: r.record_progress(
                self.stage.value, self.bytes_done, self.bytes_total, self.ctx.clock(), resume
            )
        )


def _cursor(record: Optional[TaskRecord], stage: SubtaskName) -> str:
    if record is None:
        return ""
    progress = record.progress_of(stage.value)
    cursor = progress.resume.get("cursor", "")
    return "" if progress.done or not isinstance(cursor, str) else cursor


class FsCopyHandler:
    """START, PREMIGRATE and SYNC of `FSCOPY_TEST` tasks."""

    commands: ClassVar[frozenset[CommandName]] = frozenset()
    task_types: ClassVar[frozenset[str]] = frozenset({TASK_TYPE})
    chunk_bytes: ClassVar[int] = 64 * 1024

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Copy (or check, for the drill) the task's directories."""
        drill = command.action is Action.run_premigrate
        source, target = _paths(ctx, command)
        problem = _check_paths(source, target)
        if problem is not None:
            state = State.idle if drill else State.failed
            return HandlerOutcome.failure(ERROR_BAD_PATHS, problem, next_state=state)
        if drill:
            return HandlerOutcome.success("source and target are usable", next_state=State.idle)
        stage = await _stage_for(ctx, command)
        copied = 0
        if stage is not None:
            delays = (_delay_s(command, FILE_DELAY_FIELD), _delay_s(command, STOP_DELAY_FIELD))
            copied = await _Copy(ctx, stage, source, target, self.chunk_bytes, *delays).run()
            ctx.log.info("fscopy_done", stage=stage.value, files_copied=copied)
        syncing = bool(command.task is not None and command.task.syncing)
        return HandlerOutcome.success(
            f"{copied} files copied" if stage is not None else "the copy had finished",
            next_state=State.replicated if syncing else State.finished,
            detail={"files_copied": copied},
        )


async def _stage_for(ctx: HandlerContext, command: CommandEnvelope) -> Optional[SubtaskName]:
    """The full copy until it is done; after that each pass is a sync from the start. None
    for a resume that finds the copy done and no sync pass under way: nothing is left to do."""
    record = ctx.task_record()
    copy_done = record is not None and record.progress_of(COPY_STAGE.value).done
    if command.action is not Action.sync_task and not copy_done:
        return COPY_STAGE
    if command.action is Action.sync_task:
        await ctx.update_task(lambda r: r.record_progress(SYNC_STAGE.value, 0, 0, ctx.clock(), {}))
        return SYNC_STAGE
    sync_pass = None if record is None else record.stages.get(SYNC_STAGE.value)
    return SYNC_STAGE if sync_pass is not None and not sync_pass.done else None


def _paths(ctx: HandlerContext, command: CommandEnvelope) -> tuple[Path, Path]:
    extra = (command.task.model_extra or {}) if command.task is not None else {}
    stored = _stored_paths(ctx.task_record())
    source = extra.get("fscopy_source") or stored[0] or ctx.settings.source_root
    target = extra.get("fscopy_target") or stored[1] or ctx.settings.target_root
    return Path(str(source)), Path(str(target))


def _delay_s(command: CommandEnvelope, field: str) -> float:
    extra = (command.task.model_extra or {}) if command.task is not None else {}
    value = extra.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return max(float(value), 0.0)


def _check_paths(source: Path, target: Path) -> Optional[str]:
    if not source.is_dir():
        return f"fscopy_source {source} is not a directory"
    if not target.is_dir() or not os.access(target, os.W_OK):
        return f"fscopy_target {target} is not a writable directory"
    if target.resolve().is_relative_to(source.resolve()):
        return f"fscopy_target {target} lies inside fscopy_source {source}"
    return None


def _stored_paths(record: Optional[TaskRecord]) -> tuple[Optional[str], Optional[str]]:
    if record is None:
        return None, None
    resume = record.progress_of(COPY_STAGE.value).resume
    source, target = resume.get("source"), resume.get("target")
    return (
        source if isinstance(source, str) else None,
        target if isinstance(target, str) else None,
    )
