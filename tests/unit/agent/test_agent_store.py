"""The state directory: atomic versioned documents, quarantine, task records, connection file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from smsagent.agent.machine import Action, State, decide
from smsagent.agent.store import (
    AGENT,
    CONNECTION,
    TASK,
    AgentRecord,
    ConnectionTracker,
    Store,
    TaskRecord,
)
from smsagent.api.enums import CommandName


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store(tmp_path / "state")
    opened.open()
    return opened


def _agent() -> AgentRecord:
    return AgentRecord(
        server_id="src-1", endpoint="https://sms.example.com", fingerprint="f", registered_at=1.0
    )


class TestFiles:
    def test_construction_touches_nothing(self, tmp_path: Path) -> None:
        """A store is created without creating its directory; `open()` does that."""
        Store(tmp_path / "state")
        assert not (tmp_path / "state").exists()

    def test_directory_is_private(self, tmp_path: Path) -> None:
        """The state directory is created 0700, and a laxer existing one is tightened."""
        lax = tmp_path / "lax"
        lax.mkdir(mode=0o755)
        lax.chmod(0o755)
        Store(lax).open()
        Store(tmp_path / "new" / "state").open()
        assert _mode(lax) == 0o700
        assert _mode(tmp_path / "new" / "state") == 0o700

    def test_round_trip_is_private_and_versioned(self, store: Store) -> None:
        """A saved document reads back equal, is 0600 and carries its schema version."""
        store.save(AGENT, _agent())
        assert store.load(AGENT).value == _agent()
        path = store.path(AGENT)
        assert _mode(path) == 0o600
        assert json.loads(path.read_text())["schema_version"] == 1
        assert [p.name for p in path.parent.iterdir()] == ["agent.json"]

    def test_missing_document(self, store: Store) -> None:
        """A document never written loads as None without quarantine."""
        loaded = store.load(TASK)
        assert loaded.value is None and loaded.quarantined_to is None

    def test_delete(self, store: Store) -> None:
        """Deleting removes the document and says whether there was one."""
        store.save(AGENT, _agent())
        assert store.delete(AGENT)
        assert not store.delete(AGENT)
        assert store.load(AGENT).value is None

    def test_open_removes_temporary_leftovers(self, store: Store) -> None:
        """Temporary files a crash left behind are removed at open; documents stay."""
        store.save(AGENT, _agent())
        leftover = store.state_dir / ".task.json.abc123.tmp"
        leftover.write_text("{half")
        store.open()
        assert not leftover.exists()
        assert store.load(AGENT).value == _agent()


class TestQuarantine:
    @pytest.mark.parametrize(
        "content",
        [
            b"{not json",
            b'{"schema_version": 2, "server_id": "x", "endpoint": "e", "fingerprint": "f",'
            b' "registered_at": 1}',
            b'{"schema_version": 1, "server_id": ""}',
            b"\xff\xfe",
        ],
    )
    def test_bad_document_is_moved_aside(self, store: Store, content: bytes) -> None:
        """Unparsable, newer-schema or invalid documents move to corrupt/ with a log line."""
        store.path(AGENT).write_bytes(content)
        with capture_logs() as logs:
            loaded = store.load(AGENT)
        assert loaded.value is None
        assert loaded.quarantined_to is not None
        assert loaded.quarantined_to.parent == store.corrupt_dir
        assert loaded.quarantined_to.read_bytes() == content
        assert not store.path(AGENT).exists()
        assert [entry["event"] for entry in logs] == ["state_file_quarantined"]
        assert store.load(AGENT) == type(loaded)(None)

    def test_quarantine_names_do_not_collide(self, store: Store) -> None:
        """Two bad versions of the same document are both kept."""
        moved = []
        for _ in range(2):
            store.path(TASK).write_text("garbage")
            moved.append(store.load(TASK).quarantined_to)
        assert moved[0] != moved[1]
        assert all(path is not None and path.exists() for path in moved)

    def test_reason_names_the_field_not_its_value(self, store: Store) -> None:
        """The log line says which field is wrong without repeating what was in it."""
        store.path(AGENT).write_text(
            '{"server_id": "sekret-looking-value", "endpoint": 5, "fingerprint": "f",'
            ' "registered_at": 1}'
        )
        with capture_logs() as logs:
            store.load(AGENT)
        assert "endpoint" in logs[0]["reason"]
        assert "sekret" not in json.dumps(logs[0])


class TestCrashSafety:
    WRITER = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from smsagent.agent.store import TASK, Store, TaskRecord
        store = Store(Path(sys.argv[1]))
        store.open()
        n = 0
        while True:
            n += 1
            record = TaskRecord.new("t" * (1 + n % 3000), "MIGRATE_FILE", float(n))
            store.save(TASK, record)
            print(n, flush=True)
        """
    )

    @pytest.mark.timeout(60)
    def test_kill_during_writes_leaves_a_whole_document(self, tmp_path: Path) -> None:
        """SIGKILL at any moment of a stream of writes leaves the old or the new document."""
        state_dir = tmp_path / "state"
        for round_index in range(5):
            writer = subprocess.Popen(
                [sys.executable, "-c", self.WRITER, str(state_dir)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert writer.stdout is not None
            wanted = 20 + 37 * round_index
            last = 0
            while last < wanted:
                last = int(writer.stdout.readline())
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            store = Store(state_dir)
            store.open()
            loaded = store.load(TASK)
            assert loaded.quarantined_to is None
            assert loaded.value is not None and loaded.value.created_at >= last
            assert not list(state_dir.glob(".*.tmp"))


class TestTaskRecord:
    def test_transitions_advance_the_sequence(self) -> None:
        """Only a decision that changes the state advances the command sequence."""
        record = TaskRecord.new("t1", "MIGRATE_FILE", 1.0)
        started = record.apply(decide(State.idle, CommandName.START), CommandName.START, 2.0)
        assert (started.state, started.command_seq, started.action) == (
            State.prechecking,
            1,
            Action.start_task,
        )
        again = started.apply(decide(started.state, CommandName.START), CommandName.START, 3.0)
        assert again.command_seq == 1 and again.updated_at == 3.0

    def test_stage_bookkeeping(self) -> None:
        """A stage starts once, records progress and a resume point, and ends done."""
        record = TaskRecord.new("t1", "MIGRATE_FILE", 1.0).settle(State.idle, 1.0)
        record = record.model_copy(update={"state": State.prechecking})
        record = record.begin_stage("MIGRATE_LINUX_FILE", 5.0)
        assert record.state is State.running and record.stage == "MIGRATE_LINUX_FILE"
        record = record.record_progress("MIGRATE_LINUX_FILE", 10, 100, 6.0, {"cursor": "a/b"})
        record = record.begin_stage("MIGRATE_LINUX_FILE", 7.0)
        progress = record.progress_of("MIGRATE_LINUX_FILE")
        assert progress.started_at == 5.0
        assert (progress.bytes_done, progress.resume) == (10, {"cursor": "a/b"})
        done = record.finish_stage("MIGRATE_LINUX_FILE", 8.0).progress_of("MIGRATE_LINUX_FILE")
        assert done.done and done.bytes_done == 100 and done.finished_at == 8.0

    def test_begin_stage_does_not_undo_a_stop(self) -> None:
        """A stage beginning after a STOP was decided leaves the task `stopping`."""
        record = TaskRecord.new("t1", None, 1.0).model_copy(update={"state": State.stopping})
        assert record.begin_stage("X", 2.0).state is State.stopping

    def test_reset_drops_progress_but_keeps_the_task(self) -> None:
        """A reset task is idle with no stage progress, same id."""
        record = TaskRecord.new("t1", None, 1.0).record_progress("X", 1, 2, 2.0)
        reset = record.settle(State.failed, 3.0, error_code="E", message="m").reset(4.0)
        assert (reset.task_id, reset.state, reset.stages, reset.error_code) == (
            "t1",
            State.idle,
            {},
            None,
        )


class FakeTime:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestConnectionTracker:
    async def test_health_changes_are_written_at_once(self, store: Store) -> None:
        """The first success, a failure after it, and the recovery reach the disk immediately."""
        clock = FakeTime()
        tracker = ConnectionTracker(store, 60.0, clock, clock)
        await tracker.succeeded()
        assert store.load(CONNECTION).value == tracker.record
        clock.now += 1
        await tracker.failed("GET /v3/sources/x/command: HTTP 503", "retry")
        on_disk = store.load(CONNECTION).value
        assert on_disk is not None and on_disk.consecutive_errors == 1
        assert on_disk.last_error_action == "retry" and on_disk.last_ok_at == 1000.0
        clock.now += 1
        await tracker.succeeded()
        recovered = store.load(CONNECTION).value
        assert recovered is not None and recovered.healthy and recovered.last_error_at == 1001.0

    async def test_repeats_are_written_at_most_every_interval(self, store: Store) -> None:
        """Successful polls every few seconds write once a minute, and `flush` writes the rest."""
        clock = FakeTime()
        tracker = ConnectionTracker(store, 60.0, clock, clock)
        await tracker.succeeded()
        for _ in range(10):
            clock.now += 5
            await tracker.succeeded()
        on_disk = store.load(CONNECTION).value
        assert on_disk is not None and on_disk.last_ok_at == 1000.0
        clock.now += 15
        await tracker.succeeded()
        on_disk = store.load(CONNECTION).value
        assert on_disk is not None and on_disk.last_ok_at == 1065.0
        clock.now += 5
        await tracker.succeeded()
        tracker.flush()
        assert store.load(CONNECTION).value == tracker.record

    async def test_picks_up_where_the_last_run_left(self, store: Store) -> None:
        """A new tracker continues the error count from the file."""
        clock = FakeTime()
        first = ConnectionTracker(store, 60.0, clock, clock)
        await first.failed("boom")
        second = ConnectionTracker(store, 60.0, clock, clock)
        await second.failed("boom")
        assert second.record.consecutive_errors == 2
