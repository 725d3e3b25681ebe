"""SKIP: skip the running consistency-verification stage."""

from __future__ import annotations

from typing import ClassVar

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome
from smsagent.api.enums import CommandName


class SkipHandler:
    """SKIP: ask the work to skip its current stage; a stage that may not be skipped ignores it."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.SKIP})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Pass the request on and answer success: the desired state is "not verifying"."""
        running = ctx.work.task_id
        if running is None or (command.task_id is not None and running != command.task_id):
            return HandlerOutcome.success("no stage is running that could be skipped")
        ctx.work.request_skip()
        ctx.log.info("skip_requested")
        return HandlerOutcome.success("the running stage will be skipped if it may be")
