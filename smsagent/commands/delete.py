"""DELETE (legacy): the task was deleted on the server; stop its work and forget it here."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome, State
from smsagent.api.enums import CommandName
from smsagent.commands.stop import stop_work
from smsagent.taskfiles import remove_task_files


class DeleteHandler:
    """DELETE: stop the work, remove the task's record and its keys and working files on this
    server; the agent is `idle` again."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.DELETE})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Stop, forget, answer success (also when there was nothing to forget)."""
        await stop_work(ctx, command)
        forgotten = await ctx.forget_task()
        # Held or not, the task is not held now: its files are leftovers either way.
        if ctx.task_id:
            kept = await asyncio.to_thread(remove_task_files, ctx.settings.state_dir, ctx.task_id)
            if kept:
                ctx.log.warning("task_files_kept", paths=[str(path) for path in kept])
        if not forgotten:
            return HandlerOutcome.success("the task is not known here", next_state=State.idle)
        ctx.log.info("task_forgotten")
        return HandlerOutcome.success("the task was deleted here", next_state=State.idle)
