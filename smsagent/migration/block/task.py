"""MIGRATE_BLOCK: the block-level migration of a Linux server (spec §7.5), as a task-type handler.

The work of one START runs these stages, each recorded in the task record so that a restart
resumes at the stage it was in:

1. `FORMAT_DISK_LINUX_BLOCK`: the target's disks partitioned as the task lays them out, LVM
   built and swap made; the file systems come with the copy.
2. `MIGRATE_LINUX_BLOCK`: each volume's used blocks (its file system's allocation map), compressed,
   over TLS to a receiver the agent starts on the target; then live passes of what changed, and
   a final pass with the source's file systems frozen for at most `SMSAGENT_BLOCK_FREEZE_MAX`.
   A STOP, a restart or a dropped connection resumes from what the target acknowledged.
3. `CONFIGURE_LINUX_BLOCK`: the copied file systems grown to their volumes and the copy
   configured to boot on the target (the file-level configure), then the digest tables told
   what that changed on the target.

The task is then `replicated`. START on a replicated task runs one `SYNC_LINUX_BLOCK` pass (only
the blocks whose digest changed travel; the target is never read to find them) and configures
again; for a task with `syncing` the passes repeat every `sync_interval`.

This module is what the registry loads at start-up: the handler alone. The work is in
`work.py`, imported on the first command.
"""

from __future__ import annotations

from typing import ClassVar, Final, Optional

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome
from smsagent.api.enums import CommandName
from smsagent.migration.options import MigrateOptions

TASK_TYPE: Final = "MIGRATE_BLOCK"


class MigrateBlockHandler:
    """START, SYNC and PREMIGRATE of `MIGRATE_BLOCK` tasks.

    Args:
        options: timings (the registry creates the handler with the defaults).
    """

    commands: ClassVar[frozenset[CommandName]] = frozenset()
    task_types: ClassVar[frozenset[str]] = frozenset({TASK_TYPE})

    def __init__(self, options: Optional[MigrateOptions] = None) -> None:
        self._options = options or MigrateOptions()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Run the work the machine decided for this task."""
        # Imported on the first command: an agent waiting for work does not hold the block
        # copy's modules (zstandard, xxhash, TLS) in memory.
        from smsagent.migration.block.work import handle_command

        return await handle_command(ctx, command, self._options)
