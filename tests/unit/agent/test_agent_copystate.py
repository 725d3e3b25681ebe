"""The source state SMS is told follows the local task state and stage."""

from __future__ import annotations

from typing import Optional

import pytest

from smsagent.agent.copystate import copy_state_for
from smsagent.agent.machine import Action, State
from smsagent.agent.store import TaskRecord
from smsagent.api.enums import CommandName


def _record(state: State, stage: Optional[str] = None, command: CommandName = CommandName.START):
    record = TaskRecord.new("t1", "MIGRATE_FILE", 1.0)
    return record.model_copy(update={"state": state, "stage": stage, "command": command})


@pytest.mark.parametrize(
    ("state", "stage", "expected"),
    [
        (State.prechecking, None, ("replicate", "replicating")),
        (State.running, "MIGRATE_LINUX_FILE", ("replicate", "replicating")),
        (State.running, "SYNC_LINUX_FILE", ("syncing", "syncing")),
        (State.stopping, None, ("stopping", "replicating")),
        (State.stopped, "MIGRATE_LINUX_FILE", ("stopped", "replicating")),
        (State.replicated, None, ("syncing", "syncing")),
        (State.failed, None, ("error", "replicating")),
        (State.finished, None, ("finished", "cutovered")),
    ],
)
def test_each_state_maps_to_its_copy_state(state, stage, expected):
    """Every reported local state names the copystate and migration cycle in the table."""
    body = copy_state_for(_record(state, stage))
    assert body is not None
    assert (body.copystate.value, body.migrationcycle.value) == expected


def test_idle_and_no_task_report_nothing():
    """Without a task, or with an idle one, no source state is reported."""
    assert copy_state_for(None) is None
    assert copy_state_for(_record(State.idle)) is None


def test_a_drill_reports_its_own_states():
    """A task whose last command is PREMIGRATE is left to the drill's own state reports."""
    assert copy_state_for(_record(State.prechecking, command=CommandName.PREMIGRATE)) is None


def test_a_sync_pass_reports_syncing_before_its_stage_begins():
    """A START on a replicated task is a sync pass from the moment it is decided."""
    record = _record(State.running, "MIGRATE_LINUX_FILE").model_copy(
        update={"action": Action.sync_task}
    )
    body = copy_state_for(record)
    assert body is not None and body.copystate.value == "syncing"
