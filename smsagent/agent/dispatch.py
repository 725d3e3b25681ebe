"""Runs what the ledger accepted: migration work in the work slot, other commands in order.

Work (START, resume, sync, PREMIGRATE) runs in its own asyncio task so the poll loop keeps
polling; command handlers (STOP, SKIP, DELETE, the TASK_* notices) run one at a time, in the
order they were accepted, in a runner task of their own, because a STOP waits for the work to
wind down. However a handler ends, the ledger settles its outcome and the poll loop is woken
to deliver the result. Work that a command stopped settles nothing itself: the task stays
`stopping` until that command's handler settles it.

The dispatcher writes no state. A failure of its own machinery (not of a handler, which
`invoke` turns into a `fail` result) is handed to `on_crash`, which ends the agent with a
non-zero status: a live process that no longer acts on commands is worse than a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, Callable, Final, Optional, Union

import structlog

from smsagent.agent.handler_api import (
    CommandEnvelope,
    HandlerContext,
    HandlerOutcome,
)
from smsagent.agent.ledger import Ledger
from smsagent.agent.machine import WORK_ACTIONS, Action, State
from smsagent.agent.progress import TaskProgress
from smsagent.agent.registry import HandlerRegistry, invoke
from smsagent.agent.work import CancelReason, CancelToken, StopResult, WorkSlot
from smsagent.api.client import SmsClient
from smsagent.api.enums import CommandResult
from smsagent.api.errors import ErrorAction, SmsError
from smsagent.config import Settings
from smsagent.log import task_context
from smsagent.waits import wait_any

log = structlog.get_logger(__name__)

ERROR_TASK_NOT_FOUND: Final = "SMS.7703"
ERROR_TASK_UNREADABLE: Final = "SMSAGENT.TASK_UNREADABLE"
ERROR_WORK_BUSY: Final = "SMSAGENT.WORK_BUSY"
TASK_FETCH_MAX_DELAY_S: Final = 60.0

CrashHandler = Callable[[str, BaseException], None]


@dataclass(frozen=True)
class AgentParts:
    """The seams the poll loop and the dispatcher share."""

    client: SmsClient
    ledger: Ledger
    registry: HandlerRegistry
    settings: Settings
    clock: Callable[[], float] = time.time


def supervise(task: asyncio.Future[Any], name: str, on_crash: CrashHandler) -> None:
    """Tell `on_crash` if `task` ends with an exception (not when it is cancelled)."""

    def reap(done: asyncio.Future[Any]) -> None:
        failure = None if done.cancelled() else done.exception()
        if failure is not None:
            on_crash(name, failure)

    task.add_done_callback(reap)


class Dispatcher:
    """Runs accepted commands; built outside the loop, `open()`ed inside it.

    Args:
        parts: the shared seams.
        server_id: the current source-server id (it can change on re-registration).
        on_crash: told when the runner or a piece of work fails outside its handler.
    """

    def __init__(
        self,
        parts: AgentParts,
        server_id: Callable[[], Optional[str]],
        on_crash: CrashHandler,
    ) -> None:
        self._parts = parts
        self._server_id = server_id
        self._on_crash = on_crash
        self._slot: WorkSlot[None] = WorkSlot()
        self._queue: Optional[asyncio.Queue[CommandEnvelope]] = None
        self._runner: Optional[asyncio.Task[None]] = None
        self._running_command = False
        self._wake: Optional[asyncio.Event] = None

    async def open(self) -> None:
        """Start the command runner; call from inside the event loop."""
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        self._runner = self._supervised(self._run_commands(self._queue), "command_runner")

    @property
    def wake(self) -> asyncio.Event:
        """Set when a result is owed or a task settled, so the loop polls without waiting."""
        assert self._wake is not None, "open() first"
        return self._wake

    @property
    def busy(self) -> bool:
        """Whether work or a command handler is running or queued."""
        queued = self._queue is not None and not self._queue.empty()
        return self._slot.busy or self._running_command or queued

    def dispatch(self, envelope: CommandEnvelope) -> None:
        """Start work or queue a command handler for an accepted command."""
        if envelope.action is Action.none:
            return
        if envelope.action in WORK_ACTIONS:
            self._start_work(envelope)
            return
        assert self._queue is not None, "open() first"
        self._queue.put_nowait(envelope)

    async def close(self, grace_s: float) -> StopResult:
        """Stop for shutdown: work gets `grace_s` to reach a checkpoint, then is cancelled."""
        ended = await self._slot.stop(CancelReason.shutdown, grace_s)
        if self._runner is not None:
            self._runner.cancel()
            # Waited for, not awaited: a runner that failed was reported when it did.
            await asyncio.wait({self._runner})
        return ended

    def _supervised(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        supervise(task, name, self._on_crash)
        return task

    def _start_work(self, envelope: CommandEnvelope) -> None:
        if envelope.task_id is None:
            return
        if self._slot.busy:
            outcome = HandlerOutcome.failure(
                ERROR_WORK_BUSY, f"work for task {self._slot.task_id} is still running"
            )
            self._supervised(self._settle(envelope, outcome), "settle")
            return
        task = self._slot.start(envelope.task_id, lambda token: self._run_work(envelope, token))
        supervise(task, "work", self._on_crash)

    async def _run_work(self, envelope: CommandEnvelope, token: CancelToken) -> None:
        assert envelope.task_id is not None
        with task_context(envelope.task_id, envelope.command.value):
            progress = self._progress(envelope.task_id)
            try:
                prepared = await self._with_task(envelope, token)
                if isinstance(prepared, HandlerOutcome):
                    outcome = prepared
                else:
                    handler = self._parts.registry.resolve(prepared)
                    ctx = self._context(prepared, token, progress)
                    outcome = await invoke(handler, ctx, prepared)
            finally:
                await progress.close()
            await self._settle(envelope, _left_to_the_stopping_command(outcome, token))
            if _continues_syncing(envelope, prepared, outcome):
                # Runs once this work's task has ended and the slot is free again.
                asyncio.get_running_loop().call_soon(self._continue_syncing, envelope)

    def _continue_syncing(self, after: CommandEnvelope) -> None:
        self._supervised(self._start_continuous_sync(after), "continuous_sync")

    async def _start_continuous_sync(self, after: CommandEnvelope) -> None:
        """After the full copy of a task with `syncing`, start its repeating sync passes."""
        if self._slot.busy:
            return
        envelope = await self._parts.ledger.begin_continuous_sync(after)
        if envelope is not None and not self._slot.busy:
            self._start_work(envelope)

    async def _with_task(
        self, envelope: CommandEnvelope, token: CancelToken
    ) -> Union[CommandEnvelope, HandlerOutcome]:
        """The envelope with the task as SMS describes it, or how trying to read it ended.

        A task that cannot be read for a reason worth retrying is tried again with backoff,
        like any failing call; one that cannot be read for good fails the task.
        """
        assert envelope.task_id is not None
        attempt = 0
        while True:
            try:
                task = await self._parts.client.show_task(envelope.task_id)
            except SmsError as exc:
                outcome = _fetch_failure(envelope.task_id, exc)
                if outcome is not None:
                    return outcome
                attempt += 1
                log.warning("task_fetch_failed", error=str(exc), attempt=attempt)
                delay_s = min(2.0**attempt, TASK_FETCH_MAX_DELAY_S)
                if await wait_any(token, timeout_s=delay_s):
                    return _cancelled_outcome(token)
                continue
            await self._remember_type(envelope.task_id, task.type)
            return replace(envelope, task=task, task_type=task.type or envelope.task_type)

    async def _remember_type(self, task_id: str, task_type: Optional[str]) -> None:
        if task_type is not None:
            change = {"task_type": task_type}
            await self._parts.ledger.update(task_id, lambda r: r.model_copy(update=change))

    async def _run_commands(self, queue: asyncio.Queue[CommandEnvelope]) -> None:
        while True:
            envelope = await queue.get()
            self._running_command = True
            try:
                await self._run_command(envelope)
            finally:
                self._running_command = False

    async def _run_command(self, envelope: CommandEnvelope) -> None:
        with task_context(envelope.task_id or "-", envelope.command.value):
            progress = self._progress(envelope.task_id or "-")
            handler = self._parts.registry.resolve(envelope)
            ctx = self._context(envelope, CancelToken(), progress)
            outcome = await invoke(handler, ctx, envelope)
            await progress.close()
            await self._settle(envelope, outcome)

    async def _settle(self, envelope: CommandEnvelope, outcome: HandlerOutcome) -> None:
        await self._parts.ledger.settle(envelope, outcome)
        if self._wake is not None:
            self._wake.set()

    def _context(
        self, envelope: CommandEnvelope, token: CancelToken, progress: TaskProgress
    ) -> HandlerContext:
        return HandlerContext(
            client=self._parts.client,
            tasks=self._parts.ledger,
            settings=self._parts.settings,
            progress=progress,
            cancel=token,
            work=self._slot,
            log=log.bind(task_id=envelope.task_id, command=envelope.command.value),
            task_id=envelope.task_id,
            server_id=self._server_id(),
            clock=self._parts.clock,
        )

    def _progress(self, task_id: str) -> TaskProgress:
        return TaskProgress(self._parts.client, task_id, self._parts.settings.progress_interval)


def _continues_syncing(
    envelope: CommandEnvelope,
    prepared: Union[CommandEnvelope, HandlerOutcome],
    outcome: HandlerOutcome,
) -> bool:
    """Whether a full copy just finished for a task that syncs continuously (spec §7.7)."""
    return (
        isinstance(prepared, CommandEnvelope)
        and prepared.task is not None
        and bool(prepared.task.syncing)
        and envelope.action in (Action.start_task, Action.resume_task)
        and outcome.result is CommandResult.success
        and outcome.next_state is State.replicated
    )


def _fetch_failure(task_id: str, exc: SmsError) -> Optional[HandlerOutcome]:
    """The outcome for an error reading the task, or None when it is worth retrying."""
    if exc.action is ErrorAction.retry or exc.action is ErrorAction.reauthenticate:
        return None
    if exc.status == 404:
        return HandlerOutcome.failure(
            ERROR_TASK_NOT_FOUND,
            f"task {task_id} does not exist on the server",
            next_state=State.failed,
        )
    return HandlerOutcome.failure(
        ERROR_TASK_UNREADABLE, f"cannot read task {task_id}: {exc}", next_state=State.failed
    )


def _left_to_the_stopping_command(outcome: HandlerOutcome, token: CancelToken) -> HandlerOutcome:
    """Work a command stopped changes no state: the task stays `stopping` until the stopping
    command's handler settles it and owes its result, so that a crash in between is settled by
    `recover` at the restart, result and all, instead of leaving `stopped` with nothing owed."""
    if token.reason is CancelReason.command and outcome.result is None:
        return replace(outcome, next_state=None)
    return outcome


def _cancelled_outcome(token: CancelToken) -> HandlerOutcome:
    if token.reason is CancelReason.shutdown:
        return HandlerOutcome.interrupted()
    return HandlerOutcome.settled(State.stopped, "stopped before the work began")
