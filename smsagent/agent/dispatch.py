"""Runs what the machine decided: migration work in the work slot, other commands in order.

Work (START, resume, sync, PREMIGRATE) runs in its own asyncio task so the poll loop keeps
polling; command handlers (STOP, SKIP, DELETE, the TASK_* notices) run one at a time, in the
order they were decided, in a runner task of their own, because a STOP waits for the work to
wind down. However a handler ends, its outcome is settled the same way: the result goes to the
outbox first, then the state it leads to is saved, then the poll loop is woken to deliver it; a
restart finishes a settle that a crash cut short between the two. Work that a command stopped
settles nothing itself: the task stays `stopping` until that command's handler settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Callable, Final, Optional, Union

import structlog
from pydantic import JsonValue

from smsagent.agent.copystate import copy_state_for
from smsagent.agent.handlers import (
    SETTLED_STATES,
    CommandEnvelope,
    HandlerContext,
    HandlerOutcome,
    HandlerRegistry,
    apply_outcome,
    invoke,
)
from smsagent.agent.machine import WORK_ACTIONS, Action, Decision, State, is_active, recover
from smsagent.agent.outbox import Outbox, ResultKey, result_body
from smsagent.agent.progress import TaskProgress
from smsagent.agent.store import TASK, Store, TaskRecord
from smsagent.agent.work import CancelReason, CancelToken, StopResult, WorkSlot
from smsagent.api.client import SmsClient
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.errors import ErrorAction, SmsError
from smsagent.api.models import PutCopyStateReq, Task
from smsagent.config import Settings
from smsagent.log import task_context

log = structlog.get_logger(__name__)

ERROR_TASK_NOT_FOUND: Final = "SMS.7703"
ERROR_TASK_UNREADABLE: Final = "SMSAGENT.TASK_UNREADABLE"
ERROR_WORK_BUSY: Final = "SMSAGENT.WORK_BUSY"
TASK_FETCH_MAX_DELAY_S: Final = 60.0


@dataclass(frozen=True)
class AgentParts:
    """The seams the poll loop and the dispatcher share."""

    client: SmsClient
    store: Store
    outbox: Outbox
    registry: HandlerRegistry
    settings: Settings
    clock: Callable[[], float] = time.time


class Dispatcher:
    """Carries out decisions; built outside the loop, `open()`ed inside it.

    Args:
        parts: the shared seams.
        server_id: the current source-server id (it can change on re-registration).
    """

    def __init__(self, parts: AgentParts, server_id: Callable[[], Optional[str]]) -> None:
        self._parts = parts
        self._server_id = server_id
        self._slot: WorkSlot[None] = WorkSlot()
        self._queue: Optional[asyncio.Queue[CommandEnvelope]] = None
        self._runner: Optional[asyncio.Task[None]] = None
        self._running_command = False
        self._wake: Optional[asyncio.Event] = None
        self._copy_state_sent: Optional[PutCopyStateReq] = None

    async def open(self) -> None:
        """Start the command runner; call from inside the event loop."""
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        self._runner = asyncio.ensure_future(self._run_commands(self._queue))

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
        """Start work or queue a command handler for a decided command."""
        if envelope.action is Action.none:
            return
        if envelope.action in WORK_ACTIONS:
            self._start_work(envelope)
            return
        assert self._queue is not None, "open() first"
        self._queue.put_nowait(envelope)

    def resume_after_restart(self) -> None:
        """Continue what the persisted task says was under way when the agent stopped."""
        record = self._parts.store.load(TASK).value
        if record is None or self._finish_interrupted_settle(record):
            return
        decision = recover(record.state, record.command)
        command = record.command or CommandName.START
        if decision.next_state is not record.state or decision.result is not None:
            envelope = CommandEnvelope(command, decision.action, record.command_seq, record.task_id)
            outcome = HandlerOutcome(
                decision.result, decision.next_state, decision.error_code, decision.message
            )
            self._settle(envelope, outcome)
        if decision.action in WORK_ACTIONS:
            log.info("task_resumed", task_id=record.task_id, state=record.state.value)
            self._start_work(
                CommandEnvelope(
                    command, decision.action, record.command_seq, record.task_id, record.task_type
                )
            )

    def _finish_interrupted_settle(self, record: TaskRecord) -> bool:
        """Save the state a settle cut short by a crash led to; True if there was one.

        `_settle` queues the result before it saves the state, so a task still active whose
        current command already has a result queued had ended: resuming it would run a
        finished step again. The queued result names the state it settled in.
        """
        if not is_active(record.state) or record.command is None:
            return False
        key = ResultKey(record.task_id, record.command, record.command_seq).text
        detail = next(
            (entry.result_detail for entry in self._parts.outbox.pending() if entry.key == key),
            {},
        )
        state = _text(detail, "state")
        if state not in {settled.value for settled in SETTLED_STATES}:
            return False
        settled = record.settle(
            State(state),
            self._parts.clock(),
            error_code=_text(detail, "error_code"),
            message=_text(detail, "message"),
        )
        self._parts.store.save(TASK, settled)
        log.info("task_settled_at_restart", task_id=record.task_id, state=state, result_key=key)
        return True

    async def sync_copy_state(self) -> None:
        """Tell SMS the source state that matches the task, if it changed since last told."""
        wanted = copy_state_for(self._parts.store.load(TASK).value)
        server_id = self._server_id()
        if wanted is None or wanted == self._copy_state_sent or server_id is None:
            return
        try:
            await self._parts.client.update_copy_state(server_id, wanted)
        except SmsError as exc:
            log.warning("copy_state_failed", copystate=wanted.copystate.value, error=str(exc))
            return
        self._copy_state_sent = wanted
        log.info("copy_state_sent", copystate=wanted.copystate.value)

    async def close(self, grace_s: float) -> StopResult:
        """Stop for shutdown: work gets `grace_s` to reach a checkpoint, then is cancelled."""
        ended = await self._slot.stop(CancelReason.shutdown, grace_s)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        return ended

    def _start_work(self, envelope: CommandEnvelope) -> None:
        if envelope.task_id is None:
            return
        if self._slot.busy:
            outcome = HandlerOutcome.failure(
                ERROR_WORK_BUSY, f"work for task {self._slot.task_id} is still running"
            )
            self._settle(envelope, outcome)
            return
        self._slot.start(envelope.task_id, lambda token: self._run_work(envelope, token))

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
            self._settle(envelope, _left_to_the_stopping_command(outcome, token))
            if _continues_syncing(envelope, prepared, outcome):
                # Runs once this work's task has ended and the slot is free again.
                asyncio.get_running_loop().call_soon(self._start_continuous_sync, envelope)

    def _start_continuous_sync(self, after: CommandEnvelope) -> None:
        """After the full copy of a task with `syncing`, start its repeating sync passes."""
        record = _record_of(self._parts.store, after.task_id)
        if record is None or record.state is not State.replicated or self._slot.busy:
            return
        record = record.apply(
            Decision(State.running, Action.sync_task), after.command, self._parts.clock()
        )
        self._parts.store.save(TASK, record)
        log.info("continuous_sync_started", task_id=record.task_id)
        self._start_work(
            CommandEnvelope(
                after.command,
                Action.sync_task,
                record.command_seq,
                record.task_id,
                record.task_type,
            )
        )

    async def _with_task(
        self, envelope: CommandEnvelope, token: CancelToken
    ) -> Union[CommandEnvelope, HandlerOutcome]:
        """The envelope with the task as SMS describes it, or how trying to read it ended."""
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
                if await _cancelled_within(token, delay_s):
                    return _cancelled_outcome(token)
                continue
            self._remember_type(envelope.task_id, task)
            return replace(envelope, task=task, task_type=task.type or envelope.task_type)

    def _remember_type(self, task_id: str, task: Task) -> None:
        record = self._parts.store.load(TASK).value
        if record is not None and record.task_id == task_id and record.task_type != task.type:
            self._parts.store.save(TASK, record.model_copy(update={"task_type": task.type}))

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
            self._settle(envelope, outcome)

    def _context(
        self, envelope: CommandEnvelope, token: CancelToken, progress: TaskProgress
    ) -> HandlerContext:
        return HandlerContext(
            client=self._parts.client,
            store=self._parts.store,
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

    def _settle(self, envelope: CommandEnvelope, outcome: HandlerOutcome) -> None:
        """Owe the result (outbox first), then save the state it leads to, then wake the loop."""
        if outcome.result is not None:
            self._owe(envelope, outcome)
        apply_outcome(self._parts.store, envelope.task_id, outcome, self._parts.clock())
        log.info(
            "command_settled",
            command=envelope.command.value,
            task_id=envelope.task_id,
            result=None if outcome.result is None else outcome.result.value,
            state=None if outcome.next_state is None else outcome.next_state.value,
            error_code=outcome.error_code,
            message=outcome.message or None,
        )
        if self._wake is not None:
            self._wake.set()

    def _owe(self, envelope: CommandEnvelope, outcome: HandlerOutcome) -> None:
        assert outcome.result is not None
        record = _record_of(self._parts.store, envelope.task_id)
        state = outcome.next_state or (record.state if record is not None else None)
        body = result_body(
            envelope.command,
            outcome.result,
            task_id=envelope.task_id,
            state=state,
            stage=record.stage if record is not None else None,
            error_code=outcome.error_code,
            message=outcome.message,
            extra=outcome.detail,
        )
        self._parts.outbox.enqueue(envelope.result_key, body)


def owe_now(
    parts: AgentParts,
    key: ResultKey,
    result: CommandResult,
    *,
    state: Optional[State],
    error_code: Optional[str],
    message: str,
) -> None:
    """Put a result the machine answered by itself into the outbox."""
    body = result_body(
        key.command,
        result,
        task_id=key.task_id,
        state=state,
        error_code=error_code,
        message=message,
    )
    parts.outbox.enqueue(key, body)


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


def _text(detail: Mapping[str, JsonValue], name: str) -> Optional[str]:
    value = detail.get(name)
    return value if isinstance(value, str) else None


def _record_of(store: Store, task_id: Optional[str]) -> Optional[TaskRecord]:
    record = store.load(TASK).value
    if record is None or record.task_id != task_id:
        return None
    return record


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


async def _cancelled_within(token: CancelToken, delay_s: float) -> bool:
    # `asyncio.wait`, not `wait_for`: before 3.12 `wait_for` can swallow a cancel that arrives
    # just as the token is set, which would leave a shutdown waiting here.
    waiter = asyncio.ensure_future(token.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=delay_s)
    finally:
        waiter.cancel()
    return bool(done)


def _cancelled_outcome(token: CancelToken) -> HandlerOutcome:
    if token.reason is CancelReason.shutdown:
        return HandlerOutcome.interrupted()
    return HandlerOutcome.settled(State.stopped, "stopped before the work began")
