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
as syncing). PREMIGRATE runs the migration drill (`smsagent.handlers.premigrate`).

This module is what the registry loads at start-up: the handler and its constants. The work
itself is in `migrate.py`, imported on the first command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Optional

from smsagent.agent.handlers import CommandEnvelope, HandlerContext, HandlerOutcome
from smsagent.api.enums import CommandName
from smsagent.migration.speedlimit import DEFAULT_REFRESH_S

TASK_TYPE: Final = "MIGRATE_FILE"
VERIFY_STAGE: Final = "VERIFY_LINUX_FILE"
ERROR_SETTING: Final = "SMSAGENT.TASK_SETTING"
ERROR_SOURCE: Final = "SMS.5108"  # the source's file systems cannot be measured
ERROR_SMS_UNREACHABLE: Final = "SMS.0201"


@dataclass(frozen=True)
class MigrateOptions:
    """Timings of the migration work (the defaults suit production; tests shorten them).

    Attributes:
        speed_limit_refresh_s: how often the speed-limit windows are read again.
        skip_poll_s: how often a verification looks for a SKIP.
        retry_base_delay_s: first wait before rsync runs again after a network failure.
        retry_max_delay_s: longest such wait.
        save_interval_s: how often a stage's progress is written to the task record.
        sms_attempts: tries of each SMS call the work needs (when its error is retryable).
        sms_retry_delay_s: wait between those tries.
    """

    speed_limit_refresh_s: float = DEFAULT_REFRESH_S
    skip_poll_s: float = 0.25
    retry_base_delay_s: float = 2.0
    retry_max_delay_s: float = 60.0
    save_interval_s: float = 5.0
    sms_attempts: int = 3
    sms_retry_delay_s: float = 2.0


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
        # the drill and the verification (about 1.5 MB of resident memory).
        from smsagent.migration.migrate import handle_command

        return await handle_command(ctx, command, self._options)
