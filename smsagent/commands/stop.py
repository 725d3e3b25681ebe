"""STOP: stop the task's work at a checkpoint; the task can be resumed with START."""

from __future__ import annotations

from typing import ClassVar, Final

from smsagent.agent.handler_api import (
    CancelReason,
    CommandEnvelope,
    HandlerContext,
    HandlerOutcome,
    State,
    StopResult,
)
from smsagent.api.enums import CommandName

# Work gets `stop_grace` to end its child processes; this much more covers its own cleanup.
STOP_MARGIN_S: Final = 10.0

_MESSAGES: Final = {
    StopResult.idle: "nothing was running",
    StopResult.stopped: "the task was stopped",
    StopResult.killed: "the task did not stop in time and was cancelled",
}


async def stop_work(ctx: HandlerContext, command: CommandEnvelope) -> StopResult:
    """Stop the work of `command`'s task, if it is what runs, and wait until it ended."""
    running = ctx.work.task_id
    if running is None or (command.task_id is not None and running != command.task_id):
        return StopResult.idle
    ended = await ctx.work.stop(CancelReason.command, ctx.settings.stop_grace + STOP_MARGIN_S)
    ctx.log.info("work_stopped", how=ended.value)
    return ended


def stop_message(ended: StopResult) -> str:
    """One sentence on how a stop went."""
    return _MESSAGES[ended]


class StopHandler:
    """STOP: the task ends `stopped` and its progress is kept for a resume."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.STOP})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Stop the work and answer success."""
        ended = await stop_work(ctx, command)
        return HandlerOutcome.success(stop_message(ended), next_state=State.stopped)
