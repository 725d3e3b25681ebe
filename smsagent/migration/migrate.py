"""The work of a MIGRATE_FILE command: the stages `file_task.py` describes, run for one task.

Imported by `MigrateFileHandler` on its first command, so that an agent waiting for work does
not hold the movers, the drill and the verification in memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import posixpath
from collections.abc import Awaitable, Sequence
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
from smsagent.api.client import SmsClient
from smsagent.api.errors import ErrorAction, SmsError
from smsagent.api.models import (
    SetConsistencyResultRequestBody,
    ShowCertKeyResponse,
    SpeedLimitWindow,
    Task,
)
from smsagent.checks.drill import TASK_KEY_MISSING
from smsagent.checks.premigrate import run_premigrate
from smsagent.checks.target import TARGET_NO_ADDRESS
from smsagent.childproc import kill_leftover_movers
from smsagent.config import DEFAULT_ENV_FILE
from smsagent.inventory.mounts import read_mountinfo
from smsagent.log import scrub
from smsagent.migration.consistency import VerifyReport, plan_verification, verify
from smsagent.migration.disk_stages import CONFIGURE_STAGE, DiskStages
from smsagent.migration.excludes import PathListError
from smsagent.migration.mover_limits import MoverLimits
from smsagent.migration.options import (
    ERROR_SETTING,
    ERROR_SMS_UNREACHABLE,
    ERROR_SOURCE,
    VERIFY_STAGE,
    MigrateOptions,
)
from smsagent.migration.pipeline import PassOptions, PassRunner, PassSummary
from smsagent.migration.plan import STAGES, SourcePlan, build_pass, copy_rules, plan_source
from smsagent.migration.rsync import PassKind, RetryPolicy, RsyncError
from smsagent.migration.settings import MigrationSettings, SettingError, parse_settings
from smsagent.migration.speedlimit import SpeedLimitWatch
from smsagent.target.configure_report import ConfigureError
from smsagent.target.prepare import PrepareError
from smsagent.target.session import TargetError, TargetSession, check_host, store_private_key
from smsagent.taskfiles import remove_other_tasks
from smsagent.waits import wait_any

T = TypeVar("T")
# SMS errors worth another try within the work (the client renews a token by itself).
_RETRIED: Final = frozenset({ErrorAction.retry, ErrorAction.reauthenticate})


# The failures a migration expects (each says what SMS is told); anything else is a bug.
FAILURES: Final = (
    RsyncError,
    TargetError,
    PrepareError,
    ConfigureError,
    SettingError,
    PathListError,
    SmsError,
)


async def handle_command(
    ctx: HandlerContext, command: CommandEnvelope, options: MigrateOptions
) -> HandlerOutcome:
    """Run the work the machine decided for `command`'s task (`MigrateFileHandler.handle`)."""
    return await run_command(
        ctx,
        command,
        options,
        lambda task: _Migration(ctx, task, options).run(command.action),
        FAILURES,
    )


async def run_command(
    ctx: HandlerContext,
    command: CommandEnvelope,
    options: MigrateOptions,
    work: Callable[[Task], Awaitable[HandlerOutcome]],
    failures: tuple[type[Exception], ...],
) -> HandlerOutcome:
    """The task read (unless the command carried it), then the drill for PREMIGRATE or `work`;
    an expected failure (`failures`) becomes a `fail` result with its SMS code."""
    try:
        task = command.task
        if task is None:
            task_id = command.task_id or ""
            task = await sms_call(ctx, options, lambda: ctx.client.show_task(task_id))
        await remove_other_tasks_files(ctx, task.id)
        if command.action is Action.run_premigrate:
            return await run_premigrate(ctx, dataclasses.replace(command, task=task))
        return await work(task)
    except failures as exc:
        code, message = failure_reason(exc)
        ctx.log.warning("migration_failed", error_code=code, error=message)
        state = State.idle if command.action is Action.run_premigrate else State.failed
        return HandlerOutcome.failure(code, message, next_state=state)


async def remove_other_tasks_files(ctx: HandlerContext, task_id: str) -> None:
    """Once the agent holds `task_id`, every other task's keys and working files on this server
    are leftovers (a deleted or replaced task): remove them."""
    if ctx.tasks.record_of(task_id) is None:
        return  # the agent holds another task (or none): its files stay
    removed, kept = await asyncio.to_thread(remove_other_tasks, ctx.settings.state_dir, task_id)
    if removed:
        ctx.log.info("task_files_removed", tasks=removed)
    if kept:
        ctx.log.warning("task_files_kept", paths=[str(path) for path in kept])


def failure_reason(exc: Exception) -> tuple[str, str]:
    """The SMS error code and message of an expected failure: its own `error_code` and
    `message` where it has them."""
    if isinstance(exc, SmsError):
        return exc.error_code or ERROR_SMS_UNREACHABLE, scrub(str(exc))
    code, message = getattr(exc, "error_code", None), getattr(exc, "message", None)
    if isinstance(code, str) and isinstance(message, str):
        return code, scrub(message)
    return ERROR_SETTING, scrub(str(exc))


async def pause(ctx: HandlerContext, delay_s: float) -> None:
    """Wait `delay_s`, or raise `WorkCancelled` as soon as the work is asked to stop."""
    if await wait_any(ctx.cancel, timeout_s=delay_s):
        ctx.cancel.raise_if_cancelled()


async def sms_call(
    ctx: HandlerContext, options: MigrateOptions, call: Callable[[], Awaitable[T]]
) -> T:
    """Make an SMS call, trying again after a retryable error."""
    attempt = 1
    while True:
        try:
            return await call()
        except SmsError as exc:
            if exc.action not in _RETRIED or attempt >= options.sms_attempts:
                raise
            ctx.log.warning("sms_call_retry", attempt=attempt, error=str(exc))
        await pause(ctx, options.sms_retry_delay_s)
        attempt += 1


def _in_sync(record: Optional[TaskRecord]) -> bool:
    """Whether the task was in a sync pass (copying, or configuring after one) when it stopped."""
    if record is None:
        return False
    if record.stage == STAGES[PassKind.sync].value:
        return True
    return _configuring(record) and (
        record.progress_of(STAGES[PassKind.sync].value).started_at is not None
    )


def _configuring(record: Optional[TaskRecord]) -> bool:
    """Whether the task stopped in the middle of configuring the target."""
    return (
        record is not None
        and record.stage == CONFIGURE_STAGE.value
        and not record.progress_of(CONFIGURE_STAGE.value).done
    )


def target_address(task: Task) -> Optional[str]:
    """Where the data goes: the task's `migration_ip`, else its target server's `ip`."""
    candidates = (task.migration_ip, task.target_server.ip if task.target_server else None)
    return next((address.strip() for address in candidates if address and address.strip()), None)


def destination_root(target_root: str) -> str:
    """The target root as rsync's destination; never the target's own `/`.

    Raises:
        SettingError: the target root is `/` or not absolute.
    """
    root = posixpath.normpath(target_root)
    if not root.startswith("/") or not root.strip("/"):
        msg = (
            f"SMSAGENT_TARGET_ROOT: {target_root!r} must be an absolute directory below '/' "
            "(the target's disks are mounted there; its own root is never written)"
        )
        raise SettingError(msg)
    return "/" + root.lstrip("/")


async def open_target(
    ctx: HandlerContext, task: Task, options: MigrateOptions
) -> tuple[TargetSession, ShowCertKeyResponse]:
    """An SSH session to the task's target with the task key (stored 0600), and the task's
    certkey answer it came in (block tasks take their TLS material from it too).

    Raises:
        TargetError: the task names no usable address, or SMS gave no key.
    """
    settings = ctx.settings
    address = target_address(task)
    if address is None:
        raise TargetError(TARGET_NO_ADDRESS, "the task names no target address (migration_ip)")
    try:
        check_host(address)
    except ValueError as exc:
        raise TargetError(TARGET_NO_ADDRESS, str(exc)) from exc
    answer = await sms_call(ctx, options, lambda: ctx.client.show_cert_key(task.id))
    if not answer.private_key:
        raise TargetError(TASK_KEY_MISSING, "SMS returned no private key for the task")
    try:
        paths = store_private_key(settings.state_dir, task.id, answer.private_key)
    except (OSError, ValueError) as exc:
        raise TargetError(TASK_KEY_MISSING, f"the task key cannot be stored: {exc}") from exc
    session = TargetSession(
        address,
        settings.ssh_port,
        paths.private_key,
        paths.known_hosts,
        connect_timeout_s=settings.connect_timeout,
        task_id=task.id,
    )
    return session, answer


@dataclass(frozen=True)
class _Prepared:
    """What the work needs, read or opened once at its start."""

    settings: MigrationSettings
    source: SourcePlan
    target: TargetSession
    limits: SpeedLimitWatch


class _Migration:
    """The work of one command for one task."""

    def __init__(self, ctx: HandlerContext, task: Task, options: MigrateOptions) -> None:
        self._ctx = ctx
        self._task = task
        self._options = options
        self._destination = destination_root(str(ctx.settings.target_root))
        self._pass_options = PassOptions(
            retry=RetryPolicy(
                retries=ctx.settings.transfer_retries,
                base_delay_s=options.retry_base_delay_s,
                max_delay_s=options.retry_max_delay_s,
            ),
            grace_s=ctx.settings.stop_grace,
            save_interval_s=options.save_interval_s,
        )
        self._mover_limits = MoverLimits()

    async def run(self, action: Action) -> HandlerOutcome:
        """Prepare, then replicate (start, resume) or sync."""
        # A walk of every process's environment in /proc: off the event loop.
        leftovers = await asyncio.to_thread(kill_leftover_movers, self._task.id)
        if leftovers:
            self._ctx.log.warning("leftover_movers_killed", pids=leftovers)
        prepared = await self._prepare()
        record = self._ctx.task_record()
        disks = self._disk_stages(prepared)
        try:
            if disks is not None:
                await disks.mount()
            if action is Action.sync_task or (action is Action.resume_task and _in_sync(record)):
                return await self._sync(prepared, disks)
            return await self._replicate(prepared, disks)
        finally:
            if disks is not None:
                await disks.release()

    def _disk_stages(self, prepared: _Prepared) -> Optional[DiskStages]:
        """The target-disk stages, unless the target root is mounted by someone else."""
        if self._ctx.settings.target_layout == "premounted":
            return None
        return DiskStages(self._ctx, self._task, prepared.target, self._destination)

    # -- preparation --

    async def _prepare(self) -> _Prepared:
        """Settings, target, speed limit and what to copy, fetched side by side."""
        client = self._ctx.client
        limits = SpeedLimitWatch(
            self._speed_windows,
            self._task.speed_limit or 0,
            refresh_s=self._options.speed_limit_refresh_s,
        )
        steps = (
            asyncio.ensure_future(self._settings()),
            asyncio.ensure_future(self._source()),
            asyncio.ensure_future(self._target(client)),
            asyncio.ensure_future(limits.refresh()),
        )
        try:
            settings, source, target, _ = await asyncio.gather(*steps)
        except BaseException:
            for step in steps:
                step.cancel()
            await asyncio.gather(*steps, return_exceptions=True)
            raise
        return _Prepared(settings, source, target, limits)

    async def _settings(self) -> MigrationSettings:
        answer = await self._sms(lambda: self._ctx.client.show_config_setting(self._task.id))
        return parse_settings(answer.configurations)

    async def _speed_windows(self) -> list[SpeedLimitWindow]:
        answer = await self._ctx.client.shows_speed_limits(self._task.id)
        return answer.speed_limit

    async def _source(self) -> SourcePlan:
        settings = self._ctx.settings
        own = (settings.state_dir, DEFAULT_ENV_FILE.parent)
        try:
            mounts = await asyncio.to_thread(read_mountinfo)
            return await asyncio.to_thread(plan_source, settings.source_root, own, mounts)
        except ValueError as exc:
            raise SettingError(f"SMSAGENT_SOURCE_ROOT: {exc}") from exc
        except OSError as exc:
            message = f"the source's file systems cannot be measured: {exc}"
            raise TargetError(ERROR_SOURCE, message) from exc

    async def _target(self, client: SmsClient) -> TargetSession:
        """The task key from SMS (stored 0600) and an SSH session with it.

        The session is not tried here: each rsync connects by itself (an SSH handshake costs a
        noticeable part of a short sync), starts only where the target root exists, and its
        failures carry the SMS codes of the SSH errors.
        """
        session, _ = await open_target(self._ctx, self._task, self._options)
        return session

    async def _sms(self, call: Callable[[], Awaitable[T]]) -> T:
        return await sms_call(self._ctx, self._options, call)

    # -- stages --

    async def _replicate(self, prepared: _Prepared, disks: Optional[DiskStages]) -> HandlerOutcome:
        """The full copy, its verification and the target's configuration, each unless done."""
        detail: dict[str, JsonValue] = {"stage": STAGES[PassKind.migrate].value}
        copied = ""
        if not self._done(STAGES[PassKind.migrate].value):
            summary = await self._copy(prepared, PassKind.migrate)
            detail.update(summary.detail())
            copied = f" ({summary.describe()})"
        report = await self._verify(prepared)
        verification = "off" if report is None else "skipped" if report.stopped else "done"
        detail["verification"] = verification
        if report is not None and not report.stopped:
            detail["consistent"] = report.consistent
            detail.update(report.detail())
            verification += f": {report.describe()}"
        if disks is not None and not self._done(CONFIGURE_STAGE.value):
            await disks.configure(fresh=False)
        message = f"the full copy is on the target{copied}; verification {verification}"
        return HandlerOutcome.success(message, next_state=State.replicated, detail=detail)

    async def _sync(self, prepared: _Prepared, disks: Optional[DiskStages]) -> HandlerOutcome:
        """One sync pass and the configuration after it; for a task with `syncing`, a pass
        every `sync_interval` until stopped (the target's file systems unmounted in between)."""
        record = self._ctx.task_record()
        # Stopped while configuring after a pass: that pass is on the target; configure it.
        copied = _configuring(record)
        while True:
            rules = () if disks is None else disks.sync_rules()
            summary = None if copied else await self._copy(prepared, PassKind.sync, rules)
            if disks is not None:
                await disks.configure(fresh=not copied)
            copied = False
            if not self._task.syncing:
                detail: dict[str, JsonValue] = {"stage": STAGES[PassKind.sync].value}
                message = "the sync pass is done"
                if summary is not None:
                    detail.update(summary.detail())
                    message += f": {summary.describe()}"
                return HandlerOutcome.success(message, next_state=State.replicated, detail=detail)
            if disks is not None:
                await disks.release()
            await pause(self._ctx, self._ctx.settings.sync_interval)
            prepared = await self._prepare_again(prepared)
            if disks is not None:
                await disks.mount()

    async def _prepare_again(self, prepared: _Prepared) -> _Prepared:
        """Read settings and mounts again before a later pass (they may have changed); while
        SMS cannot answer, the last ones do."""
        try:
            return await self._prepare()
        except SmsError as exc:
            self._ctx.log.warning("sync_settings_kept", error=str(exc))
            return prepared

    def _done(self, stage: str) -> bool:
        record = self._ctx.task_record()
        return record is not None and record.progress_of(stage).done

    async def _begin(self, stage: str, *, fresh: bool) -> Optional[TaskRecord]:
        now_s = self._ctx.clock()

        def change(record: TaskRecord) -> TaskRecord:
            if fresh:
                record = record.with_stage(stage, StageProgress(), now_s)
            return record.begin_stage(stage, now_s)

        return await self._ctx.update_task(change)

    async def _finish(self, stage: str, bytes_total: int) -> None:
        now_s = self._ctx.clock()
        await self._ctx.update_task(
            lambda r: r.record_progress(stage, bytes_total, bytes_total, now_s).finish_stage(
                stage, now_s
            )
        )

    async def _copy(
        self, prepared: _Prepared, kind: PassKind, extra_rules: Sequence[str] = ()
    ) -> PassSummary:
        """One copy pass as a stage: a sync pass starts afresh, the full copy resumes."""
        stage = STAGES[kind]
        record = await self._begin(stage.value, fresh=kind is PassKind.sync)
        start_bytes = 0 if record is None else record.progress_of(stage.value).bytes_done
        spec = await asyncio.to_thread(
            build_pass, prepared.source, prepared.settings, kind, self._destination, extra_rules
        )
        total = spec.total_bytes
        await self._ctx.progress.report(
            stage, min(start_bytes, total), total, force=True, bytes_sent=0
        )
        options = dataclasses.replace(
            self._pass_options, mover_cgroup=await self._mover_cgroup(prepared)
        )
        runner = PassRunner(self._ctx, spec, prepared.target, prepared.limits, options, start_bytes)
        summary = await runner.run()
        await self._finish(stage.value, total)
        await self._ctx.progress.report(
            stage, total, total, force=True, bytes_sent=summary.bytes_sent
        )
        self._ctx.log.info(
            "pass_done",
            stage=stage.value,
            summary=summary.describe(),
            **summary.detail(),
        )
        return summary

    async def _mover_cgroup(self, prepared: _Prepared) -> Optional[Path]:
        """The task's resource limits, as read for this pass, put in force for its movers."""
        source = prepared.source
        paths = [posixpath.join(source.source_root, p) for p in source.filesystem_paths]
        return await asyncio.to_thread(self._mover_limits.apply, prepared.settings.limits, paths)

    async def _verify(self, prepared: _Prepared) -> Optional[VerifyReport]:
        """The verification stage; None when the task turns it off or it was done before."""
        if self._task.is_need_consistency_check is False or self._done(VERIFY_STAGE):
            return None
        await self._begin(VERIFY_STAGE, fresh=False)
        settings = prepared.settings
        plan = plan_verification(
            prepared.source.source_root,
            self._destination,
            prepared.source.filesystem_paths,
            copy_rules(prepared.source, settings, PassKind.migrate),
            mode=settings.consistency_mode,
            directories=settings.consistency_dirs,
            excluded=settings.consistency_excluded,
        )
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(self._watch_skip(stop))
        try:
            report = await verify(
                plan,
                prepared.target,
                policy=self._pass_options.retry,
                stop=stop,
                grace_s=self._pass_options.grace_s,
                cgroup=await self._mover_cgroup(prepared),
            )
        finally:
            watcher.cancel()
        self._ctx.cancel.raise_if_cancelled()
        if report.stopped:
            self._ctx.log.info("verification_skipped")
        else:
            await self._send_results(report)
        await self._finish(VERIFY_STAGE, 0)
        return report

    async def _watch_skip(self, stop: asyncio.Event) -> None:
        """Set `stop` on a SKIP or when the work must stop."""
        cancel = self._ctx.cancel
        await wait_any(cancel.skip_requests, cancel, timeout_s=None)
        cancel.take_skip()
        stop.set()

    async def _send_results(self, report: VerifyReport) -> None:
        body = SetConsistencyResultRequestBody(consistency_result=list(report.results))
        try:
            await self._sms(lambda: self._ctx.client.update_consistency_result(self._task.id, body))
        except SmsError as exc:
            # The copy is done and verified; a lost report must not fail the migration.
            self._ctx.log.warning("consistency_result_not_sent", error=str(exc))
