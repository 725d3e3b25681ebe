"""The work of a MIGRATE_BLOCK command: the stages `task.py` describes, run for one task.

Imported by `MigrateBlockHandler` on its first command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Optional, TypeVar

from pydantic import JsonValue

from smsagent.agent.handler_api import (
    Action,
    CommandEnvelope,
    HandlerContext,
    HandlerOutcome,
    StageProgress,
    State,
    TaskRecord,
)
from smsagent.api.enums import SubtaskName
from smsagent.api.models import Task
from smsagent.childproc import kill_leftover_movers
from smsagent.inventory.mounts import read_mountinfo
from smsagent.migration.block.digests import DigestTable
from smsagent.migration.block.engine import BlockChannel, ChannelError, ChannelOptions, PassReport
from smsagent.migration.block.extents import SUB_BLOCK, UsedMap, used_map, whole_map
from smsagent.migration.block.freeze import FreezeError, frozen
from smsagent.migration.block.sender import PassCounters, PassVolume
from smsagent.migration.block.settings import BlockSettings, parse_block_settings
from smsagent.migration.block.snapshot import (
    Snapshot,
    SnapshotError,
    invalid,
    remove_leftovers,
    snapshot_map,
    snapshots,
)
from smsagent.migration.block.source import SourceReadError
from smsagent.migration.block.tls import TlsMaterial, TlsMaterialError
from smsagent.migration.block.volumes import BlockVolume, VolumeError, block_volumes
from smsagent.migration.disk_stages import DiskStages, until_stopped
from smsagent.migration.migrate import (
    FAILURES,
    destination_root,
    open_target,
    pause,
    run_command,
    sms_call,
)
from smsagent.migration.options import MigrateOptions
from smsagent.target.layout import LayoutError, parse_layout
from smsagent.target.prepare import PrepareError
from smsagent.target.session import TargetSession
from smsagent.taskfiles import block_dir

T = TypeVar("T")

MIGRATE_STAGE: Final = SubtaskName.MIGRATE_LINUX_BLOCK
SYNC_STAGE: Final = SubtaskName.SYNC_LINUX_BLOCK
CONFIGURE_STAGE: Final = SubtaskName.CONFIGURE_LINUX_BLOCK
ERROR_LAYOUT: Final = "SMSAGENT.TARGET_LAYOUT"
# Live passes after the full copy, each sending what changed during the one before, until one
# sends no more than this share of the used data (then the frozen pass is short).
CONVERGE_PASSES: Final = 3
CONVERGED_SHARE: Final = 0.01
CONVERGED_MIN_BYTES: Final = 16 * 1024 * 1024
FINAL_ATTEMPTS: Final = 3
# What the thaw itself takes, kept free within the freeze limit.
THAW_MARGIN_S: Final = 0.5
_POSITIONS: Final = "positions"
_PHASE: Final = "phase"
_BOOT: Final = "boot_id"
_CONSISTENCY: Final = "consistency"
_BY_VOLUME: Final = "consistency_by_volume"
# From the weakest: the task's consistency is its weakest volume's.
CONSISTENCY_ORDER: Final = ("live", "frozen", "snapshot", "unmounted")
_TARGET_CHANGED: Final = "target_changed_bytes"
BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


async def handle_command(
    ctx: HandlerContext, command: CommandEnvelope, options: MigrateOptions
) -> HandlerOutcome:
    """Run the work the machine decided for `command`'s block task."""
    return await run_command(
        ctx,
        command,
        options,
        lambda task: _BlockMigration(ctx, task, options).run(command.action),
        (*FAILURES, ChannelError, VolumeError, TlsMaterialError),
    )


@dataclass(frozen=True)
class _Prepared:
    """What the work needs, read once at its start."""

    settings: BlockSettings
    session: TargetSession
    material: TlsMaterial


class _BlockMigration:
    """The work of one command for one block task."""

    def __init__(self, ctx: HandlerContext, task: Task, options: MigrateOptions) -> None:
        self._ctx = ctx
        self._task = task
        self._options = options
        self._root = destination_root(str(ctx.settings.target_root))
        self._tables: dict[int, DigestTable] = {}
        self._frozen = False
        self._target_changed_bytes = 0

    async def run(self, action: Action) -> HandlerOutcome:
        leftovers = await asyncio.to_thread(kill_leftover_movers, self._task.id)
        if leftovers:
            self._ctx.log.warning("leftover_movers_killed", pids=leftovers)
        await remove_leftovers(self._task.id, self._ctx.log)
        prepared = await self._prepare()
        stages = DiskStages(self._ctx, self._task, prepared.session, self._root, block=True)
        channel: Optional[BlockChannel] = None
        try:
            target = await stages.mount()
            volumes = await self._volumes(target_devices={v.device for v in target.volumes})
            channel = self._channel(prepared, [v.target_device for v in volumes])
            record = self._ctx.task_record()
            if action is Action.sync_task or (action is Action.resume_task and _in_sync(record)):
                return await self._sync(stages, channel, volumes)
            return await self._replicate(stages, channel, volumes)
        finally:
            if channel is not None:
                await channel.close()
            await stages.release()
            for table in self._tables.values():
                table.flush()
                table.close()

    # -- preparation --

    async def _prepare(self) -> _Prepared:
        answer_settings, (session, certkey) = await asyncio.gather(
            self._sms(lambda: self._ctx.client.show_config_setting(self._task.id)),
            open_target(self._ctx, self._task, self._options),
        )
        settings = parse_block_settings(answer_settings.configurations)
        passphrase = None
        if "ENCRYPTED" in (certkey.private_key or "") + (certkey.target_data_private_key or ""):
            answer = await self._sms(lambda: self._ctx.client.show_passphrase(self._task.id))
            passphrase = answer.passphrase
        return _Prepared(settings, session, TlsMaterial.from_answer(certkey, passphrase))

    async def _volumes(self, target_devices: set[str]) -> list[BlockVolume]:
        try:
            layout = parse_layout(self._task.target_server)
        except LayoutError as exc:
            raise PrepareError(ERROR_LAYOUT, str(exc)) from exc
        mounts = await asyncio.to_thread(read_mountinfo)
        source_root = str(self._ctx.settings.source_root)
        volumes = await asyncio.to_thread(block_volumes, layout, source_root, mounts)
        for volume in volumes:
            if volume.target_device not in target_devices:
                raise VolumeError(
                    "SMSAGENT.TARGET_CHANGED", f"{volume.target_device} was not prepared"
                )
        return volumes

    def _channel(self, prepared: _Prepared, devices: Sequence[str]) -> BlockChannel:
        settings = self._ctx.settings
        options = ChannelOptions(
            port=settings.block_data_port,
            connect_address=prepared.settings.transit_address,
            threads=prepared.settings.threads,
            cache_bytes=prepared.settings.cache_bytes,
            retries=settings.transfer_retries,
            retry_delay_s=self._options.retry_base_delay_s,
            read_bytes_s=prepared.settings.read_bytes_s,
        )
        return BlockChannel(
            prepared.session,
            prepared.material,
            devices,
            options,
            block_dir(settings.state_dir, self._task.id) / "tls",
            self._ctx.cancel.raise_if_cancelled,
            self._ctx.log,
        )

    def _table(self, volume: BlockVolume) -> DigestTable:
        table = self._tables.get(volume.index)
        if table is None:
            name = f"{volume.index}-{volume.target_device.strip('/').replace('/', '_')}.digests"
            path = block_dir(self._ctx.settings.state_dir, self._task.id) / name
            table = self._tables[volume.index] = DigestTable(path, volume.size)
        return table

    async def _sms(self, call: Callable[[], Awaitable[T]]) -> T:
        return await sms_call(self._ctx, self._options, call)

    # -- stages --

    async def _replicate(
        self,
        stages: DiskStages,
        channel: BlockChannel,
        volumes: list[BlockVolume],
    ) -> HandlerOutcome:
        detail: dict[str, JsonValue] = {"stage": MIGRATE_STAGE.value}
        if not self._done(MIGRATE_STAGE.value):
            detail.update(await self._copy(MIGRATE_STAGE, channel, volumes))
        if not self._done(CONFIGURE_STAGE.value):
            await self._configure(stages, channel, volumes, fresh=False)
        message = "the block copy is on the target and configured"
        return HandlerOutcome.success(message, next_state=State.replicated, detail=detail)

    async def _sync(
        self,
        stages: DiskStages,
        channel: BlockChannel,
        volumes: list[BlockVolume],
    ) -> HandlerOutcome:
        copied = _configuring(self._ctx.task_record())
        while True:
            detail: dict[str, JsonValue] = {"stage": SYNC_STAGE.value}
            if not copied:
                detail.update(await self._copy(SYNC_STAGE, channel, volumes))
            await self._configure(stages, channel, volumes, fresh=not copied)
            copied = False
            if not self._task.syncing:
                return HandlerOutcome.success(
                    "the sync pass is done", next_state=State.replicated, detail=detail
                )
            await channel.close()
            await pause(self._ctx, self._ctx.settings.sync_interval)

    async def _configure(
        self,
        stages: DiskStages,
        channel: BlockChannel,
        volumes: list[BlockVolume],
        *,
        fresh: bool,
    ) -> None:
        async def reconcile() -> None:
            restore = 0
            for volume in volumes:
                pass_volume = await self._pass_volume(volume, start=0)
                forgotten = await until_stopped(self._ctx, channel.reconcile(pass_volume))
                self._ctx.log.info(
                    "block_table_reconciled",
                    volume=volume.target_device,
                    forgotten="all" if forgotten is None else forgotten,
                )
                restore += (
                    pass_volume.used.used_bytes if forgotten is None else forgotten * SUB_BLOCK
                )
            self._target_changed_bytes = restore

        await stages.configure(fresh=fresh, after=reconcile)
        # What the next sync pass sends back to undo the configuration before configuring
        # again: reported with it, apart from what changed on the source.
        changed: dict[str, JsonValue] = {_TARGET_CHANGED: self._target_changed_bytes}
        await self._ctx.update_task(lambda r: _merge_resume(r, CONFIGURE_STAGE.value, changed))

    def _done(self, stage: str) -> bool:
        record = self._ctx.task_record()
        return record is not None and record.progress_of(stage).done

    # -- the copy --

    async def _pass(
        self,
        channel: BlockChannel,
        volumes: list[PassVolume],
        on_progress: Optional[Callable[[PassCounters], None]] = None,
    ) -> PassReport:
        """One pass, given up as soon as the work must stop (a STOP never waits for a target
        that stopped answering)."""
        return await until_stopped(self._ctx, channel.run_pass(volumes, on_progress))

    async def _pass_volume(
        self, volume: BlockVolume, start: int, snapshot: Optional[Snapshot] = None
    ) -> PassVolume:
        """The volume as a pass reads it: from `snapshot` where it has one (its map too)."""
        if snapshot is None:
            used = await asyncio.to_thread(_used_map, volume)
            device = volume.source_device
        else:
            workdir = block_dir(self._ctx.settings.state_dir, self._task.id)
            used = await asyncio.to_thread(
                snapshot_map, snapshot, volume.fstype, volume.size, str(workdir)
            )
            device = snapshot.device
        return PassVolume(
            volume.index, device, volume.target_device, used, self._table(volume), start
        )

    async def _copy(
        self, stage: SubtaskName, channel: BlockChannel, volumes: list[BlockVolume]
    ) -> dict[str, JsonValue]:
        """A full copy (MIGRATE) or a sync pass: live passes that converge, then the final pass
        with the source's file systems frozen; resumes from the record."""
        record = self._ctx.task_record()
        progress = record.progress_of(stage.value) if record is not None else StageProgress()
        resume = dict(progress.resume) if progress.started_at is not None else {}
        boot_id = _boot_id()
        if resume.get(_BOOT) not in (None, boot_id):
            # The source restarted: entries cleared in memory just before a send may not have
            # reached the table's file, so the tables cannot be trusted.
            for volume in volumes:
                self._table(volume).reset()
            resume.pop(_POSITIONS, None)
        total = sum(v.size for v in volumes)
        positions = _positions(resume.get(_POSITIONS)) if resume.get(_PHASE) == "full" else {}
        now_s = self._ctx.clock()
        fresh = stage is SYNC_STAGE and progress.done

        def begin(r: TaskRecord) -> TaskRecord:
            if fresh or progress.started_at is None:
                r = r.with_stage(stage.value, StageProgress(), now_s)
            return r.begin_stage(stage.value, now_s)

        await self._ctx.update_task(begin)
        phase = str(resume.get(_PHASE) or "full")
        reporter = _Reporter(
            self._ctx,
            self._tables,
            lambda: self._frozen,
            self._options.save_interval_s,
            stage,
            volumes,
            boot_id,
        )
        reports: list[PassReport] = []
        async with reporter.running():
            snapped = await self._snapshot_passes(
                channel, volumes, phase, positions, reporter, reports
            )
            live = [v for v in volumes if v.index not in snapped]
            reporter.phase = "converge"
            await reporter.save()
            final = "unmounted"
            if any(v.writable for v in live):
                for _ in range(CONVERGE_PASSES):
                    passing = [await self._pass_volume(v, 0) for v in live]
                    report = await self._pass(channel, passing, reporter.acked)
                    reports.append(report)
                    used = sum(pv.used.used_bytes for pv in passing)
                    if report.sent_bytes + report.zero_bytes <= max(
                        CONVERGED_MIN_BYTES, CONVERGED_SHARE * used
                    ):
                        break
                final = await self._final_pass(channel, live, reporter, reports)
        by_volume = _consistency(volumes, snapped, final)
        consistency = min(by_volume.values(), key=CONSISTENCY_ORDER.index, default="unmounted")
        done_s = self._ctx.clock()
        final_resume: dict[str, JsonValue] = {
            _PHASE: "done", _CONSISTENCY: consistency, _BY_VOLUME: dict(by_volume),
        }  # fmt: skip
        await self._ctx.update_task(
            lambda r: r.record_progress(
                stage.value, total, total, done_s, final_resume
            ).finish_stage(stage.value, done_s)
        )
        sent = sum(r.sent_bytes for r in reports)
        wire = sum(r.wire_bytes for r in reports)
        await self._ctx.progress.report(
            stage, total, total, force=True, bytes_sent=reporter.covered(),
            compress_percent=_saved(sent, wire),
        )  # fmt: skip
        detail: dict[str, JsonValue] = {
            "bytes_total": total,
            "bytes_configured_on_target": _configured_bytes(record),
            "bytes_read": sum(r.read_bytes for r in reports),
            "bytes_sent": sent,
            "bytes_on_wire": wire,
            "bytes_zero": sum(r.zero_bytes for r in reports),
            "passes": len(reports),
            "reconnects": sum(r.reconnects for r in reports),
            "resent_frames": sum(r.resent_frames for r in reports),
            "consistency": consistency,
            "consistency_by_volume": dict(by_volume),
        }
        self._ctx.log.info("block_pass_done", stage=stage.value, **detail)
        return detail

    async def _snapshot_passes(
        self,
        channel: BlockChannel,
        volumes: list[BlockVolume],
        phase: str,
        positions: dict[int, int],
        reporter: _Reporter,
        reports: list[PassReport],
    ) -> set[int]:
        """The full pass (all volumes; those on logical volumes read from their snapshots), and
        a pass bringing a snapshot volume copied in part from an earlier snapshot (a resumed
        copy) to this one. The indexes of the volumes that are a point in time now: none when a
        snapshot failed (its volumes are then copied as the others are)."""
        candidates = [v for v in volumes if v.writable and v.mapped]
        async with snapshots(candidates, self._task.id, self._ctx.log) as taken:
            try:
                if phase == "full":
                    reporter.phase = "full"
                    passing = [
                        await self._pass_volume(v, positions.get(v.index, 0), taken.get(v.index))
                        for v in volumes
                    ]
                    for pv in passing:
                        pv.table.clear_outside(pv.used.runs())
                    reports.append(await self._pass(channel, passing, reporter.acked))
                behind = [
                    v
                    for v in volumes
                    if v.index in taken and (phase != "full" or positions.get(v.index, 0) > 0)
                ]
                if behind:
                    reporter.phase = "converge"
                    passing = [await self._pass_volume(v, 0, taken[v.index]) for v in behind]
                    reports.append(await self._pass(channel, passing, reporter.acked))
            except (SourceReadError, SnapshotError) as exc:
                if isinstance(exc, SourceReadError) and not await invalid(list(taken.values())):
                    raise
                self._ctx.log.warning("source_snapshot_given_up", error=str(exc))
                return set()
        return set(taken)

    async def _final_pass(
        self,
        channel: BlockChannel,
        volumes: list[BlockVolume],
        reporter: _Reporter,
        reports: list[PassReport],
    ) -> str:
        """The last pass, with the source's mounted file systems frozen; its consistency:
        `frozen` (a point in time), `unmounted` (nothing writes to the volumes), or `live` (the
        freeze failed, or no pass fitted in the limit: the copy is as after a crash, which the
        file systems' journals repair at the first mount)."""
        # A file system mounted read-only does not change: it needs no freeze (and one through
        # FUSE could not have one).
        mount_points = [v.mounted_at for v in volumes if v.writable and v.mounted_at is not None]
        if not mount_points:
            return "unmounted"
        limit_s = self._ctx.settings.block_freeze_max
        reporter.phase = "final"
        for attempt in range(1, FINAL_ATTEMPTS + 1):
            try:
                report = await self._frozen_pass(channel, volumes, mount_points, limit_s)
            except FreezeError as exc:
                self._ctx.log.warning("source_freeze_failed", error=str(exc))
                return "live"
            except asyncio.TimeoutError:
                self._ctx.log.warning("source_freeze_too_short", attempt=attempt, limit_s=limit_s)
                live = [await self._pass_volume(v, 0) for v in volumes]
                reports.append(await self._pass(channel, live, reporter.acked))
                continue
            reports.append(report)
            return "frozen"
        self._ctx.log.warning("source_not_quiescent", limit_s=limit_s, attempts=FINAL_ATTEMPTS)
        return "live"

    async def _frozen_pass(
        self,
        channel: BlockChannel,
        volumes: list[BlockVolume],
        mount_points: list[str],
        limit_s: float,
    ) -> PassReport:
        """One pass inside the freeze, given up (TimeoutError) when the limit comes: the thaw
        never waits for the copy."""
        loop = asyncio.get_running_loop()
        with contextlib.ExitStack() as deferred:
            for volume in volumes:
                deferred.enter_context(self._table(volume).deferred())
            async with frozen(mount_points, limit_s, self._ctx.log) as window:
                self._frozen = True
                started = loop.time()
                try:
                    # The maps are read under the freeze: what the pass copies is what they say.
                    pass_volumes = [await self._pass_volume(v, 0) for v in volumes]
                    remaining = limit_s - (loop.time() - started) - THAW_MARGIN_S
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    # Not paced by LINUX_IO_LIMIT: the freeze must stay short.
                    report = await asyncio.wait_for(
                        until_stopped(self._ctx, channel.run_pass(pass_volumes, paced=False)),
                        remaining,
                    )
                finally:
                    self._frozen = False
        self._ctx.log.info("source_frozen", held_s=round(window.held_s, 3))
        return report


class _Reporter:
    """Progress of a block stage: each acknowledgement moves it; saved and sent periodically
    (never while the source is frozen: the state directory may be on a frozen file system)."""

    def __init__(
        self,
        ctx: HandlerContext,
        tables: dict[int, DigestTable],
        frozen: Callable[[], bool],
        interval_s: float,
        stage: SubtaskName,
        volumes: list[BlockVolume],
        boot_id: str,
    ) -> None:
        self._ctx = ctx
        self._tables = tables
        self._frozen = frozen
        self._interval_s = interval_s
        self._stage = stage
        self._sizes = {v.index: v.size for v in volumes}
        self._total = sum(self._sizes.values())
        self._boot_id = boot_id
        self.phase = "full"
        self._positions: dict[int, int] = {}
        self._sent = 0
        self._wire = 0

    def acked(self, counters: PassCounters) -> None:
        if self.phase == "full":
            self._positions.update(counters.positions)
        self._sent = counters.sent_bytes
        self._wire = counters.wire_bytes

    def covered(self) -> int:
        """Bytes of the volumes the copy has covered (spec: replicated of the partition sizes)."""
        if self.phase != "full":
            return self._total
        return sum(min(self._positions.get(i, 0), size) for i, size in self._sizes.items())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.ensure_future(self._loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            covered = self.covered()
            await self._ctx.progress.report(
                self._stage, covered, self._total, bytes_sent=covered,
                compress_percent=_saved(self._sent, self._wire),
            )  # fmt: skip
            if not self._frozen():
                await self.save()

    async def save(self) -> None:
        ctx = self._ctx
        for table in self._tables.values():
            await asyncio.to_thread(table.flush)
        positions: dict[str, JsonValue] = {str(i): p for i, p in self._positions.items()}
        resume: dict[str, JsonValue] = {
            _PHASE: self.phase, _POSITIONS: positions, _BOOT: self._boot_id,
        }  # fmt: skip
        covered, now_s = self.covered(), ctx.clock()
        await ctx.update_task(
            lambda r: r.record_progress(self._stage.value, covered, self._total, now_s, resume)
        )


def _consistency(volumes: Sequence[BlockVolume], snapped: set[int], final: str) -> dict[str, str]:
    """Each volume's consistency (by its mount point, else its target device)."""
    found: dict[str, str] = {}
    for volume in volumes:
        name = volume.mount_point or volume.target_device
        if volume.index in snapped:
            found[name] = "snapshot"
        elif volume.writable:
            found[name] = final
        else:
            found[name] = "unmounted"
    return found


def _used_map(volume: BlockVolume) -> UsedMap:
    if volume.mapped:
        return used_map(volume.size, volume.mounted_at)
    return whole_map(volume.size)


def _merge_resume(record: TaskRecord, stage: str, values: dict[str, JsonValue]) -> TaskRecord:
    progress = record.progress_of(stage)
    merged = progress.model_copy(update={"resume": {**progress.resume, **values}})
    return record.model_copy(update={"stages": {**record.stages, stage: merged}})


def _configured_bytes(record: Optional[TaskRecord]) -> int:
    """The bytes the last configuration changed on the target (a sync pass restores them)."""
    if record is None:
        return 0
    value = record.progress_of(CONFIGURE_STAGE.value).resume.get(_TARGET_CHANGED)
    return value if isinstance(value, int) else 0


def _saved(sent: int, wire: int) -> Optional[float]:
    if not sent:
        return None
    return max(0.0, 100.0 * (1 - wire / sent))


def _positions(raw: object) -> dict[int, int]:
    if not isinstance(raw, dict):
        return {}
    found: dict[int, int] = {}
    for key, value in raw.items():
        if isinstance(value, int) and str(key).isdigit():
            found[int(key)] = value
    return found


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _in_sync(record: Optional[TaskRecord]) -> bool:
    if record is None:
        return False
    if record.stage == SYNC_STAGE.value:
        return True
    return _configuring(record) and record.progress_of(SYNC_STAGE.value).started_at is not None


def _configuring(record: Optional[TaskRecord]) -> bool:
    return (
        record is not None
        and record.stage == CONFIGURE_STAGE.value
        and not record.progress_of(CONFIGURE_STAGE.value).done
    )
