"""What a console action and an agent's command result do to a task: two pure tables.

An action (`POST /v3/tasks/{id}/action`) may move the task to a new state and may queue a
command for the task's source. A command result (`POST .../command_result`) for the command the
source was working on may move the task to a final state. Pairs missing from a table change
nothing and are only recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Optional

from smsagent.api.enums import CommandName, CommandResult, TaskOperation, TaskState


@dataclass(frozen=True)
class ActionRule:
    """The effect of one task operation."""

    next_state: Optional[TaskState] = None
    command: Optional[CommandName] = None
    resets_progress: bool = False


ACTION_RULES: Final[dict[TaskOperation, ActionRule]] = {
    TaskOperation.start: ActionRule(TaskState.RUNNING, CommandName.START),
    TaskOperation.stop: ActionRule(TaskState.ABORTING, CommandName.STOP),
    TaskOperation.skip: ActionRule(TaskState.SKIPPING, CommandName.SKIP),
    # "Start over": the agent sees a plain START for a task whose progress was reset.
    TaskOperation.restart: ActionRule(TaskState.RUNNING, CommandName.START, resets_progress=True),
    TaskOperation.migration_test: ActionRule(None, CommandName.PREMIGRATE),
    # The agent paused the task itself because the rate limit could not be applied.
    TaskOperation.error_for_overspeed: ActionRule(TaskState.ABORT),
    # Target-side operations (launch, clone, snapshots, network measurement) run in the cloud,
    # not on the source: they are recorded and change nothing the agent sees.
    TaskOperation.test: ActionRule(),
    TaskOperation.cutover: ActionRule(),
    TaskOperation.clone_test: ActionRule(),
    TaskOperation.network_check: ActionRule(),
    TaskOperation.clear: ActionRule(),
}

RESULT_RULES: Final[dict[tuple[CommandName, CommandResult], TaskState]] = {
    (CommandName.START, CommandResult.success): TaskState.MIGRATE_SUCCESS,
    (CommandName.START, CommandResult.fail): TaskState.MIGRATE_FAIL,
    (CommandName.STOP, CommandResult.success): TaskState.ABORT,
    (CommandName.SKIP, CommandResult.success): TaskState.RUNNING,
    (CommandName.SKIP, CommandResult.fail): TaskState.RUNNING,
    (CommandName.SYNC, CommandResult.success): TaskState.SYNC_SUCCESS,
    (CommandName.SYNC, CommandResult.fail): TaskState.SYNC_FAIL,
}

FINISHED_STATES: Final[frozenset[TaskState]] = frozenset(
    {TaskState.MIGRATE_SUCCESS, TaskState.SYNC_SUCCESS}
)
FAILED_STATES: Final[frozenset[TaskState]] = frozenset(
    {TaskState.MIGRATE_FAIL, TaskState.SYNC_FAIL}
)


def action_rule(operation: TaskOperation) -> ActionRule:
    """The effect of `operation` (every operation has a row)."""
    return ACTION_RULES[operation]


def result_state(command: CommandName, result: CommandResult) -> Optional[TaskState]:
    """The task's next state after `result` for `command`, or None to leave it."""
    return RESULT_RULES.get((command, result))
