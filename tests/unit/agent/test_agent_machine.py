"""The state machine: every state x command against the specification, and its invariants."""

from __future__ import annotations

from typing import Optional

import pytest

from smsagent.agent.machine import (
    ACTIVE_STATES,
    OTHER_TASK_RULES,
    RULES,
    WORK_ACTIONS,
    Action,
    Decision,
    State,
    UnknownCommand,
    UnknownNames,
    decide,
    parse_command,
    recover,
)
from smsagent.api.enums import CommandName, CommandResult

# The specification, written independently of the code's table: for each command, the cell
# of each state as "next-state action result", where "=" keeps the state, "-" is no action or
# no result now, "ok" is success. Columns: idle prechecking running stopping stopped
# replicated failed finished.
STATES = list(State)
SPEC: dict[CommandName, list[str]] = {
    CommandName.START: [
        "prechecking start_task -",
        "= - -",
        "= - -",
        "= - fail",
        "prechecking resume_task -",
        "running sync_task -",
        "prechecking resume_task -",
        "= - ok",
    ],
    CommandName.PREMIGRATE: [
        "prechecking run_premigrate -",
        "= - -",
        "= - fail",
        "= - fail",
        "= - fail",
        "= - fail",
        "= - fail",
        "= - fail",
    ],
    CommandName.STOP: [
        "= - ok",
        "stopping cancel_task -",
        "stopping cancel_task -",
        "= - -",
        "= - ok",
        "stopped - ok",
        "= - ok",
        "= - ok",
    ],
    CommandName.SKIP: [
        "= - ok",
        "= - ok",
        "= skip_stage -",
        "= - ok",
        "= - ok",
        "= - ok",
        "= - ok",
        "= - ok",
    ],
    CommandName.SYNC: [
        "= - fail",
        "= - -",
        "= - -",
        "= - fail",
        "= - fail",
        "running sync_task -",
        "= - fail",
        "= - fail",
    ],
    CommandName.DELETE: [
        "idle forget_task -",
        "stopping forget_task -",
        "stopping forget_task -",
        "stopping forget_task -",
        "idle forget_task -",
        "idle forget_task -",
        "idle forget_task -",
        "idle forget_task -",
    ],
    CommandName.TASK_NOT_STARTED: [
        "= - -",
        "= - -",
        "= - -",
        "= - -",
        "idle reset_task -",
        "idle reset_task -",
        "idle reset_task -",
        "idle reset_task -",
    ],
    CommandName.TASK_HAS_STOPPED: [
        "= - -",
        "stopping cancel_task -",
        "stopping cancel_task -",
        "= - -",
        "= - -",
        "stopped - -",
        "= - -",
        "= - -",
    ],
    CommandName.TASK_HAS_FINISHED: [
        "finished - -",
        "stopping finish_task -",
        "stopping finish_task -",
        "stopping finish_task -",
        "finished - -",
        "finished - -",
        "finished - -",
        "= - -",
    ],
    CommandName.UPLOAD_LOG: ["= upload_log -"] * 8,
    CommandName.RSET_LOG_ACL: ["= upload_log -"] * 8,
}
_RESULTS = {"-": None, "ok": CommandResult.success, "fail": CommandResult.fail}


def _expected(state: State, cell: str) -> tuple[State, Action, Optional[CommandResult]]:
    next_state, action, result = cell.split()
    return (
        state if next_state == "=" else State(next_state),
        Action.none if action == "-" else Action(action),
        _RESULTS[result],
    )


CELLS = [
    (state, command, SPEC[command][index])
    for command in CommandName
    for index, state in enumerate(STATES)
]


class TestTable:
    def test_spec_covers_every_command(self) -> None:
        """The specification has a row for every wire command and a cell for every state."""
        assert set(SPEC) == set(CommandName)
        assert all(len(cells) == len(STATES) for cells in SPEC.values())

    def test_table_has_exactly_every_pair(self) -> None:
        """Both tables hold one rule per (state, command) and nothing else."""
        pairs = {(state, command) for state in State for command in CommandName}
        assert set(RULES) == pairs
        assert set(OTHER_TASK_RULES) == pairs

    @pytest.mark.parametrize(("state", "command", "cell"), CELLS)
    def test_cell(self, state: State, command: CommandName, cell: str) -> None:
        """Each cell of the table decides what the specification says."""
        decision = decide(state, command)
        assert (decision.next_state, decision.action, decision.result) == _expected(state, cell)

    @pytest.mark.parametrize("state", STATES)
    def test_unknown_command_changes_nothing(self, state: State) -> None:
        """An unknown command keeps the state, runs nothing and answers nothing."""
        assert decide(state, UnknownCommand("REBOOT_EVERYTHING")) == Decision(state)


class TestPrinciples:
    @pytest.mark.parametrize(("state", "command", "cell"), CELLS)
    def test_failures_explain_themselves(
        self, state: State, command: CommandName, cell: str
    ) -> None:
        """Every fail answer carries an error code and a message; no other answer has a code."""
        decision = decide(state, command)
        if decision.result is CommandResult.fail:
            assert decision.error_code and decision.message
        else:
            assert decision.error_code is None

    @pytest.mark.parametrize("state", STATES)
    def test_stop_never_fails(self, state: State) -> None:
        """STOP is desired state: it never fails, whatever runs and whichever task it names."""
        for same_task in (True, False):
            assert (
                decide(state, CommandName.STOP, same_task=same_task).result
                is not CommandResult.fail
            )

    def test_work_never_starts_while_work_is_active(self) -> None:
        """No decision starts work in a state where work may still run."""
        for table in (RULES, OTHER_TASK_RULES):
            for (state, _), decision in table.items():
                if decision.action in WORK_ACTIONS:
                    assert state not in ACTIVE_STATES

    def test_repeated_command_is_a_no_op_once_satisfied(self) -> None:
        """Applying any command twice in a row never starts or cancels work the second time,
        except a pass of sync that finished in between (not modelled here)."""
        for (state, command), first in RULES.items():
            second = decide(first.next_state, command)
            assert second.action not in (WORK_ACTIONS | {Action.cancel_task, Action.reset_task}), (
                state,
                command,
            )

    def test_changes_state_marks_transitions(self) -> None:
        """A decision is a transition exactly when it leaves the state it was taken in."""
        assert decide(State.idle, CommandName.START).changes_state(State.idle)
        assert not decide(State.running, CommandName.START).changes_state(State.running)


class TestOtherTask:
    @pytest.mark.parametrize("state", [s for s in State if s not in ACTIVE_STATES])
    def test_start_for_a_new_task_takes_it_when_inactive(self, state: State) -> None:
        """START for another task while nothing runs starts that task."""
        decision = decide(state, CommandName.START, same_task=False)
        assert (decision.next_state, decision.action) == (State.prechecking, Action.start_task)
        drill = decide(state, CommandName.PREMIGRATE, same_task=False)
        assert (drill.next_state, drill.action) == (State.prechecking, Action.run_premigrate)

    @pytest.mark.parametrize("state", sorted(ACTIVE_STATES))
    def test_start_for_a_new_task_fails_while_busy(self, state: State) -> None:
        """START for another task while one is active fails clearly and leaves the work alone."""
        decision = decide(state, CommandName.START, same_task=False)
        assert decision.next_state is state and decision.action is Action.none
        assert decision.result is CommandResult.fail
        assert "another task" in decision.message

    @pytest.mark.parametrize("state", STATES)
    @pytest.mark.parametrize(
        "command",
        [
            CommandName.STOP,
            CommandName.SKIP,
            CommandName.DELETE,
            CommandName.SYNC,
            CommandName.TASK_NOT_STARTED,
            CommandName.TASK_HAS_STOPPED,
            CommandName.TASK_HAS_FINISHED,
        ],
    )
    def test_commands_for_another_task_do_not_touch_ours(
        self, state: State, command: CommandName
    ) -> None:
        """Stop, skip, delete, sync and notices for another task neither change nor stop ours."""
        decision = decide(state, command, same_task=False)
        assert decision.next_state is state and decision.action is Action.none

    @pytest.mark.parametrize("state", STATES)
    def test_log_upload_does_not_depend_on_the_task(self, state: State) -> None:
        """UPLOAD_LOG runs its handler whichever task it names."""
        assert decide(state, CommandName.UPLOAD_LOG, same_task=False).action is Action.upload_log


class TestRecover:
    @pytest.mark.parametrize(
        ("state", "command", "expected"),
        [
            (State.prechecking, CommandName.START, (State.prechecking, Action.resume_task, None)),
            (
                State.prechecking,
                CommandName.PREMIGRATE,
                (State.prechecking, Action.run_premigrate, None),
            ),
            (State.running, CommandName.START, (State.running, Action.resume_task, None)),
            (State.running, CommandName.SYNC, (State.running, Action.resume_task, None)),
            (State.stopping, CommandName.STOP, (State.stopped, Action.none, CommandResult.success)),
            (State.stopping, CommandName.TASK_HAS_STOPPED, (State.stopped, Action.none, None)),
            (State.stopping, CommandName.TASK_HAS_FINISHED, (State.finished, Action.none, None)),
            (State.stopping, CommandName.DELETE, (State.idle, Action.forget_task, None)),
            (State.stopping, None, (State.stopped, Action.none, None)),
            (State.idle, None, (State.idle, Action.none, None)),
            (State.stopped, CommandName.STOP, (State.stopped, Action.none, None)),
            (State.replicated, CommandName.START, (State.replicated, Action.none, None)),
            (State.failed, CommandName.START, (State.failed, Action.none, None)),
            (State.finished, CommandName.START, (State.finished, Action.none, None)),
        ],
    )
    def test_recover(
        self,
        state: State,
        command: Optional[CommandName],
        expected: tuple[State, Action, Optional[CommandResult]],
    ) -> None:
        """After a restart interrupted work resumes and an interrupted stop settles."""
        decision = recover(state, command)
        assert (decision.next_state, decision.action, decision.result) == expected


class TestTakesOver:
    @pytest.mark.parametrize(
        ("state", "command", "takes_over"),
        [
            (State.stopping, CommandName.START, False),  # answered fail; the STOP stays owed
            (State.running, CommandName.PREMIGRATE, False),  # refused; the START keeps running
            (State.running, CommandName.SKIP, False),  # a signal to the running work
            (State.running, CommandName.UPLOAD_LOG, False),
            (State.finished, CommandName.START, False),  # answered success, nothing to do
            (State.running, CommandName.STOP, True),
            (State.stopping, CommandName.TASK_HAS_FINISHED, True),  # finish_task, state stays
            (State.stopping, CommandName.DELETE, True),
            (State.idle, CommandName.START, True),
        ],
    )
    def test_side_answers_keep_the_command_under_way(
        self, state: State, command: CommandName, takes_over: bool
    ) -> None:
        """Only a transition or a task action replaces the command a restart looks at."""
        assert decide(state, command).takes_over(state) is takes_over


class TestParse:
    def test_known_names(self) -> None:
        """Wire names parse to commands; surrounding blanks are tolerated."""
        assert parse_command("START") is CommandName.START
        assert parse_command(" STOP ") is CommandName.STOP

    def test_nothing_pending(self) -> None:
        """An absent or empty name means no command."""
        assert parse_command(None) is None
        assert parse_command("  ") is None

    def test_unknown_name(self) -> None:
        """An unknown name is kept as such, never mistaken for a known command."""
        assert parse_command("start") == UnknownCommand("start")

    def test_unknown_names_are_reported_once(self) -> None:
        """Each unknown name is reported the first time only."""
        names = UnknownNames()
        assert names.first_sight(UnknownCommand("X"))
        assert not names.first_sight(UnknownCommand("X"))
        assert names.first_sight(UnknownCommand("Y"))
