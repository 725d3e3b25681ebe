"""The outbox: results persist before sending, leave after a 2xx, once, in order, backed off."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from smsagent.agent.machine import State
from smsagent.agent.outbox import (
    DELIVERED_FILE,
    RESULT_KEY_FIELD,
    Outbox,
    ResultKey,
    result_body,
)
from smsagent.agent.store import Store
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.errors import ClientError, ServerError
from smsagent.api.models import CommandBody


class FakeTime:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """The far side of `send`: accepts, or fails the next `failures` calls with `error`."""

    def __init__(self) -> None:
        self.received: list[CommandBody] = []
        self.calls = 0
        self.failures = 0
        self.error: Exception = ServerError(method="POST", path="/r", status=503)

    async def send(self, body: CommandBody) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise self.error
        self.received.append(body)

    def keys(self) -> list[str]:
        return [str(body.result_detail[RESULT_KEY_FIELD]) for body in self.received]


def _outbox(state_dir: Path, clock: FakeTime, cap_s: float = 300.0) -> Outbox:
    store = Store(state_dir)
    store.open()
    outbox = Outbox(store, backoff_cap_s=cap_s, rng=random.Random(1), clock=clock)
    outbox.open()
    return outbox


def _body(command: CommandName = CommandName.START, message: str = "") -> CommandBody:
    return result_body(
        command, CommandResult.success, task_id="t1", state=State.finished, message=message
    )


def _key(sequence: int, command: CommandName = CommandName.START) -> ResultKey:
    return ResultKey("t1", command, sequence)


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


class TestQueue:
    async def test_result_is_on_disk_before_it_is_sent(
        self, tmp_path: Path, clock: FakeTime
    ) -> None:
        """An enqueued result survives a restart that happens before any send."""
        await _outbox(tmp_path, clock).enqueue(_key(1), _body())
        restarted = _outbox(tmp_path, clock)
        [entry] = restarted.pending()
        assert entry.key == "t1/START/1"
        assert entry.body().result_detail["state"] == "finished"
        files = [p for p in (tmp_path / "outbox").iterdir() if p.is_file()]
        assert [oct(p.stat().st_mode & 0o777) for p in files] == ["0o600"]

    async def test_same_key_is_kept_once(self, tmp_path: Path, clock: FakeTime) -> None:
        """Enqueueing a key that waits already keeps the first entry only."""
        outbox = _outbox(tmp_path, clock)
        assert await outbox.enqueue(_key(1), _body(message="first"))
        assert not await outbox.enqueue(_key(1), _body(message="second"))
        assert [e.result_detail["message"] for e in outbox.pending()] == ["first"]

    def test_detail_carries_the_standard_fields(self) -> None:
        """The result detail holds task, state, stage, error code and message, no empty ones."""
        body = result_body(
            CommandName.STOP,
            CommandResult.fail,
            task_id="t9",
            state=State.stopping,
            stage="MIGRATE_LINUX_FILE",
            error_code="SMSAGENT.X",
            message="why",
        )
        assert body.result_detail == {
            "task_id": "t9",
            "state": "stopping",
            "stage": "MIGRATE_LINUX_FILE",
            "error_code": "SMSAGENT.X",
            "message": "why",
        }
        assert "stage" not in _body().result_detail


class TestDelivery:
    async def test_delivers_in_order_and_empties(self, tmp_path: Path, clock: FakeTime) -> None:
        """Results go out oldest first and leave the outbox once accepted."""
        outbox, server = _outbox(tmp_path, clock), Server()
        for sequence in (1, 2, 3):
            await outbox.enqueue(_key(sequence), _body())
        report = await outbox.deliver(server.send)
        assert server.keys() == ["t1/START/1", "t1/START/2", "t1/START/3"]
        assert (report.sent, report.pending, report.retry_in_s) == (3, 0, None)
        assert outbox.pending() == []
        assert sorted(p.name for p in (tmp_path / "outbox").glob("*.json")) == [DELIVERED_FILE]

    async def test_delivered_key_is_not_sent_again(self, tmp_path: Path, clock: FakeTime) -> None:
        """A repeated command's result is recognised as delivered, also after a restart."""
        outbox, server = _outbox(tmp_path, clock), Server()
        await outbox.enqueue(_key(1), _body())
        await outbox.deliver(server.send)
        assert outbox.knows(_key(1))
        assert not await outbox.enqueue(_key(1), _body())
        restarted = _outbox(tmp_path, clock)
        assert not await restarted.enqueue(_key(1), _body())
        await restarted.deliver(server.send)
        assert server.keys() == ["t1/START/1"]

    async def test_failure_keeps_the_entry_and_waits(self, tmp_path: Path, clock: FakeTime) -> None:
        """A failed send keeps the result, blocks those behind it, and is not retried early."""
        outbox, server = _outbox(tmp_path, clock), Server()
        await outbox.enqueue(_key(1), _body())
        await outbox.enqueue(_key(2), _body())
        server.failures = 1
        report = await outbox.deliver(server.send)
        assert (report.sent, report.pending) == (0, 2)
        assert report.retry_in_s is not None and 1.0 <= report.retry_in_s <= 2.0
        assert outbox.pending()[0].attempts == 1
        assert "503" in str(outbox.pending()[0].last_error)
        early = await outbox.deliver(server.send)
        assert server.calls == 1 and early.retry_in_s is not None
        clock.now += report.retry_in_s
        await outbox.deliver(server.send)
        assert server.keys() == ["t1/START/1", "t1/START/2"]

    async def test_backoff_survives_a_restart(self, tmp_path: Path, clock: FakeTime) -> None:
        """After a restart a failing entry waits its last delay again before the next try, and
        its attempts keep growing."""
        outbox, server = _outbox(tmp_path, clock), Server()
        await outbox.enqueue(_key(1), _body())
        server.failures = 100
        waits = []
        for attempt in range(1, 9):
            outbox = _outbox(tmp_path, clock)
            report = await outbox.deliver(server.send)
            if attempt > 1:
                assert server.calls == attempt - 1
                assert report.retry_in_s == pytest.approx(waits[-1])
                clock.now += report.retry_in_s
                report = await outbox.deliver(server.send)
            assert server.calls == attempt and report.retry_in_s is not None
            waits.append(report.retry_in_s)
        assert outbox.pending()[0].attempts == 8
        assert max(waits) > 8.0

    async def test_retry_after_is_honoured(self, tmp_path: Path, clock: FakeTime) -> None:
        """A 429/503 with Retry-After waits at least that long."""
        outbox, server = _outbox(tmp_path, clock), Server()
        await outbox.enqueue(_key(1), _body())
        server.failures = 1
        server.error = ServerError(method="POST", path="/r", status=429, retry_after_s=90.0)
        report = await outbox.deliver(server.send)
        assert report.retry_in_s == 90.0

    async def test_permanent_refusal_is_dropped_and_kept_for_inspection(
        self, tmp_path: Path, clock: FakeTime
    ) -> None:
        """A result the server refuses for good moves to rejected/ and unblocks the queue."""
        outbox, server = _outbox(tmp_path, clock), Server()
        await outbox.enqueue(_key(1), _body())
        await outbox.enqueue(_key(2), _body())
        server.failures = 1
        server.error = ClientError(method="POST", path="/r", status=400, error_code="SMS.2009")
        report = await outbox.deliver(
            server.send, is_permanent=lambda exc: isinstance(exc, ClientError)
        )
        assert (report.sent, report.dropped, report.pending) == (1, 1, 0)
        assert server.keys() == ["t1/START/2"]
        [rejected] = (tmp_path / "outbox" / "rejected").iterdir()
        assert json.loads(rejected.read_text())["key"] == "t1/START/1"

    async def test_old_entries_are_dropped_only_after_many_attempts(
        self, tmp_path: Path, clock: FakeTime
    ) -> None:
        """An entry owed longer than the maximum age is given up, once tried often enough."""
        outbox, server = _outbox(tmp_path, clock), Server()
        await outbox.enqueue(_key(1), _body())
        server.failures = 1000
        clock.now += 3 * 86400
        dropped = 0
        while not dropped:
            report = await outbox.deliver(server.send)
            dropped = report.dropped
            clock.now += report.retry_in_s or 0.0
        assert server.calls == 20
        assert [p.name for p in (tmp_path / "outbox" / "rejected").iterdir()]

    async def test_a_wall_clock_step_ages_nothing(self, tmp_path: Path, clock: FakeTime) -> None:
        """An entry written days ago by the wall clock (a clock step, a long power-off) is
        still sent: only time an agent spent trying counts."""
        outbox = _outbox(tmp_path, clock)
        await outbox.enqueue(_key(1), _body())
        [path] = (tmp_path / "outbox").glob("0*.json")
        stored = json.loads(path.read_text())
        path.write_text(json.dumps({**stored, "created_at": stored["created_at"] - 30 * 86400}))
        server = Server()
        report = await _outbox(tmp_path, clock).deliver(server.send)
        assert (report.sent, report.dropped) == (1, 0)
        assert server.keys() == ["t1/START/1"]

    async def test_crash_after_delivery_before_removal(
        self, tmp_path: Path, clock: FakeTime
    ) -> None:
        """An entry whose key was recorded delivered is removed without a second send."""
        outbox = _outbox(tmp_path, clock)
        await outbox.enqueue(_key(1), _body())
        (tmp_path / "outbox" / DELIVERED_FILE).write_text(
            json.dumps({"schema_version": 1, "keys": ["t1/START/1"]})
        )
        server = Server()
        restarted = _outbox(tmp_path, clock)
        await restarted.deliver(server.send)
        assert server.calls == 0 and restarted.pending() == []

    async def test_unreadable_entry_is_quarantined(self, tmp_path: Path, clock: FakeTime) -> None:
        """A broken entry file is moved to corrupt/ at open; the others still go out."""
        outbox = _outbox(tmp_path, clock)
        await outbox.enqueue(_key(1), _body())
        (tmp_path / "outbox" / "000000000099.json").write_text("{broken")
        restarted = Outbox(Store(tmp_path), clock=clock)
        quarantined = restarted.open()
        assert [p.parent.name for p in quarantined] == ["corrupt"]
        server = Server()
        await restarted.deliver(server.send)
        assert server.keys() == ["t1/START/1"]

    async def test_new_entries_after_a_restart_queue_behind_old_ones(
        self, tmp_path: Path, clock: FakeTime
    ) -> None:
        """Positions continue after a restart, so order holds across restarts."""
        await _outbox(tmp_path, clock).enqueue(_key(1), _body())
        restarted = _outbox(tmp_path, clock)
        await restarted.enqueue(_key(1, CommandName.STOP), _body(CommandName.STOP))
        server = Server()
        await restarted.deliver(server.send)
        assert server.keys() == ["t1/START/1", "t1/STOP/1"]
