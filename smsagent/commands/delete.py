"""DELETE (legacy): the task was deleted on the server; stop its work and forget it here."""

from __future__ import annotations

from typing import ClassVar

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome, State
from smsagent.api.enums import CommandName
from smsagent.commands.stop import stop_work


class DeleteHandler:
    """DELETE: stop the work and remove the task's record; the agent is `idle` again."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.DELETE})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Stop, forget, answer success (also when there was nothing to forget)."""
        await stop_work(ctx, command)
        if not await ctx.forget_task():
            return HandlerOutcome.success("the task is not known here", next_state=State.idle)
        ctx.log.info("task_forgotten")
        return HandlerOutcome.success("the task was deleted here", next_state=State.idle)
