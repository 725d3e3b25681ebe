"""Command delivery (`once`, `repeat`), task actions and results, and source liveness."""

from __future__ import annotations

import time
from typing import Any

from smsagent.api.enums import TaskOperation
from tests.support.emulator import EmulatorFactory, EmulatorProcess


def poll(process: EmulatorProcess, source_id: str) -> dict[str, Any]:
    answer = process.request("GET", f"/v3/sources/{source_id}/command")
    assert answer.status == 200, answer
    body: dict[str, Any] = answer.json()
    return body


def report(process: EmulatorProcess, source_id: str, name: str, result: str, **detail: Any) -> None:
    body = {"command_name": name, "result": result, "result_detail": detail}
    answer = process.request("POST", f"/v3/sources/{source_id}/command_result", body)
    assert (answer.status, answer.json()) == (200, {})


def task_of(process: EmulatorProcess, task_id: str) -> dict[str, Any]:
    answer = process.request("GET", f"/v3/tasks/{task_id}")
    assert answer.status == 200, answer
    task: dict[str, Any] = answer.json()
    return task


def started_task(process: EmulatorProcess) -> tuple[str, str]:
    source_id = process.register_source()
    task_id = process.create_task(source_id)
    process.action(task_id, "start")
    return source_id, task_id


def polls_for(process: EmulatorProcess, source_id: str, duration_s: float) -> list[dict[str, Any]]:
    """Every answer of back-to-back polls over `duration_s` seconds."""
    answers = []
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        answers.append(poll(process, source_id))
        time.sleep(0.05)
    return answers


def test_nothing_pending_is_an_empty_object(emulator: EmulatorProcess) -> None:
    """With no command pending the poll answers 200 with `{}`."""
    source_id = emulator.register_source()
    answer = emulator.request("GET", f"/v3/sources/{source_id}/command")
    assert (answer.status, answer.body) == (200, b"{}")


def test_once_hands_a_command_out_once(emulator: EmulatorProcess) -> None:
    """`once`: START comes on the first poll only; its result completes it."""
    source_id, task_id = started_task(emulator)
    assert poll(emulator, source_id) == {
        "command_name": "START",
        "command_param": {"task_id": task_id},
    }
    assert poll(emulator, source_id) == {}
    report(emulator, source_id, "START", "success", task_id=task_id)
    (command,) = emulator.state()["commands"]
    assert (command["state"], command["delivery_count"]) == ("done", 1)
    assert task_of(emulator, task_id)["state"] == "MIGRATE_SUCCESS"


def test_once_offers_again_without_a_result(start_emulator: EmulatorFactory) -> None:
    """`once`: a command with no result is offered again after `--redeliver-after` seconds."""
    process = start_emulator(redeliver_after=2)
    source_id, task_id = started_task(process)
    handed_out_at = time.monotonic()
    assert poll(process, source_id)["command_name"] == "START"
    assert poll(process, source_id) == {}
    deadline = handed_out_at + 10
    while (answer := poll(process, source_id)) == {}:
        assert time.monotonic() < deadline, "START was never offered again"
        time.sleep(0.05)
    assert time.monotonic() - handed_out_at >= 2.0
    assert answer == {"command_name": "START", "command_param": {"task_id": task_id}}
    assert process.state()["commands"][0]["delivery_count"] == 2


def test_once_does_not_offer_again_after_a_result(start_emulator: EmulatorFactory) -> None:
    """`once`: after its result a command is not offered again, however long the agent polls."""
    process = start_emulator(redeliver_after=0.2)
    source_id, task_id = started_task(process)
    assert poll(process, source_id)["command_name"] == "START"
    report(process, source_id, "START", "success", task_id=task_id)
    # Three redelivery windows of polling: a re-offer would have shown up in any of them.
    answers = polls_for(process, source_id, duration_s=0.6)
    assert len(answers) > 3
    assert all(answer == {} for answer in answers)


def test_repeat_returns_the_command_until_its_result(start_emulator: EmulatorFactory) -> None:
    """`repeat`: START is on every poll until its result arrives, then nothing."""
    process = start_emulator(command_delivery="repeat")
    source_id, task_id = started_task(process)
    expected = {"command_name": "START", "command_param": {"task_id": task_id}}
    assert [poll(process, source_id) for _ in range(3)] == [expected] * 3
    report(process, source_id, "START", "fail", task_id=task_id, error_code="SMS.3802")
    assert poll(process, source_id) == {}
    task = task_of(process, task_id)
    assert task["state"] == "MIGRATE_FAIL"
    assert "SMS.3802" in task["error_json"]


def test_repeat_newer_command_replaces_the_older(start_emulator: EmulatorFactory) -> None:
    """`repeat`: after stop, polls return STOP and the START is superseded."""
    process = start_emulator(command_delivery="repeat")
    source_id, task_id = started_task(process)
    assert poll(process, source_id)["command_name"] == "START"
    process.action(task_id, "stop")
    assert [poll(process, source_id)["command_name"] for _ in range(2)] == ["STOP", "STOP"]
    states = [(c["command_name"], c["state"]) for c in process.state()["commands"]]
    assert states == [("START", "superseded"), ("STOP", "delivered")]
    report(process, source_id, "STOP", "success", task_id=task_id)
    assert task_of(process, task_id)["state"] == "ABORT"


def test_once_newer_command_replaces_an_undelivered_one(emulator: EmulatorProcess) -> None:
    """Start then stop before any poll: the agent sees only STOP."""
    source_id, task_id = started_task(emulator)
    emulator.action(task_id, "stop")
    assert poll(emulator, source_id) == {
        "command_name": "STOP",
        "command_param": {"task_id": task_id},
    }
    assert poll(emulator, source_id) == {}


def test_actions_move_the_task_and_queue_commands(emulator: EmulatorProcess) -> None:
    """Each action sets the task state and queues its command; target-side ones only record."""
    source_id, task_id = started_task(emulator)
    expected = [
        ("start", "RUNNING", "START"),
        ("skip", "SKIPPING", "SKIP"),
        ("migration_test", "SKIPPING", "PREMIGRATE"),
        ("cutover", "SKIPPING", None),
        ("stop", "ABORTING", "STOP"),
        ("restart", "RUNNING", "START"),
    ]
    seen = []
    for operation, _, _ in expected:
        if operation != "start":
            emulator.action(task_id, operation)
        state = task_of(emulator, task_id)["state"]
        seen.append((operation, state, poll(emulator, source_id).get("command_name")))
    assert seen == expected
    actions = [(a["operation"], a["queued_command"]) for a in emulator.state()["actions"]]
    assert actions == [(operation, command) for operation, _, command in expected]


def test_every_operation_is_accepted(emulator: EmulatorProcess) -> None:
    """Each documented task operation answers 200 and is recorded in order."""
    _, task_id = started_task(emulator)
    for operation in TaskOperation:
        answer = emulator.request(
            "POST", f"/v3/tasks/{task_id}/action", {"operation": operation.value}
        )
        assert (answer.status, answer.json()) == (200, {}), operation
    recorded = [action["operation"] for action in emulator.state()["actions"]]
    assert recorded == ["start", *(operation.value for operation in TaskOperation)]


def test_restart_forgets_progress(emulator: EmulatorProcess) -> None:
    """`restart` clears the subtasks the agent reported."""
    _, task_id = started_task(emulator)
    progress = {
        "subtask_name": "MIGRATE_LINUX_FILE",
        "progress": 100,
        "replicatesize": 10,
        "totalsize": 10,
        "process_trace": "done",
    }
    assert emulator.request("PUT", f"/v3/tasks/{task_id}/progress", progress).status == 200
    (subtask,) = task_of(emulator, task_id)["sub_tasks"]
    assert subtask["progress"] == 100 and "end_date" in subtask
    emulator.action(task_id, "restart")
    assert task_of(emulator, task_id)["sub_tasks"] == []


def test_result_for_another_command_is_only_recorded(emulator: EmulatorProcess) -> None:
    """A late START result after STOP was queued leaves the task and the STOP as they are."""
    source_id, task_id = started_task(emulator)
    poll(emulator, source_id)
    emulator.action(task_id, "stop")
    report(emulator, source_id, "START", "fail", task_id=task_id)
    assert task_of(emulator, task_id)["state"] == "ABORTING"
    (result,) = emulator.state()["command_results"]
    assert (result["command_name"], result["command_id"], result["task_id"]) == (
        "START",
        None,
        None,
    )
    assert poll(emulator, source_id)["command_name"] == "STOP"


def test_admin_queues_any_command(emulator: EmulatorProcess) -> None:
    """A queued UPLOAD_LOG reaches the agent with its bucket."""
    source_id = emulator.register_source()
    emulator.queue_command(source_id, "UPLOAD_LOG", bucket="logs-bucket")
    assert poll(emulator, source_id) == {
        "command_name": "UPLOAD_LOG",
        "command_param": {"bucket": "logs-bucket"},
    }


def test_deleting_the_task_drops_its_command(emulator: EmulatorProcess) -> None:
    """A deleted task's pending START is never handed out."""
    source_id, task_id = started_task(emulator)
    assert emulator.request("DELETE", f"/v3/tasks/{task_id}").status == 200
    assert poll(emulator, source_id) == {}
    assert emulator.state()["commands"][0]["state"] == "dropped"


def test_deleted_source_must_register_again(emulator: EmulatorProcess) -> None:
    """After the console deletes a source its polls get 404 SMS.7701; registering gives a new id."""
    source_id, _ = started_task(emulator)
    assert emulator.request("DELETE", f"/v3/sources/{source_id}").status == 200
    answer = emulator.request("GET", f"/v3/sources/{source_id}/command")
    assert (answer.status, answer.json()["error_code"]) == (404, "SMS.7701")
    assert emulator.state()["tasks"] == []
    assert emulator.register_source() != source_id


def test_registering_again_keeps_the_id(emulator: EmulatorProcess) -> None:
    """The same server (by id, or by name and IP) registering again keeps its record."""
    source_id = emulator.register_source(cpu_quantity=2)
    assert emulator.register_source(cpu_quantity=4) == source_id
    assert emulator.register_source(id=source_id, name="renamed") == source_id
    (source,) = emulator.state()["sources"]
    assert (source["name"], source["cpu_quantity"]) == ("renamed", 4)


def test_polls_keep_the_source_connected(start_emulator: EmulatorFactory) -> None:
    """A source is connected while it polls and disconnected `--disconnect-after` s after."""
    process = start_emulator(disconnect_after=2)
    source_id = process.register_source()
    poll(process, source_id)
    first = process.state()["sources"][0]
    assert first["connected"] is True
    process.wait_for(lambda state: state["sources"][0]["connected"] is False, timeout_s=10)
    poll(process, source_id)
    second = process.state()["sources"][0]
    assert second["connected"] is True
    assert second["last_visit_time"] > first["last_visit_time"]
