"""The ledger, the one writer of task state: what it persists, owes and runs for each command,
how it recognises an unchanged repeat, recovers after a crash, and waits out a full disk."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from smsagent.agent.handler_api import CommandEnvelope, HandlerOutcome
from smsagent.agent.health import HealthFile, read_health
from smsagent.agent.ledger import ERROR_BAD_TASK_ID, Ledger, Received, RepeatGuard
from smsagent.agent.machine import Action, State
from smsagent.agent.outbox import Outbox
from smsagent.agent.store import TASK, Store, TaskRecord
from smsagent.api.enums import CommandName, CommandResult
from tests.support.mounts import tmpfs


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


async def _ledger(state_dir: Path, monotonic: FakeMonotonic) -> Ledger:
    store = Store(state_dir)
    store.open()
    outbox = Outbox(store)
    outbox.open()
    ledger = Ledger(store, outbox, RepeatGuard(10.0, 40.0, monotonic))
    await ledger.open()
    return ledger


def _on_disk(state_dir: Path) -> TaskRecord | None:
    return Store(state_dir).load(TASK).value


def _owed(ledger: Ledger) -> list[tuple[str, str]]:
    outbox = ledger._outbox
    return [(entry.command_name.value, entry.result.value) for entry in outbox.pending()]


async def _accepted_by_server(_: object) -> None:
    """The server's side of a delivery: every result is taken."""


async def _settled_and_delivered(
    ledger: Ledger, envelope: CommandEnvelope, outcome: HandlerOutcome
) -> None:
    await ledger.settle(envelope, outcome)
    await ledger.deliver(_accepted_by_server)


START_T1 = Received(CommandName.START, task_id="t1")
STOP = Received(CommandName.STOP)
DELETE_T9 = Received(CommandName.DELETE, task_id="t9")


class TestAccept:
    async def test_the_decision_is_on_disk_before_it_is_run(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        envelope = await ledger.accept(START_T1)
        assert envelope is not None and envelope.action is Action.start_task
        on_disk = _on_disk(tmp_path)
        assert on_disk is not None and on_disk.state is State.prechecking
        assert on_disk == ledger.record

    async def test_an_answer_the_machine_gives_is_owed_at_once(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        assert await ledger.accept(STOP) is None
        assert _owed(ledger) == [("STOP", "success")]
        reopened = await _ledger(tmp_path, monotonic)
        assert _owed(reopened) == [("STOP", "success")]

    async def test_a_task_id_that_is_no_sms_id_is_refused(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        huge = "x" * 10_000
        assert await ledger.accept(Received(CommandName.START, task_id=huge)) is None
        assert ledger.record is None and _on_disk(tmp_path) is None
        [entry] = ledger._outbox.pending()
        assert entry.result is CommandResult.fail
        assert entry.result_detail["error_code"] == ERROR_BAD_TASK_ID
        assert huge not in json.dumps(entry.result_detail)
        assert "10000 characters" in str(entry.result_detail["message"])


class TestRepeats:
    async def test_an_unchanged_repeat_is_held_back_then_answered_with_backoff(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        """DELETE of an unknown task, offered on every poll: acted on once, then again only
        after the hold (the poll interval), which doubles up to the cap."""
        ledger = await _ledger(tmp_path, monotonic)
        acted_at = []
        for _ in range(200):
            envelope = await ledger.accept(DELETE_T9)
            if envelope is not None:
                acted_at.append(monotonic.now)
                done = HandlerOutcome.success("not known here")
                await _settled_and_delivered(ledger, envelope, done)
            monotonic.now += 1.0
        gaps = [later - earlier for earlier, later in zip(acted_at, acted_at[1:])]
        assert acted_at[0] == 100.0
        assert gaps[:3] == [10.0, 20.0, 40.0]
        assert set(gaps[3:]) == {40.0}

    async def test_a_repeat_while_its_handler_runs_is_held_back(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        assert await ledger.accept(DELETE_T9) is not None
        monotonic.now += 100.0
        assert await ledger.accept(DELETE_T9) is None

    async def test_another_offer_in_between_makes_the_next_one_new(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        envelope = await ledger.accept(DELETE_T9)
        assert envelope is not None
        await _settled_and_delivered(ledger, envelope, HandlerOutcome.success())
        ledger.passed_over()
        assert await ledger.accept(DELETE_T9) is not None

    async def test_a_repeat_after_the_task_changed_is_acted_on(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        """START for a task that failed: held back while nothing changed; once the task moved
        on (here: reset by the server), the same START starts it again."""
        ledger = await _ledger(tmp_path, monotonic)
        envelope = await ledger.accept(START_T1)
        assert envelope is not None
        failed = HandlerOutcome.failure("SMS.7703", "no such task", next_state=State.failed)
        await _settled_and_delivered(ledger, envelope, failed)
        assert await ledger.accept(START_T1) is None
        await ledger.update("t1", lambda record: record.reset(1.0))
        again = await ledger.accept(START_T1)
        assert again is not None and again.action is Action.start_task


class TestSettle:
    async def test_the_result_is_owed_and_the_state_saved(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        envelope = await ledger.accept(START_T1)
        assert envelope is not None
        done = HandlerOutcome.success("copied", next_state=State.replicated)
        await ledger.settle(envelope, done)
        assert _owed(ledger) == [("START", "success")]
        on_disk = _on_disk(tmp_path)
        assert on_disk is not None and on_disk.state is State.replicated

    async def test_another_tasks_outcome_changes_no_record(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        assert await ledger.accept(START_T1) is not None
        other = CommandEnvelope(CommandName.STOP, Action.cancel_task, 1, "t2")
        await ledger.settle(other, HandlerOutcome.settled(State.stopped))
        assert ledger.record is not None and ledger.record.state is State.prechecking

    async def test_a_forgotten_task_is_not_recreated(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        envelope = await ledger.accept(START_T1)
        assert envelope is not None
        assert await ledger.forget("t1")
        await ledger.settle(envelope, HandlerOutcome.settled(State.stopped))
        assert ledger.record is None and _on_disk(tmp_path) is None


class TestRecover:
    async def test_running_work_resumes(self, tmp_path: Path, monotonic: FakeMonotonic) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        assert await ledger.accept(START_T1) is not None
        resumed = await (await _ledger(tmp_path, monotonic)).recover()
        assert resumed is not None and resumed.action is Action.resume_task

    async def test_a_stop_under_way_settles_and_owes_its_success(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        ledger = await _ledger(tmp_path, monotonic)
        assert await ledger.accept(START_T1) is not None
        assert await ledger.accept(Received(CommandName.STOP, task_id="t1")) is not None
        restarted = await _ledger(tmp_path, monotonic)
        assert await restarted.recover() is None
        assert restarted.record is not None and restarted.record.state is State.stopped
        assert _owed(restarted) == [("STOP", "success")]

    async def test_a_settle_cut_short_is_finished_not_resumed(
        self, tmp_path: Path, monotonic: FakeMonotonic
    ) -> None:
        """The result was queued, the crash came before the state was saved: the restart
        saves the state the result names instead of copying again."""
        ledger = await _ledger(tmp_path, monotonic)
        envelope = await ledger.accept(START_T1)
        assert envelope is not None
        done = HandlerOutcome.success("copied", next_state=State.replicated)
        record = ledger.record
        await ledger.settle(envelope, done)
        assert record is not None
        Store(tmp_path).save(TASK, record)  # as if the crash came between the two writes
        restarted = await _ledger(tmp_path, monotonic)
        assert await restarted.recover() is None
        assert restarted.record is not None and restarted.record.state is State.replicated


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of the test's own (root only)."""
    with tmpfs(tmp_path / "small", "size=1m,mode=0700") as mounted:
        yield mounted


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


@pytest.fixture
async def on_small_disk(small_tmpfs: Path, monotonic: FakeMonotonic) -> AsyncIterator[Ledger]:
    store = Store(small_tmpfs / "state")
    store.open()
    outbox = Outbox(store)
    outbox.open()
    health = HealthFile(store.state_dir)
    health.open()
    ledger = Ledger(store, outbox, RepeatGuard(10.0, 40.0, monotonic), health)
    await ledger.open()
    yield ledger
    health.close()


@pytest.mark.root
@pytest.mark.timeout(60)
async def test_a_full_disk_delays_the_settle_until_there_is_room(
    small_tmpfs: Path, on_small_disk: Ledger
) -> None:
    """The STOP's result cannot be written: the settle waits, the fault is shown, new commands
    are not acted on; once there is room the result is owed and the fault cleared."""
    ledger = on_small_disk
    state_dir = small_tmpfs / "state"
    assert await ledger.accept(START_T1) is not None
    stop = await ledger.accept(Received(CommandName.STOP, task_id="t1"))
    assert stop is not None
    filler = _fill(small_tmpfs)
    settling = asyncio.ensure_future(
        ledger.settle(stop, HandlerOutcome.success("stopped", next_state=State.stopped))
    )
    for _ in range(200):
        if ledger.fault is not None:
            break
        await asyncio.sleep(0.02)
    assert ledger.fault is not None and "No space" in ledger.fault
    health = read_health(state_dir)
    assert health is not None and health["fault"] == ledger.fault
    assert await ledger.accept(Received(CommandName.SKIP, task_id="t1")) is None
    assert not settling.done()
    filler.unlink()
    await asyncio.wait_for(settling, 30)
    assert ledger.fault is None
    assert _owed(ledger) == [("STOP", "success")]
    assert ledger.record is not None and ledger.record.state is State.stopped
    health = read_health(state_dir)
    assert health is not None and health["fault"] is None
