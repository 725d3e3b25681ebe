"""`smsagent status` reads the state directory alone and changes nothing in it."""

from __future__ import annotations

import json
import os

import pytest

from smsagent.agent.health import HealthFile
from smsagent.agent.machine import State
from smsagent.agent.store import (
    AGENT,
    CONNECTION,
    TASK,
    AgentRecord,
    ConnectionRecord,
    Store,
    TaskRecord,
)
from smsagent.cli import main
from smsagent.status import collect, find_state_dir, is_running, render


def _populated(tmp_path):
    store = Store(tmp_path / "state")
    store.open()
    store.save(
        AGENT,
        AgentRecord(
            server_id="s-1", endpoint="https://sms.example", fingerprint="f", registered_at=10.0
        ),
    )
    store.save(CONNECTION, ConnectionRecord(last_ok_at=20.0, updated_at=20.0))
    task = TaskRecord.new("t-1", "MIGRATE_FILE", 5.0).model_copy(update={"state": State.running})
    task = task.begin_stage("MIGRATE_LINUX_FILE", 6.0)
    task = task.record_progress("MIGRATE_LINUX_FILE", 250, 1000, 7.0)
    store.save(TASK, task)
    (store.state_dir / "outbox").mkdir(exist_ok=True)
    (store.state_dir / "outbox" / "000000000001.json").write_text("{}")
    return store.state_dir


def test_status_shows_server_task_stage_and_owed_results(tmp_path, capsys):
    """The JSON report names the server, the task, its state, stage progress and outbox depth."""
    state_dir = _populated(tmp_path)
    before = sorted(p.name for p in state_dir.rglob("*"))
    assert main(["status", "--state-dir", str(state_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["server_id"] == "s-1"
    assert report["task"]["task_id"] == "t-1"
    assert report["task"]["state"] == State.running.value
    assert report["task"]["stage"] == "MIGRATE_LINUX_FILE"
    assert report["task"]["bytes_done"] == 250
    assert report["outbox_depth"] == 1
    assert sorted(p.name for p in state_dir.rglob("*")) == before


def test_text_report_is_readable(tmp_path):
    """The terminal form has one line per fact, with the stage's share done."""
    text = render(collect(_populated(tmp_path)), now_s=30.0)
    assert text.splitlines()[0].split()[0] == "agent"
    assert "server id" in text and "s-1" in text
    assert "25 % of 1000 bytes" in text
    assert "results owed    1" in text


def test_unreadable_documents_are_reported_absent(tmp_path, capsys):
    """A corrupt task document is shown as no task, and left where it is."""
    state_dir = _populated(tmp_path)
    (state_dir / "task.json").write_text("{not json")
    assert main(["status", "--state-dir", str(state_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] is None
    assert (state_dir / "task.json").read_text() == "{not json"


def test_missing_state_dir_is_one_line(tmp_path, capsys):
    """A state directory that is not there is said in one line, with exit code 1, and no
    table of unknowns before it."""
    missing = tmp_path / "nowhere"
    assert main(["status", "--state-dir", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"smsagent: state directory {missing} does not exist: no agent has run with it"
    ]


def test_stopped_agent_is_not_running_and_shows_its_last_poll(tmp_path):
    """With no agent holding the state directory, nothing claims the connection is ok; the
    last good poll and the last error are shown with their times."""
    state_dir = _populated(tmp_path)
    store = Store(state_dir)
    record = ConnectionRecord(
        last_ok_at=1_700_000_000.0,
        last_error_at=1_700_000_100.0,
        last_error="SMS.0203 cannot reach the endpoint",
        updated_at=1_700_000_100.0,
    )
    store.save(CONNECTION, record)
    health = HealthFile(state_dir)
    health.open()
    health.close()

    report = collect(state_dir)
    lines = dict(_rows(render(report, now_s=1_700_000_160.0)))

    assert report["agent_running"] is False
    assert lines["agent"].startswith("not running; the last one stopped ")
    assert lines["connection"] == "none: no agent runs"
    assert lines["last good poll"] == "2023-11-14 22:13:20 UTC (160 s ago)"
    assert lines["last error"] == (
        "2023-11-14 22:15:00 UTC (60 s ago): SMS.0203 cannot reach the endpoint"
    )


def test_running_agent_says_so_and_how_old_its_record_is(tmp_path):
    """An agent holding the state directory is running; its last good poll may be newer than
    the record, and the report says so."""
    state_dir = _populated(tmp_path)
    health = HealthFile(state_dir)
    health.open()
    try:
        report = collect(state_dir)
        lines = dict(_rows(render(report, now_s=30.0)))
    finally:
        health.close()

    assert report["agent_running"] is True and report["agent_pid"] == os.getpid()
    assert lines["agent"].startswith(f"running (pid {os.getpid()}), started ")
    assert lines["connection"] == "ok"
    assert lines["last good poll"].endswith("or later (recorded at most every 60 s)")


def test_unknown_where_it_cannot_know(tmp_path):
    """An unreadable connection record is shown as unknown, not as no error."""
    state_dir = _populated(tmp_path)
    (state_dir / "connection.json").write_text("{broken")
    lines = dict(_rows(render(collect(state_dir), now_s=30.0)))
    assert lines["last good poll"] == "unknown"
    assert lines["last error"] == "unknown"


@pytest.mark.parametrize(
    ("holds_lock", "unit", "running"),
    [
        (True, None, True),
        (False, None, False),
        (None, None, None),
        (False, "inactive", False),
        (False, "failed", False),
        (False, "activating", None),
        (None, "active", True),
        (None, "inactive", None),
    ],
)
def test_running_from_the_lock_and_the_unit(holds_lock, unit, running):
    """The lock decides when it can be tested; the unit only fills in, and disagreement is
    unknown."""
    assert is_running(holds_lock, unit) is running


def _rows(text):
    """`name  value` lines as (name, value) pairs (names have single spaces, values start
    after two)."""
    for line in text.splitlines():
        name, _, value = line.partition("  ")
        yield name, value.strip()


def test_state_dir_comes_from_the_env_file(tmp_path):
    """Without a flag or variable the env file's SMSAGENT_STATE_DIR is used."""
    env_file = tmp_path / "smsagent.env"
    env_file.write_text("SMSAGENT_STATE_DIR=/srv/agent-state\nSMSAGENT_SK=not-read-here\n")
    assert str(find_state_dir(None, env_file, {})) == "/srv/agent-state"
    assert str(find_state_dir(None, env_file, {"SMSAGENT_STATE_DIR": "/x"})) == "/x"
    assert os.fspath(find_state_dir(tmp_path, env_file, {})) == os.fspath(tmp_path)
