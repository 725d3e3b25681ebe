"""`smsagent status` reads the state directory alone and changes nothing in it."""

from __future__ import annotations

import json
import os

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
from smsagent.status import collect, find_state_dir, render


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


def test_missing_state_dir_exits_1(tmp_path, capsys):
    """A state directory that is not there is said plainly, with exit code 1."""
    assert main(["status", "--state-dir", str(tmp_path / "nowhere")]) == 1
    assert "not readable" in capsys.readouterr().err


def test_state_dir_comes_from_the_env_file(tmp_path):
    """Without a flag or variable the env file's SMSAGENT_STATE_DIR is used."""
    env_file = tmp_path / "smsagent.env"
    env_file.write_text("SMSAGENT_STATE_DIR=/srv/agent-state\nSMSAGENT_SK=not-read-here\n")
    assert str(find_state_dir(None, env_file, {})) == "/srv/agent-state"
    assert str(find_state_dir(None, env_file, {"SMSAGENT_STATE_DIR": "/x"})) == "/x"
    assert os.fspath(find_state_dir(tmp_path, env_file, {})) == os.fspath(tmp_path)
