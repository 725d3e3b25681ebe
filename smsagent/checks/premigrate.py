"""PREMIGRATE: the migration drill for a task, run by the handler of the task's type.

The drill checks everything the migration would need without copying data (see
`smsagent.checks.drill`). A STOP or a shutdown cuts it short; the drill's own source states
(`premiging` → `premiged`/`premigfailed`) are reported by the drill itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from smsagent.agent.handler_api import (
    CancelReason,
    CommandEnvelope,
    HandlerContext,
    HandlerOutcome,
    State,
    WorkCancelled,
)
from smsagent.checks.drill import run_drill

ERROR_NO_SERVER_ID: Final = "SMSAGENT.NOT_REGISTERED"
ERROR_NO_TASK: Final = "SMSAGENT.NO_TASK"


async def run_premigrate(ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
    """Run the drill for `command`'s task and answer with every check in the result detail.

    Raises:
        WorkCancelled: a STOP or a shutdown arrived first.
    """
    if command.task is None:
        return HandlerOutcome.failure(ERROR_NO_TASK, "the task could not be read")
    if ctx.server_id is None:
        return HandlerOutcome.failure(ERROR_NO_SERVER_ID, "the agent is not registered")
    drill = asyncio.ensure_future(run_drill(ctx.client, ctx.settings, command.task, ctx.server_id))
    stop = asyncio.ensure_future(ctx.cancel.wait())
    try:
        await asyncio.wait({drill, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if not drill.done():
        drill.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drill
        raise WorkCancelled(ctx.cancel.reason or CancelReason.shutdown)
    report = drill.result()
    ctx.log.info("drill_finished", result=report.result.value, passed=report.passed)
    if report.passed:
        return HandlerOutcome.success(
            report.message, next_state=State.idle, detail=report.result_detail()
        )
    return HandlerOutcome.failure(
        report.error_code or "SMSAGENT.DRILL_FAILED",
        report.message,
        next_state=State.idle,
        detail=report.result_detail(),
    )
