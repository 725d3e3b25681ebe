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
from typing import Callable, Final, Optional, TypeVar

from pydantic import JsonValue

from smsagent.agent.handler_api import HandlerContext, StageProgress, TaskRecord
from smsagent.api.enums import SubtaskName
from smsagent.api.models import Task
from smsagent.target.configure import configure
from smsagent.target.configure_files import BACKUP_SUFFIX
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
BLOCK_FORMAT_STAGE: Final = SubtaskName.FORMAT_DISK_LINUX_BLOCK
BLOCK_CONFIGURE_STAGE: Final = SubtaskName.CONFIGURE_LINUX_BLOCK
ERROR_LAYOUT: Final = "SMSAGENT.TARGET_LAYOUT"
RELEASE_TIMEOUT_S: Final = 60.0
_PREPARED_KEY: Final = "prepared"
_MANAGED_KEY: Final = "managed"
# What configure keeps beside the files it changed: a sync pass never deletes them, although
# the source has none.
_PROTECTED_BACKUPS: Final = (f"P *{BACKUP_SUFFIX}", f"P *{BACKUP_SUFFIX}.[0-9]*")
_WILDCARDS: Final = re.compile(r"([*?\[\\])")


class DiskStages:
    """The FORMAT and CONFIGURE stages of one task, and the target's mounts in between.

    Args:
        ctx: the handler's context (task record, progress, cancellation).
        task: the task as SMS describes it (its `target_server` layout).
        session: SSH to the target.
        root: where the target tree is mounted on the target.
    """

    def __init__(
        self,
        ctx: HandlerContext,
        task: Task,
        session: TargetSession,
        root: str,
        *,
        block: bool = False,
    ) -> None:
        self._ctx = ctx
        self._task = task
        self._session = session
        self._root = root
        self._block = block
        self._format_stage = BLOCK_FORMAT_STAGE if block else FORMAT_STAGE
        self._configure_stage = BLOCK_CONFIGURE_STAGE if block else CONFIGURE_STAGE
        self._preparer = TargetPreparer(session, root, ctx.cancel.raise_if_cancelled, ctx.log)
        self.prepared: Optional[PreparedTarget] = None
        self._mounted = False

    async def mount(self) -> PreparedTarget:
        """FORMAT_DISK_LINUX_FILE, or (once it is done) mount what it made.

        For a block task: FORMAT_DISK_LINUX_BLOCK (partitions, LVM and swap; the file systems
        come with the copy), or once it is done, its groups activated; nothing is mounted.

        Raises:
            PrepareError: the layout is refused or a step failed on the target.
        """
        recorded = self._recorded()
        if recorded is not None:
            async with self._session.shared_connection():
                if self._block:
                    await self._until_stopped(self._preparer.activate(recorded))
                else:
                    await self._until_stopped(self._preparer.remount(recorded))
                    self._mounted = True
            self.prepared = recorded
            return recorded
        try:
            layout = parse_layout(self._task.target_server)
        except LayoutError as exc:
            raise PrepareError(ERROR_LAYOUT, str(exc)) from exc
        stage = self._format_stage
        now_s = self._ctx.clock()
        await self._ctx.update_task(
            lambda r: r.with_stage(stage.value, StageProgress(), now_s).begin_stage(
                stage.value, now_s
            )
        )
        await self._ctx.progress.report(stage, 0, 1, force=True)
        self._ctx.log.info(
            "target_format_started",
            disks=layout.device_names(),
            boot_mode=layout.boot_mode.value,
        )
        async with self._session.shared_connection():
            prepared = await self._until_stopped(
                self._preparer.prepare(layout, filesystems=not self._block)
            )
        self.prepared = prepared
        self._mounted = not self._block
        await self._record_prepared(prepared, finish=True)
        await self._ctx.progress.report(stage, 1, 1, force=True)
        self._ctx.log.info(
            "target_formatted",
            volumes=[f"{v.device}:{v.fstype}:{v.mount_point or '-'}" for v in prepared.volumes],
        )
        return prepared

    async def _record_prepared(self, prepared: PreparedTarget, *, finish: bool) -> None:
        stage = self._format_stage.value
        resume: dict[str, JsonValue] = {_PREPARED_KEY: prepared.to_json()}
        done_s = self._ctx.clock()

        def change(record: TaskRecord) -> TaskRecord:
            record = record.record_progress(stage, 1, 1, done_s, resume)
            return record.finish_stage(stage, done_s) if finish else record

        await self._ctx.update_task(change)

    async def mount_copied(self) -> PreparedTarget:
        """Block tasks: mount the file systems the copy brought, each grown to its volume.

        Their UUIDs (the source's, as a block copy keeps them) are read and recorded the first
        time, so later mounts check them as after a format.
        """
        prepared = self.prepared
        if prepared is None:
            raise RuntimeError("the target was not prepared")
        async with self._session.shared_connection():
            if any(not v.uuid for v in prepared.volumes):
                prepared = await self._until_stopped(self._preparer.adopt(prepared))
                await self._record_prepared(prepared, finish=True)
                self.prepared = prepared
            self._mounted = True  # also a part-way mount is taken down by `release`
            await self._until_stopped(self._preparer.remount(prepared))
            grown = await self._until_stopped(self._preparer.grow(prepared))
        self._ctx.log.info("target_file_systems_grown", volumes=grown)
        return prepared

    async def configure(
        self, *, fresh: bool, after: Optional[Callable[[], Awaitable[None]]] = None
    ) -> None:
        """CONFIGURE_LINUX_FILE on the mounted copy (again after a sync pass: `fresh`).

        Raises:
            ConfigureError: a file or command on the target failed (SMS.3102 for the initramfs).
        """
        prepared = self.prepared
        if prepared is None:
            raise RuntimeError("configure before the target was mounted")
        stage = self._configure_stage.value
        managed_before = self._managed()
        now_s = self._ctx.clock()

        def begin(record: TaskRecord) -> TaskRecord:
            if fresh:
                record = record.with_stage(stage, StageProgress(), now_s)
            return record.begin_stage(stage, now_s)

        await self._ctx.update_task(begin)
        await self._ctx.progress.report(self._configure_stage, 0, 1, force=True)
        if self._block:
            prepared = await self.mount_copied()
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
        if after is not None:
            # Block tasks: the copy's file systems come down, and the digest tables forget
            # what the target's own tools changed, before the stage counts as done.
            await self.release()
            await after()
        await self._ctx.update_task(
            lambda r: r.record_progress(stage, 1, 1, done_s, resume).finish_stage(stage, done_s)
        )
        await self._ctx.progress.report(self._configure_stage, 1, 1, force=True)

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
        managed = record.progress_of(self._configure_stage.value).resume.get(_MANAGED_KEY)
        return [p for p in managed if isinstance(p, str)] if isinstance(managed, list) else []

    async def _until_stopped(self, operation: Awaitable[T]) -> T:
        return await until_stopped(self._ctx, operation)

    def _recorded(self) -> Optional[PreparedTarget]:
        record = self._ctx.task_record()
        if record is None:
            return None
        progress = record.progress_of(self._format_stage.value)
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
        if self.prepared is None or not self._mounted:
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
            self._mounted = False
            self._ctx.log.info("target_unmounted")


async def until_stopped(ctx: HandlerContext, operation: Awaitable[T]) -> T:
    """`operation`'s result, or `WorkCancelled` as soon as the work must stop.

    A remote command (a mkfs of a large disk, an initramfs) or a block pass waiting for the
    target can take minutes; a STOP must not wait for it. Cancelling the operation ends its
    ssh client or connection, and with it the remote side's part.
    """
    running = asyncio.ensure_future(operation)
    stop = asyncio.ensure_future(ctx.cancel.wait())
    try:
        await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not running.done():
            running.cancel()
            await asyncio.wait({running})
    if running.cancelled():
        ctx.cancel.raise_if_cancelled()
    return running.result()


def _literal(path: str) -> str:
    """`path` as an rsync pattern that matches only itself."""
    return _WILDCARDS.sub(r"\\\1", path)
