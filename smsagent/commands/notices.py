"""TASK_NOT_STARTED, TASK_HAS_STOPPED, TASK_HAS_FINISHED: the server's view of the task, acted on
as desired state. They owe no result."""

from __future__ import annotations

from typing import ClassVar

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome, State
from smsagent.api.enums import CommandName
from smsagent.commands.stop import stop_message, stop_work


class TaskNotStartedHandler:
    """TASK_NOT_STARTED for a task that ran here: it was reset on the server, so the local
    progress is dropped and the next START begins afresh."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.TASK_NOT_STARTED})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Drop the stage progress; the task becomes `idle`."""
        await stop_work(ctx, command)
        await ctx.update_task(lambda record: record.reset(ctx.clock()))
        ctx.log.info("task_reset")
        return HandlerOutcome.settled(State.idle, "the task was reset on the server")


class TaskHasStoppedHandler:
    """TASK_HAS_STOPPED while work runs: stop it, as a STOP would, without a result."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.TASK_HAS_STOPPED})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Stop the work; the task becomes `stopped`."""
        ended = await stop_work(ctx, command)
        return HandlerOutcome.settled(State.stopped, stop_message(ended))


class TaskHasFinishedHandler:
    """TASK_HAS_FINISHED: the migration is over (e.g. cut over); any sync pass is stopped and
    no more run."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.TASK_HAS_FINISHED})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Stop the work; the task becomes `finished`."""
        await stop_work(ctx, command)
        return HandlerOutcome.settled(State.finished, "the task has finished")
