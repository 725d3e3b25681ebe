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
from collections.abc import Awaitable
from typing import Final, Optional, TypeVar

from pydantic import JsonValue

from smsagent.agent.handler_api import HandlerContext, StageProgress
from smsagent.api.enums import SubtaskName
from smsagent.api.models import Task
from smsagent.target.layout import LayoutError, parse_layout
from smsagent.target.prepare import PrepareError, TargetPreparer
from smsagent.target.prepared import PreparedTarget
from smsagent.target.session import TargetError, TargetSession
from smsagent.waits import within

T = TypeVar("T")

FORMAT_STAGE: Final = SubtaskName.FORMAT_DISK_LINUX_FILE
CONFIGURE_STAGE: Final = SubtaskName.CONFIGURE_LINUX_FILE
ERROR_LAYOUT: Final = "SMSAGENT.TARGET_LAYOUT"
RELEASE_TIMEOUT_S: Final = 60.0
_PREPARED_KEY: Final = "prepared"


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
        self._preparer = TargetPreparer(session, root, ctx.cancel.raise_if_cancelled)
        self.prepared: Optional[PreparedTarget] = None

    async def mount(self) -> PreparedTarget:
        """FORMAT_DISK_LINUX_FILE, or (once it is done) mount what it made.

        Raises:
            PrepareError: the layout is refused or a step failed on the target.
        """
        recorded = self._recorded()
        if recorded is not None:
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
