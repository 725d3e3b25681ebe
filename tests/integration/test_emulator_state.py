"""The state dump, and `--state FILE` keeping everything across a restart."""

from __future__ import annotations

from pathlib import Path

from tests.support.emulator import EmulatorFactory, EmulatorProcess

PROGRESS = {
    "subtask_name": "MIGRATE_LINUX_FILE",
    "progress": 55,
    "replicatesize": 550,
    "totalsize": 1000,
    "process_trace": "copying",
    "migrate_speed": 12.5,
}


def test_state_dump_records_what_agents_sent(emulator: EmulatorProcess) -> None:
    """Progress, state changes, results and per-route request counts appear in arrival order."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(source_id)
    emulator.action(task_id, "start")
    emulator.request("GET", f"/v3/sources/{source_id}/command")
    emulator.request("PUT", f"/v3/tasks/{task_id}/progress", PROGRESS)
    emulator.request(
        "PUT",
        f"/v3/sources/{source_id}/changestate",
        {"copystate": "init", "migrationcycle": "checking"},
    )
    emulator.request("GET", f"/v3/sources/{source_id}/command")

    state = emulator.state()
    (progress,) = state["progress"]
    assert (progress["task_id"], progress["progress"], progress["replicatesize"]) == (
        task_id,
        55,
        550,
    )
    (change,) = state["changestates"]
    assert (change["source_id"], change["copystate"]) == (source_id, "init")
    assert state["sources"][0]["state"] == "initialize"
    assert state["sources"][0]["replicatesize"] == 550
    polls = state["requests"]["GET /v3/sources/{server_id}/command"]
    assert polls["count"] == 2
    assert polls["at"][0] <= polls["at"][1]
    assert state["options"]["command_delivery"] == "once"
    assert "sk" not in state["options"]


def test_state_file_survives_a_restart(start_emulator: EmulatorFactory, tmp_path: Path) -> None:
    """With `--state`, sources, tasks, pending commands, keys and journals outlive the process."""
    process = start_emulator(state=tmp_path / "emulator.db")
    source_id = process.register_source()
    task_id = process.create_task(source_id, syncing=True)
    process.set_cert_key(task_id, private_key="PEM-KEY")
    process.action(task_id, "start")
    process.request("PUT", f"/v3/tasks/{task_id}/progress", PROGRESS)

    assert process.stop() == 0
    process.restart()

    state = process.state()
    assert [s["id"] for s in state["sources"]] == [source_id]
    (task,) = state["tasks"]
    assert (task["id"], task["state"], task["syncing"]) == (task_id, "RUNNING", True)
    assert task["sub_tasks"][0]["progress"] == 55
    assert [p["progress"] for p in state["progress"]] == [55]
    answer = process.request("GET", f"/v3/sources/{source_id}/command")
    assert answer.json() == {"command_name": "START", "command_param": {"task_id": task_id}}
    certkey = process.request("GET", f"/v3/tasks/{task_id}/certkey").json()
    assert certkey == {"private_key": "PEM-KEY"}


def test_memory_state_is_gone_after_a_restart(emulator: EmulatorProcess) -> None:
    """Without `--state` a restart starts empty."""
    emulator.register_source()
    emulator.restart()
    assert emulator.state()["sources"] == []
