"""MIGRATE_FILE: the file-level migration of a Linux server (spec §7.5-7.7), as a task-type handler.

The work of one START runs these stages, each recorded in the task record so that a restart
resumes at the stage it was in, and skipping the stages already done:

1. `MIGRATE_LINUX_FILE`: the full copy (rsync over SSH, see `plan.py` and `pipeline.py`);
2. `VERIFY_LINUX_FILE`: the consistency verification (`consistency.py`), unless the task turns
   it off (`is_need_consistency_check: false`); SKIP ends it early. The name is the agent's own:
   SMS lists no subtask name for it, so it is never reported as one.

The task is then `replicated`. START on a replicated task runs one `SYNC_LINUX_FILE` pass; for a
task with `syncing` the passes repeat every `sync_interval` within the same work until a STOP or
TASK_HAS_FINISHED ends it (the state stays `running` in stage `SYNC_LINUX_FILE`, which SMS shows
as syncing). PREMIGRATE runs the migration drill (`smsagent.checks.premigrate`).

This module is what the registry loads at start-up: the handler alone. Its names and timings are
in `options.py`; the work itself is in `migrate.py`, imported on the first command.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome
from smsagent.api.enums import CommandName
from smsagent.migration.options import TASK_TYPE, MigrateOptions


class MigrateFileHandler:
    """START, SYNC and PREMIGRATE of `MIGRATE_FILE` tasks.

    Args:
        options: timings (the registry creates the handler with the defaults).
    """

    commands: ClassVar[frozenset[CommandName]] = frozenset()
    task_types: ClassVar[frozenset[str]] = frozenset({TASK_TYPE})

    def __init__(self, options: Optional[MigrateOptions] = None) -> None:
        self._options = options or MigrateOptions()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Run the work the machine decided for this task."""
        # Imported on the first command: an agent waiting for work stays without the movers,
        # the drill and the verification (about 1.5 MB of resident memory). `migrate.py` takes
        # what it shares with this module from `options.py`, so this import hides no cycle.
        from smsagent.migration.migrate import handle_command

        return await handle_command(ctx, command, self._options)
