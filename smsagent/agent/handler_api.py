"""What a handler sees: the `Handler` protocol, the `CommandEnvelope` it is given, the
`HandlerContext` it works through and the `HandlerOutcome` it returns.

It is the one module of `smsagent.agent` a plugin imports, the built-in handlers included, so it
also re-exports what they need of the machine (`State`, `Action`), the task record (`TaskRecord`,
`StageProgress`) and the work (`CancelToken`, `CancelReason`, `WorkCancelled`, `StopResult`,
`WorkControl`). A handler never writes the state directory itself: it changes its task's record
through `HandlerContext.update_task`, which the agent's ledger persists before the call returns.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Final, Optional, Protocol

from pydantic import JsonValue
from structlog.typing import FilteringBoundLogger

from smsagent.agent.machine import Action, State
from smsagent.agent.outbox import ResultKey
from smsagent.agent.store import StageProgress, TaskRecord
from smsagent.agent.work import CancelReason, CancelToken, StopResult, WorkCancelled, WorkControl
from smsagent.api.client import SmsClient
from smsagent.api.enums import CommandName, CommandResult, SubtaskName
from smsagent.api.models import Task
from smsagent.config import Settings

__all__ = [
    "SETTLED_STATES",
    "Action",
    "CancelReason",
    "CancelToken",
    "CommandEnvelope",
    "Handler",
    "HandlerContext",
    "HandlerOutcome",
    "ProgressReporter",
    "StageProgress",
    "State",
    "StopResult",
    "TaskLedger",
    "TaskRecord",
    "WorkCancelled",
    "WorkControl",
]

# States an outcome may leave the task in; the transitional ones belong to the machine.
SETTLED_STATES: Final = frozenset(
    {State.idle, State.stopped, State.replicated, State.failed, State.finished}
)


@dataclass(frozen=True)
class CommandEnvelope:
    """One command as a handler receives it.

    Attributes:
        command: the command.
        action: what the machine decided (start, resume, sync, premigrate, cancel, ...).
        sequence: the task's command sequence when decided; keys the result.
        task_id: the task the command is for, if any.
        task_type: the task's type (`MIGRATE_FILE`, a plugin's type), if known.
        task: the task as `GET /v3/tasks/{id}` returned it, for work commands.
        bucket: `command_param.bucket` (log upload).
        fingerprint: identifies the offer the command came in (repeats of it are recognised).
    """

    command: CommandName
    action: Action
    sequence: int
    task_id: Optional[str] = None
    task_type: Optional[str] = None
    task: Optional[Task] = None
    bucket: Optional[str] = None
    fingerprint: Optional[str] = None

    @property
    def result_key(self) -> ResultKey:
        """The outbox key of this command's result."""
        return ResultKey(self.task_id, self.command, self.sequence)


@dataclass(frozen=True)
class HandlerOutcome:
    """How a handler ended.

    Attributes:
        result: the result owed to the server, or None when none is.
        next_state: the state the task settles in, or None to leave it as it is.
        error_code: why it failed, for a `fail` result.
        message: one sentence for the result detail and the log.
        detail: more `result_detail` fields.
    """

    result: Optional[CommandResult] = None
    next_state: Optional[State] = None
    error_code: Optional[str] = None
    message: str = ""
    detail: Mapping[str, JsonValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.next_state is not None and self.next_state not in SETTLED_STATES:
            msg = f"an outcome cannot leave the task {self.next_state.value}"
            raise ValueError(msg)

    @classmethod
    def success(
        cls,
        message: str = "",
        *,
        next_state: Optional[State] = None,
        detail: Optional[Mapping[str, JsonValue]] = None,
    ) -> HandlerOutcome:
        """The command succeeded."""
        return cls(CommandResult.success, next_state, None, message, dict(detail or {}))

    @classmethod
    def failure(
        cls,
        error_code: str,
        message: str,
        *,
        next_state: Optional[State] = None,
        detail: Optional[Mapping[str, JsonValue]] = None,
    ) -> HandlerOutcome:
        """The command failed, for the reason `error_code` names."""
        return cls(CommandResult.fail, next_state, error_code, message, dict(detail or {}))

    @classmethod
    def settled(cls, next_state: State, message: str = "") -> HandlerOutcome:
        """The task settled in `next_state`; no result is owed."""
        return cls(None, next_state, None, message)

    @classmethod
    def interrupted(cls) -> HandlerOutcome:
        """Work was cut short by shutdown: the state stays (resumable) and nothing is owed."""
        return cls()


class ProgressReporter(Protocol):
    """Reports a stage's progress to SMS (`PUT /v3/tasks/{id}/progress`), throttled."""

    async def report(
        self,
        stage: SubtaskName,
        bytes_done: int,
        bytes_total: int,
        *,
        force: bool = False,
        bytes_sent: Optional[int] = None,
        compress_percent: Optional[float] = None,
    ) -> None:
        """Progress of `stage`; sent at once with `force` (stage start and end), else at most
        every `progress_interval`, latest wins. `bytes_sent` is what the stage has sent so far
        (the rate comes from it alone); None for a stage that sends no data. `compress_percent`
        is how much compression saved of the data sent (block level), if known."""


class TaskLedger(Protocol):
    """The task state a handler may read and change (the agent's ledger, the only writer)."""

    def record_of(self, task_id: Optional[str]) -> Optional[TaskRecord]:
        """The task record if it is `task_id`'s."""

    def update(
        self, task_id: Optional[str], change: Callable[[TaskRecord], TaskRecord]
    ) -> Awaitable[Optional[TaskRecord]]:
        """Apply `change` to `task_id`'s record and persist it; None if it is not held."""

    def forget(self, task_id: Optional[str]) -> Awaitable[bool]:
        """Remove `task_id`'s record; False if another (or none) is held."""


@dataclass(frozen=True)
class HandlerContext:
    """Everything a handler may use; a handler talks to the world only through these.

    Attributes:
        client: the SMS API.
        tasks: the task state (read, change, forget).
        settings: the agent's settings.
        progress: progress reporting for the task.
        cancel: asks the handler to stop (by command or for shutdown) at its checkpoints.
        work: the migration work in progress, for handlers that stop it or skip a stage.
        log: a logger bound to the task and command.
        task_id: the task the handler acts for, if any.
        server_id: this source server's SMS id (for `changestate` and the like), if registered.
        clock: wall-clock seconds.
    """

    client: SmsClient
    tasks: TaskLedger
    settings: Settings
    progress: ProgressReporter
    cancel: CancelToken
    work: WorkControl
    log: FilteringBoundLogger
    task_id: Optional[str] = None
    server_id: Optional[str] = None
    clock: Callable[[], float] = time.time

    def task_record(self) -> Optional[TaskRecord]:
        """The record of this handler's task, or None if the agent holds another."""
        return self.tasks.record_of(self.task_id)

    async def update_task(self, change: Callable[[TaskRecord], TaskRecord]) -> Optional[TaskRecord]:
        """Apply `change` to this handler's task record and persist it; None if it is gone."""
        return await self.tasks.update(self.task_id, change)

    async def forget_task(self) -> bool:
        """Remove this handler's task record (DELETE); False if the agent holds another."""
        return await self.tasks.forget(self.task_id)


class Handler(Protocol):
    """A command or task-type handler, registered under the `smsagent.handlers` group.

    The class is instantiated once, without arguments, at startup.
    """

    commands: ClassVar[frozenset[CommandName]]
    task_types: ClassVar[frozenset[str]]

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Carry out one command; idempotent, since a command may arrive again."""
