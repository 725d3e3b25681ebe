"""The built-in command handlers, loaded through their entry points, against running work."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import pytest

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome
from smsagent.agent.machine import Action, State
from smsagent.agent.store import TASK, TaskRecord
from smsagent.agent.work import CancelReason
from smsagent.api.enums import CommandName, CommandResult
from smsagent.target.session import store_private_key
from smsagent.taskfiles import block_dir
from tests.support.agentcore import Runner, envelope


class Waiting:
    """Work that runs until it is told to stop, and records how it was told."""

    commands: ClassVar[frozenset[CommandName]] = frozenset()
    task_types: ClassVar[frozenset[str]] = frozenset({"WAIT"})

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped_by: list[CancelReason] = []

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        self.started.set()
        reason = await ctx.cancel.wait()
        self.stopped_by.append(reason)
        ctx.cancel.raise_if_cancelled()
        return HandlerOutcome.success()


def _record(state: State, task_id: str = "t1") -> TaskRecord:
    record = TaskRecord.new(task_id, "WAIT", time.time())
    record = record.record_progress("MIGRATE_LINUX_FILE", 10, 100, time.time(), {"cursor": "a"})
    return record.model_copy(update={"state": state})


async def _running(
    runner: Runner, task_id: str = "t1"
) -> tuple[Waiting, asyncio.Task[HandlerOutcome]]:
    runner.remember(_record(State.running, task_id))
    work = Waiting()
    task = runner.start_work(envelope(CommandName.START, Action.start_task, task_id), work)
    await work.started.wait()
    return work, task


class TestStop:
    async def test_stops_the_running_work(self, runner: Runner) -> None:
        """STOP asks the work to stop as a command, waits for it, and answers success."""
        work, task = await _running(runner)
        outcome = await runner.command(envelope(CommandName.STOP, Action.cancel_task))
        assert outcome == HandlerOutcome.success("the task was stopped", next_state=State.stopped)
        assert work.stopped_by == [CancelReason.command]
        assert (await task).next_state is State.stopped

    async def test_nothing_running(self, runner: Runner) -> None:
        """STOP with no work running is a success."""
        outcome = await runner.command(envelope(CommandName.STOP, Action.cancel_task))
        assert outcome.result is CommandResult.success
        assert outcome.message == "nothing was running"

    async def test_leaves_another_tasks_work_alone(self, runner: Runner) -> None:
        """STOP for one task does not stop the work of another."""
        work, task = await _running(runner, "other")
        outcome = await runner.command(envelope(CommandName.STOP, Action.cancel_task, "t1"))
        assert outcome.message == "nothing was running"
        assert not task.done() and work.stopped_by == []
        await runner.slot.stop(CancelReason.shutdown, 5.0)


class TestNotices:
    async def test_task_has_stopped(self, runner: Runner) -> None:
        """TASK_HAS_STOPPED stops the work like STOP, without a result."""
        work, task = await _running(runner)
        notice = envelope(CommandName.TASK_HAS_STOPPED, Action.cancel_task)
        outcome = await runner.command(notice)
        assert (outcome.result, outcome.next_state) == (None, State.stopped)
        assert work.stopped_by == [CancelReason.command]
        await task

    async def test_task_has_finished(self, runner: Runner) -> None:
        """TASK_HAS_FINISHED stops a running pass and finishes the task, without a result."""
        work, task = await _running(runner)
        notice = envelope(CommandName.TASK_HAS_FINISHED, Action.finish_task)
        outcome = await runner.command(notice)
        assert (outcome.result, outcome.next_state) == (None, State.finished)
        assert task.done() and work.stopped_by == [CancelReason.command]

    async def test_task_not_started_resets_progress(self, runner: Runner) -> None:
        """TASK_NOT_STARTED for a stopped task drops its progress; the task id stays."""
        runner.remember(_record(State.stopped))
        notice = envelope(CommandName.TASK_NOT_STARTED, Action.reset_task)
        outcome = await runner.command(notice)
        assert (outcome.result, outcome.next_state) == (None, State.idle)
        record = runner.store.load(TASK).value
        assert record is not None and record.task_id == "t1"
        assert record.stages == {} and record.state is State.idle


class TestSkip:
    async def test_reaches_the_running_stage(self, runner: Runner) -> None:
        """SKIP passes a skip request to the running work and answers success."""
        await _running(runner)
        outcome = await runner.command(envelope(CommandName.SKIP, Action.skip_stage))
        assert outcome.result is CommandResult.success
        token = runner.slot.token
        assert token is not None and token.take_skip()
        assert not token.cancelled
        await runner.slot.stop(CancelReason.shutdown, 5.0)

    async def test_nothing_to_skip(self, runner: Runner) -> None:
        """SKIP with nothing running is a success that says so."""
        outcome = await runner.command(envelope(CommandName.SKIP, Action.skip_stage))
        assert outcome.result is CommandResult.success
        assert outcome.message == "no stage is running that could be skipped"


class TestDelete:
    async def test_stops_and_forgets(self, runner: Runner) -> None:
        """DELETE stops the work and removes the task's record."""
        work, task = await _running(runner)
        outcome = await runner.command(envelope(CommandName.DELETE, Action.forget_task))
        assert outcome == HandlerOutcome.success("the task was deleted here", next_state=State.idle)
        assert work.stopped_by == [CancelReason.command] and task.done()
        assert runner.store.load(TASK).value is None

    @pytest.mark.parametrize("stored", [None, "other"])
    async def test_unknown_task(self, runner: Runner, stored: str | None) -> None:
        """DELETE of a task not recorded here succeeds and leaves another task's record."""
        if stored:
            runner.remember(_record(State.stopped, stored))
        outcome = await runner.command(envelope(CommandName.DELETE, Action.forget_task))
        assert outcome.message == "the task is not known here"
        record = runner.store.load(TASK).value
        assert (record.task_id if record else None) == stored

    @pytest.mark.parametrize("stored", ["t1", None, "other"])
    async def test_removes_the_tasks_key_and_working_files(
        self, runner: Runner, stored: str | None
    ) -> None:
        """The deleted task's SSH key, pinned host key and block files leave the server, held
        or not; another task's stay."""
        state_dir = runner.settings.state_dir
        for task_id in ("t1", "other"):
            store_private_key(state_dir, task_id, "-----BEGIN OPENSSH PRIVATE KEY-----\n")
            (state_dir / "known_hosts" / task_id).write_text("target ssh-ed25519 AAAA\n")
            (block_dir(state_dir, task_id) / "tls").mkdir(parents=True)
            (block_dir(state_dir, task_id) / "0-dev_vdb1.digests").write_bytes(b"\0" * 64)
        if stored:
            runner.remember(_record(State.stopped, stored))

        await runner.command(envelope(CommandName.DELETE, Action.forget_task))

        left = {str(p.relative_to(state_dir)) for p in state_dir.rglob("*")}
        assert not [path for path in left if "t1" in path], sorted(left)
        assert {"keys/other.key", "known_hosts/other", "block/other/0-dev_vdb1.digests"} <= left
