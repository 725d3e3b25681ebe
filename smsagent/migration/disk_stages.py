"""The target-disk stages of a MIGRATE_FILE task around its copy passes.

`FORMAT_DISK_LINUX_FILE` lays the target's disks out as the task says and mounts them under the
target root; what it made is recorded in the task record, so a resumed task mounts the same file
systems again and never formats twice. `CONFIGURE_LINUX_FILE` makes the copy boot on its new
machine; it runs after the full copy and again after each sync pass. `release` unmounts the
target's file systems when the work ends, stops or fails, so the disks are consistent for a boot
or a snapshot.

With `SMSAGENT_TARGET_LAYOUT=premounted` none of this runs: the copy goes into the target root
as someone else mounted it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Final, Optional, TypeVar

from pydantic import JsonValue

from smsagent.agent.handler_api import HandlerContext, StageProgress, TaskRecord
from smsagent.api.enums import SubtaskName
from smsagent.api.models import Task
from smsagent.target.configure import configure
from smsagent.target.configure_report import Action
from smsagent.target.layout import LayoutError, parse_layout
from smsagent.target.prepare import PrepareError, TargetPreparer
from smsagent.target.prepared import PreparedTarget
from smsagent.target.session import TargetError, TargetSession
from smsagent.target.tree_remote import RemoteTree
from smsagent.waits import within

T = TypeVar("T")

FORMAT_STAGE: Final = SubtaskName.FORMAT_DISK_LINUX_FILE
CONFIGURE_STAGE: Final = SubtaskName.CONFIGURE_LINUX_FILE
ERROR_LAYOUT: Final = "SMSAGENT.TARGET_LAYOUT"
RELEASE_TIMEOUT_S: Final = 60.0
_PREPARED_KEY: Final = "prepared"
_MANAGED_KEY: Final = "managed"
# What configure keeps beside the files it changed (`configure_files.BACKUP_SUFFIX`): a sync pass
# never deletes them, although the source has none.
_PROTECTED_BACKUPS: Final = ("P *.smsagent.bak", "P *.smsagent.bak.[0-9]*")
_WILDCARDS: Final = re.compile(r"([*?\[\\])")


class DiskStages:
    """The FORMAT and CONFIGURE stages of one task, and the target's mounts in between.

    Args:
        ctx: the handler's context (task record, progress, cancellation).
        task: the task as SMS describes it (its `target_server` layout).
        session: SSH to the target.
        root: where the target tree is mounted on the target.
    """

    def __init__(self, ctx: HandlerContext, task: Task, session: TargetSession, root: str) -> None:
        self._ctx = ctx
        self._task = task
        self._session = session
        self._root = root
        self._preparer = TargetPreparer(session, root, ctx.cancel.raise_if_cancelled, ctx.log)
        self.prepared: Optional[PreparedTarget] = None

    async def mount(self) -> PreparedTarget:
        """FORMAT_DISK_LINUX_FILE, or (once it is done) mount what it made.

        Raises:
            PrepareError: the layout is refused or a step failed on the target.
        """
        recorded = self._recorded()
        if recorded is not None:
            async with self._session.shared_connection():
                await self._until_stopped(self._preparer.remount(recorded))
            self.prepared = recorded
            return recorded
        try:
            layout = parse_layout(self._task.target_server)
        except LayoutError as exc:
            raise PrepareError(ERROR_LAYOUT, str(exc)) from exc
        now_s = self._ctx.clock()
        await self._ctx.update_task(
            lambda r: r.with_stage(FORMAT_STAGE.value, StageProgress(), now_s).begin_stage(
                FORMAT_STAGE.value, now_s
            )
        )
        await self._ctx.progress.report(FORMAT_STAGE, 0, 1, force=True)
        self._ctx.log.info(
            "target_format_started",
            disks=layout.device_names(),
            boot_mode=layout.boot_mode.value,
        )
        async with self._session.shared_connection():
            prepared = await self._until_stopped(self._preparer.prepare(layout))
        self.prepared = prepared
        resume: dict[str, JsonValue] = {_PREPARED_KEY: prepared.to_json()}
        done_s = self._ctx.clock()
        await self._ctx.update_task(
            lambda r: r.record_progress(FORMAT_STAGE.value, 1, 1, done_s, resume).finish_stage(
                FORMAT_STAGE.value, done_s
            )
        )
        await self._ctx.progress.report(FORMAT_STAGE, 1, 1, force=True)
        self._ctx.log.info(
            "target_formatted",
            volumes=[f"{v.device}:{v.fstype}:{v.mount_point or '-'}" for v in prepared.volumes],
        )
        return prepared

    async def configure(self, *, fresh: bool) -> None:
        """CONFIGURE_LINUX_FILE on the mounted copy (again after a sync pass: `fresh`).

        Raises:
            ConfigureError: a file or command on the target failed (SMS.3102 for the initramfs).
        """
        prepared = self.prepared
        if prepared is None:
            raise RuntimeError("configure before the target was mounted")
        stage = CONFIGURE_STAGE.value
        managed_before = self._managed()
        now_s = self._ctx.clock()

        def begin(record: TaskRecord) -> TaskRecord:
            if fresh:
                record = record.with_stage(stage, StageProgress(), now_s)
            return record.begin_stage(stage, now_s)

        await self._ctx.update_task(begin)
        await self._ctx.progress.report(CONFIGURE_STAGE, 0, 1, force=True)
        tree = RemoteTree(self._session, self._root)
        async with self._session.shared_connection():
            report = await self._until_stopped(
                configure(tree, prepared, self._ctx.log, cancel=self._ctx.cancel.raise_if_cancelled)
            )
        # What changed on the target, file by file, with its backup: in the task's log.
        self._ctx.log.info("target_configured", **report.to_json())
        done_s = self._ctx.clock()
        # Every path a configuration changed stays managed, also when a later run found it
        # already as it should be.
        changed = {c.path for c in report.files if c.action is not Action.UNCHANGED}
        managed: list[JsonValue] = [*sorted(changed | set(managed_before))]
        resume: dict[str, JsonValue] = {_MANAGED_KEY: managed}
        await self._ctx.update_task(
            lambda r: r.record_progress(stage, 1, 1, done_s, resume).finish_stage(stage, done_s)
        )
        await self._ctx.progress.report(CONFIGURE_STAGE, 1, 1, force=True)

    def sync_rules(self) -> tuple[str, ...]:
        """rsync rules for a sync pass: the files the last configuration manages stay as it
        left them (spec §7.5 leaves out what SMS rewrote, e.g. `/etc/fstab`; this is the same for
        every file ours rewrote), and its backups are never deleted."""
        return (*_PROTECTED_BACKUPS, *(f"- {_literal(path)}" for path in self._managed()))

    def _managed(self) -> list[str]:
        """The paths the configurations so far changed on the target."""
        record = self._ctx.task_record()
        if record is None:
            return []
        managed = record.progress_of(CONFIGURE_STAGE.value).resume.get(_MANAGED_KEY)
        return [p for p in managed if isinstance(p, str)] if isinstance(managed, list) else []

    async def _until_stopped(self, operation: Awaitable[T]) -> T:
        """`operation`'s result, or `WorkCancelled` as soon as the work must stop.

        A remote command (a mkfs of a large disk, an initramfs) can take minutes; a STOP must
        not wait for it. Cancelling the operation ends its ssh client, and with it the command.
        """
        running = asyncio.ensure_future(operation)
        stop = asyncio.ensure_future(self._ctx.cancel.wait())
        try:
            await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not running.done():
                running.cancel()
                await asyncio.wait({running})
        if running.cancelled():
            self._ctx.cancel.raise_if_cancelled()
        return running.result()

    def _recorded(self) -> Optional[PreparedTarget]:
        record = self._ctx.task_record()
        if record is None:
            return None
        progress = record.progress_of(FORMAT_STAGE.value)
        data = progress.resume.get(_PREPARED_KEY)
        if not progress.done or not isinstance(data, dict):
            return None
        try:
            return PreparedTarget.from_json(data)
        except ValueError as exc:
            self._ctx.log.warning("target_prepared_record_unreadable", error=str(exc))
            return None

    async def release(self) -> None:
        """Unmount the target's file systems; never raises (logs why it could not)."""
        if self.prepared is None:
            return
        try:
            # Shielded: a STOP or shutdown that cancels the work still leaves the disks clean.
            await asyncio.shield(within(self._preparer.unmount(), RELEASE_TIMEOUT_S))
        except (PrepareError, TargetError, asyncio.TimeoutError, OSError) as exc:
            self._ctx.log.warning("target_unmount_failed", error=str(exc))
        except asyncio.CancelledError:
            self._ctx.log.warning("target_unmount_cancelled")
            raise
        else:
            self._ctx.log.info("target_unmounted")


def _literal(path: str) -> str:
    """`path` as an rsync pattern that matches only itself."""
    return _WILDCARDS.sub(r"\\\1", path)
