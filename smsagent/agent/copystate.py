"""The source state SMS shows for the local task state: `PUT /v3/sources/{id}/changestate`.

    local state     stage          copystate   migrationcycle
    prechecking     -              replicate   replicating
    running         SYNC_*         syncing     syncing      (or a sync pass about to begin)
    running         other          replicate   replicating
    stopping        -              stopping    replicating
    stopped         -              stopped     replicating
    replicated      -              syncing     syncing      (full copy done; syncs until cutover)
    failed          -              error       replicating
    finished        -              finished    cutovered
    idle            -              (nothing is reported)

A migration drill (PREMIGRATE) reports its own `premiging`/`premiged`/`premigfailed` states, so
a task whose last command is PREMIGRATE is left alone here.
"""

from __future__ import annotations

from typing import Final, Optional

from smsagent.agent.machine import Action, State
from smsagent.agent.store import TaskRecord
from smsagent.api.enums import CommandName, CopyState, MigrationCycle
from smsagent.api.models import PutCopyStateReq

_FIXED: Final[dict[State, tuple[CopyState, MigrationCycle]]] = {
    State.prechecking: (CopyState.replicate, MigrationCycle.replicating),
    State.stopping: (CopyState.stopping, MigrationCycle.replicating),
    State.stopped: (CopyState.stopped, MigrationCycle.replicating),
    State.replicated: (CopyState.syncing, MigrationCycle.syncing),
    State.failed: (CopyState.error, MigrationCycle.replicating),
    State.finished: (CopyState.finished, MigrationCycle.cutovered),
}


def copy_state_for(record: Optional[TaskRecord]) -> Optional[PutCopyStateReq]:
    """The changestate body that matches `record`, or None when nothing is to be reported."""
    if record is None or record.command is CommandName.PREMIGRATE:
        return None
    if record.state is State.running:
        syncing = record.stage is not None and record.stage.startswith("SYNC_")
        if syncing or record.action is Action.sync_task:
            return PutCopyStateReq(
                copystate=CopyState.syncing, migrationcycle=MigrationCycle.syncing
            )
        return PutCopyStateReq(
            copystate=CopyState.replicate, migrationcycle=MigrationCycle.replicating
        )
    fixed = _FIXED.get(record.state)
    if fixed is None:
        return None
    return PutCopyStateReq(copystate=fixed[0], migrationcycle=fixed[1])
