"""The local task's state machine: `decide(state, command) -> Decision`, pure and table-driven.

Commands are desired state, not events: the server may send the same command on every poll,
so a command that is already satisfied is a no-op (START for the running task) or an immediate
success (STOP when nothing runs). `Decision.next_state` takes effect at once; when work or a
handler runs, its outcome settles the state later (e.g. `stopping` -> `stopped`). A result of
`-` is owed by the handler the action runs (or by nobody, for the TASK_* notices).

Commands for the current task (or naming no task, or arriving when there is none). Each
entry reads `states: next state, action, result`; "stay" keeps the state, a missing action is
`none`, a missing result is none now (a handler owes it, or none is due):

    START              idle: prechecking, start_task
                       prechecking, running: stay (already under way)
                       stopping: stay, fail (send START again once stopped)
                       stopped, failed: prechecking, resume_task
                       replicated: running, sync_task (one sync pass)
                       finished: stay, success
    PREMIGRATE         idle: prechecking, run_premigrate
                       prechecking: stay (already checking)
                       stopping: stay, fail (stopping)
                       running, stopped, replicated, failed, finished: stay, fail (too late)
    STOP               idle, stopped, failed, finished: stay, success (nothing runs)
                       prechecking, running: stopping, cancel_task
                       stopping: stay (the stop under way answers)
                       replicated: stopped, success (no more continuous-sync passes)
    SKIP               running: stay, skip_stage
                       any other state: stay, success (nothing to skip)
    SYNC (legacy)      replicated: running, sync_task
                       prechecking, running: stay (a pass is under way)
                       idle, stopped, failed: stay, fail (no full replica yet; START resumes)
                       stopping, finished: stay, fail
    DELETE             prechecking, running, stopping: stopping, forget_task
                       idle, stopped, replicated, failed, finished: idle, forget_task
    TASK_NOT_STARTED   stopped, replicated, failed, finished: idle, reset_task
                       idle, prechecking, running, stopping: stay
    TASK_HAS_STOPPED   prechecking, running: stopping, cancel_task
                       replicated: stopped
                       idle, stopping, stopped, failed, finished: stay
    TASK_HAS_FINISHED  prechecking, running, stopping: stopping, finish_task
                       idle, stopped, replicated, failed, finished: finished
    UPLOAD_LOG,        any state: stay, upload_log (with no handler installed, the
    RSET_LOG_ACL       result is fail)

Why some cells are what they are:

- START on `stopped`/`failed` resumes where the stored stage progress left off.
- TASK_NOT_STARTED on an active task is ignored: a START we just took is newer news than the
  server's view, which may not have caught up. On an inactive task it means the task was reset
  on the server, so local progress is dropped.
- TASK_HAS_STOPPED / TASK_HAS_FINISHED stop local work: the server's view is the desired state.
- Handlers a decision starts for one task run one at a time, in the order decided, so a
  TASK_HAS_FINISHED arriving while a STOP winds down settles after it, as `finished`.

Commands for a different task than the current one (`same_task=False`); the active states
are `prechecking`, `running` and `stopping`:

    START, PREMIGRATE  inactive: prechecking, start_task / run_premigrate (the new task
                       replaces the old); active: stay, fail (another task is active)
    STOP, SKIP, DELETE stay, success (that task does not run here)
    SYNC               stay, fail (that task is not on this server)
    TASK_*             stay
    UPLOAD_LOG, ...    as for the current task

An unknown command name changes nothing and answers nothing (the caller logs it once).

After a restart `recover(state, command)` continues what the persisted state says was under
way: `prechecking`/`running` resume their work (`run_premigrate` again for a drill), and a
`stopping` task settles as the command that stopped it asked (STOP owes its success). The
command a restart looks at is the last one that changed the state or started an action other
than a `SIDE_ACTIONS` one: a START failed while a STOP winds down, or a SKIP passed to running
work, does not replace it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final, Optional, Union

from smsagent.api.enums import CommandName, CommandResult


class State(str, Enum):
    """The local task's state, as persisted in the task document."""

    idle = "idle"
    prechecking = "prechecking"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"
    replicated = "replicated"
    failed = "failed"
    finished = "finished"


class Action(str, Enum):
    """What the poller does to carry out a decision."""

    none = "none"
    start_task = "start_task"
    resume_task = "resume_task"
    sync_task = "sync_task"
    run_premigrate = "run_premigrate"
    cancel_task = "cancel_task"
    finish_task = "finish_task"
    reset_task = "reset_task"
    skip_stage = "skip_stage"
    forget_task = "forget_task"
    upload_log = "upload_log"


ACTIVE_STATES: Final = frozenset({State.prechecking, State.running, State.stopping})
# Actions that run migration work, dispatched by task type; the others go to the handler of
# the command.
WORK_ACTIONS: Final = frozenset(
    {Action.start_task, Action.resume_task, Action.sync_task, Action.run_premigrate}
)

# Actions taken beside the task's current command when the state stays: the command under way
# stays the one a restart settles or resumes (see `recover`).
SIDE_ACTIONS: Final = frozenset({Action.none, Action.skip_stage, Action.upload_log})

# Error codes of the failures the machine answers itself (`result_detail.error_code`).
ERROR_TASK_STOPPING: Final = "SMSAGENT.TASK_STOPPING"
ERROR_TASK_ACTIVE: Final = "SMSAGENT.TASK_ACTIVE"
ERROR_DRILL_TOO_LATE: Final = "SMSAGENT.DRILL_NOT_ALLOWED"
ERROR_NOT_REPLICATED: Final = "SMSAGENT.NOT_REPLICATED"
ERROR_TASK_FINISHED: Final = "SMSAGENT.TASK_FINISHED"
ERROR_OTHER_TASK_ACTIVE: Final = "SMSAGENT.OTHER_TASK_ACTIVE"
ERROR_UNKNOWN_TASK: Final = "SMSAGENT.UNKNOWN_TASK"


@dataclass(frozen=True)
class UnknownCommand:
    """A command name this agent does not know (a newer server)."""

    name: str


Command = Union[CommandName, UnknownCommand]


@dataclass(frozen=True)
class Decision:
    """What to do with one command.

    Attributes:
        next_state: the state to persist before acting.
        action: what the poller does next.
        result: the result to send now, or None when none is due now (a handler owes it, or
            the command needs none).
        error_code: for a `fail` result, why.
        message: a sentence for the result detail and the log.
    """

    next_state: State
    action: Action = Action.none
    result: Optional[CommandResult] = None
    error_code: Optional[str] = None
    message: str = ""

    def changes_state(self, state: State) -> bool:
        """Whether taking this decision in `state` is a transition (it advances the command
        sequence the outbox keys results by)."""
        return self.next_state is not state

    def takes_over(self, state: State) -> bool:
        """Whether the command becomes the task's current one, the one a restart settles or
        resumes (`recover`). An answer given on the side (START while stopping, PREMIGRATE
        while running, a SKIP signal) keeps the command under way, or a crash would forget
        what that command owes."""
        return self.changes_state(state) or self.action not in SIDE_ACTIONS


def parse_command(name: Optional[str]) -> Optional[Command]:
    """The command for a wire `command_name`; None when nothing is pending."""
    if name is None or not name.strip():
        return None
    try:
        return CommandName(name.strip())
    except ValueError:
        return UnknownCommand(name.strip())


def is_active(state: State) -> bool:
    """Whether work for the task may be running (or winding down)."""
    return state in ACTIVE_STATES


def _go(state: State, action: Action = Action.none) -> Decision:
    return Decision(state, action)


def _ok(state: State, message: str) -> Decision:
    return Decision(state, Action.none, CommandResult.success, None, message)


def _fail(state: State, code: str, message: str) -> Decision:
    return Decision(state, Action.none, CommandResult.fail, code, message)


_WHILE_STOPPING: Final = "the task is stopping; send START again once it has stopped"
_DRILL_TOO_LATE: Final = "the migration drill runs only before the migration starts"
_NEEDS_REPLICA: Final = "a sync needs a finished full replication; START resumes the task"
_NOTHING_TO_SKIP: Final = "no stage is running that could be skipped"
_NOT_RUNNING: Final = "nothing was running"


def _start_rules() -> dict[tuple[State, CommandName], Decision]:
    return {
        (State.idle, CommandName.START): _go(State.prechecking, Action.start_task),
        (State.prechecking, CommandName.START): _go(State.prechecking),
        (State.running, CommandName.START): _go(State.running),
        (State.stopping, CommandName.START): _fail(
            State.stopping, ERROR_TASK_STOPPING, _WHILE_STOPPING
        ),
        (State.stopped, CommandName.START): _go(State.prechecking, Action.resume_task),
        (State.replicated, CommandName.START): _go(State.running, Action.sync_task),
        (State.failed, CommandName.START): _go(State.prechecking, Action.resume_task),
        (State.finished, CommandName.START): _ok(State.finished, "the task has already finished"),
    }


def _premigrate_rules() -> dict[tuple[State, CommandName], Decision]:
    late = {
        state: _fail(state, ERROR_DRILL_TOO_LATE, _DRILL_TOO_LATE)
        for state in (State.running, State.stopped, State.replicated, State.failed, State.finished)
    }
    rules = {(state, CommandName.PREMIGRATE): decision for state, decision in late.items()}
    rules[(State.idle, CommandName.PREMIGRATE)] = _go(State.prechecking, Action.run_premigrate)
    rules[(State.prechecking, CommandName.PREMIGRATE)] = _go(State.prechecking)
    rules[(State.stopping, CommandName.PREMIGRATE)] = _fail(
        State.stopping, ERROR_TASK_STOPPING, _WHILE_STOPPING
    )
    return rules


def _stop_rules() -> dict[tuple[State, CommandName], Decision]:
    return {
        (State.idle, CommandName.STOP): _ok(State.idle, _NOT_RUNNING),
        (State.prechecking, CommandName.STOP): _go(State.stopping, Action.cancel_task),
        (State.running, CommandName.STOP): _go(State.stopping, Action.cancel_task),
        (State.stopping, CommandName.STOP): _go(State.stopping),
        (State.stopped, CommandName.STOP): _ok(State.stopped, "the task is already stopped"),
        (State.replicated, CommandName.STOP): _ok(State.stopped, "continuous sync stopped"),
        (State.failed, CommandName.STOP): _ok(State.failed, _NOT_RUNNING),
        (State.finished, CommandName.STOP): _ok(State.finished, _NOT_RUNNING),
    }


def _skip_rules() -> dict[tuple[State, CommandName], Decision]:
    rules = {(state, CommandName.SKIP): _ok(state, _NOTHING_TO_SKIP) for state in State}
    rules[(State.running, CommandName.SKIP)] = _go(State.running, Action.skip_stage)
    return rules


def _sync_rules() -> dict[tuple[State, CommandName], Decision]:
    return {
        (State.idle, CommandName.SYNC): _fail(State.idle, ERROR_NOT_REPLICATED, _NEEDS_REPLICA),
        (State.prechecking, CommandName.SYNC): _go(State.prechecking),
        (State.running, CommandName.SYNC): _go(State.running),
        (State.stopping, CommandName.SYNC): _fail(
            State.stopping, ERROR_TASK_STOPPING, _WHILE_STOPPING
        ),
        (State.stopped, CommandName.SYNC): _fail(
            State.stopped, ERROR_NOT_REPLICATED, _NEEDS_REPLICA
        ),
        (State.replicated, CommandName.SYNC): _go(State.running, Action.sync_task),
        (State.failed, CommandName.SYNC): _fail(State.failed, ERROR_NOT_REPLICATED, _NEEDS_REPLICA),
        (State.finished, CommandName.SYNC): _fail(
            State.finished, ERROR_TASK_FINISHED, "the task has finished"
        ),
    }


def _delete_rules() -> dict[tuple[State, CommandName], Decision]:
    rules = {(state, CommandName.DELETE): _go(State.idle, Action.forget_task) for state in State}
    for state in ACTIVE_STATES:
        rules[(state, CommandName.DELETE)] = _go(State.stopping, Action.forget_task)
    return rules


def _notice_rules() -> dict[tuple[State, CommandName], Decision]:
    rules: dict[tuple[State, CommandName], Decision] = {}
    inactive = (State.stopped, State.replicated, State.failed, State.finished)
    for state in State:
        rules[(state, CommandName.TASK_NOT_STARTED)] = (
            _go(State.idle, Action.reset_task) if state in inactive else _go(state)
        )
        rules[(state, CommandName.TASK_HAS_STOPPED)] = _go(state)
        rules[(state, CommandName.TASK_HAS_FINISHED)] = (
            _go(State.stopping, Action.finish_task) if is_active(state) else _go(State.finished)
        )
    rules[(State.prechecking, CommandName.TASK_HAS_STOPPED)] = _go(
        State.stopping, Action.cancel_task
    )
    rules[(State.running, CommandName.TASK_HAS_STOPPED)] = _go(State.stopping, Action.cancel_task)
    rules[(State.replicated, CommandName.TASK_HAS_STOPPED)] = _go(State.stopped)
    return rules


def _log_rules() -> dict[tuple[State, CommandName], Decision]:
    return {
        (state, command): _go(state, Action.upload_log)
        for state in State
        for command in (CommandName.UPLOAD_LOG, CommandName.RSET_LOG_ACL)
    }


RULES: Final[Mapping[tuple[State, CommandName], Decision]] = {
    **_start_rules(),
    **_premigrate_rules(),
    **_stop_rules(),
    **_skip_rules(),
    **_sync_rules(),
    **_delete_rules(),
    **_notice_rules(),
    **_log_rules(),
}

_OTHER_ACTIVE: Final = "another task is active on this server"
_NOT_HERE: Final = "that task does not run on this server"


def _other_task_rules() -> dict[tuple[State, CommandName], Decision]:
    rules: dict[tuple[State, CommandName], Decision] = {}
    for state in State:
        if is_active(state):
            busy = _fail(state, ERROR_OTHER_TASK_ACTIVE, _OTHER_ACTIVE)
            rules[(state, CommandName.START)] = rules[(state, CommandName.PREMIGRATE)] = busy
        else:
            rules[(state, CommandName.START)] = _go(State.prechecking, Action.start_task)
            rules[(state, CommandName.PREMIGRATE)] = _go(State.prechecking, Action.run_premigrate)
        for command in (CommandName.STOP, CommandName.SKIP, CommandName.DELETE):
            rules[(state, command)] = _ok(state, _NOT_HERE)
        rules[(state, CommandName.SYNC)] = _fail(state, ERROR_UNKNOWN_TASK, _NOT_HERE)
        for command in (
            CommandName.TASK_NOT_STARTED,
            CommandName.TASK_HAS_STOPPED,
            CommandName.TASK_HAS_FINISHED,
        ):
            rules[(state, command)] = _go(state)
        for command in (CommandName.UPLOAD_LOG, CommandName.RSET_LOG_ACL):
            rules[(state, command)] = _go(state, Action.upload_log)
    return rules


OTHER_TASK_RULES: Final[Mapping[tuple[State, CommandName], Decision]] = _other_task_rules()


def decide(state: State, command: Command, *, same_task: bool = True) -> Decision:
    """The decision for `command` arriving while the local task is in `state`.

    Args:
        state: the persisted state of the current task (`idle` when there is none).
        command: the parsed command.
        same_task: False when the command names a task other than the current one; a command
            naming no task, or arriving when there is no current task, is for the same task.
    """
    if isinstance(command, UnknownCommand):
        return Decision(state)
    table = RULES if same_task else OTHER_TASK_RULES
    return table[(state, command)]


_STOPPING_SETTLES: Final[Mapping[Optional[CommandName], Decision]] = {
    CommandName.STOP: _ok(State.stopped, "the task was stopped"),
    CommandName.TASK_HAS_STOPPED: _go(State.stopped),
    CommandName.TASK_NOT_STARTED: _go(State.stopped),
    CommandName.TASK_HAS_FINISHED: _go(State.finished),
    CommandName.DELETE: _go(State.idle, Action.forget_task),
}


def recover(state: State, command: Optional[CommandName]) -> Decision:
    """What to do at startup with a task persisted in `state` while handling `command`.

    Work that a restart interrupted resumes; a stop that was under way settles.
    """
    if state is State.stopping:
        return _STOPPING_SETTLES.get(command, _go(State.stopped))
    if state is State.prechecking and command is CommandName.PREMIGRATE:
        return _go(State.prechecking, Action.run_premigrate)
    if state in (State.prechecking, State.running):
        return _go(state, Action.resume_task)
    return _go(state)


class UnknownNames:
    """Remembers unknown command names so that each is logged once, not on every poll."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def first_sight(self, command: UnknownCommand) -> bool:
        """True the first time a name is seen."""
        if command.name in self._seen:
            return False
        self._seen.add(command.name)
        return True
