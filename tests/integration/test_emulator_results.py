"""Command results are idempotent by `result_detail.result_key`: a redelivery is counted once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.emulator import EmulatorFactory, EmulatorProcess


def send_result(
    process: EmulatorProcess, source_id: str, name: str, result: str = "success", **detail: Any
) -> None:
    """POST one command result signed with AK/SK; every delivery must be answered 200 `{}`."""
    body = {"command_name": name, "result": result, "result_detail": detail}
    answer = process.signed_request("POST", f"/v3/sources/{source_id}/command_result", body)
    assert (answer.status, answer.json()) == (200, {}), answer


def poll_name(process: EmulatorProcess, source_id: str) -> Any:
    answer = process.signed_request("GET", f"/v3/sources/{source_id}/command")
    assert answer.status == 200, answer
    return answer.json().get("command_name")


def started_task(process: EmulatorProcess) -> tuple[str, str]:
    source_id = process.register_source()
    task_id = process.create_task(source_id)
    process.action(task_id, "start")
    assert poll_name(process, source_id) == "START"
    return source_id, task_id


def keys_and_duplicates(process: EmulatorProcess) -> list[tuple[Any, int]]:
    return [(r["result_detail"].get("result_key"), r["duplicates"]) for r in process.results()]


def test_the_same_key_twice_is_stored_once(emulator: EmulatorProcess) -> None:
    """A redelivered result answers 200, is not stored again, and is counted."""
    source_id, task_id = started_task(emulator)
    key = f"{task_id}/START/1"
    send_result(emulator, source_id, "START", task_id=task_id, result_key=key)
    send_result(emulator, source_id, "START", task_id=task_id, result_key=key)
    assert keys_and_duplicates(emulator) == [(key, 1)]
    assert emulator.state()["duplicate_results"] == 1


def test_different_keys_are_both_stored(emulator: EmulatorProcess) -> None:
    """Two results with their own keys are two entries, neither a duplicate."""
    source_id, task_id = started_task(emulator)
    send_result(emulator, source_id, "START", task_id=task_id, result_key=f"{task_id}/START/1")
    send_result(emulator, source_id, "STOP", task_id=task_id, result_key=f"{task_id}/STOP/2")
    assert keys_and_duplicates(emulator) == [(f"{task_id}/START/1", 0), (f"{task_id}/STOP/2", 0)]
    assert emulator.state()["duplicate_results"] == 0


def test_results_without_a_key_are_all_stored(emulator: EmulatorProcess) -> None:
    """Without `result_key` (or with an empty one) each delivery is a new entry, as before."""
    source_id = emulator.register_source()
    send_result(emulator, source_id, "UPLOAD_LOG")
    send_result(emulator, source_id, "UPLOAD_LOG")
    send_result(emulator, source_id, "UPLOAD_LOG", result_key="")
    send_result(emulator, source_id, "UPLOAD_LOG", result_key="")
    assert keys_and_duplicates(emulator) == [(None, 0), (None, 0), ("", 0), ("", 0)]


def test_keys_are_per_source(emulator: EmulatorProcess) -> None:
    """The same key from two sources is two results."""
    first = emulator.register_source(name="source-a", ip="192.0.2.11")
    second = emulator.register_source(name="source-b", ip="192.0.2.12")
    send_result(emulator, first, "UPLOAD_LOG", result_key="-/UPLOAD_LOG/1")
    send_result(emulator, second, "UPLOAD_LOG", result_key="-/UPLOAD_LOG/1")
    assert [r["duplicates"] for r in emulator.results(first)] == [0]
    assert [r["duplicates"] for r in emulator.results(second)] == [0]


def test_a_late_redelivery_does_not_complete_a_newer_command(emulator: EmulatorProcess) -> None:
    """After a restart queues START again, the first START's redelivered result changes nothing."""
    source_id, task_id = started_task(emulator)
    first_key = f"{task_id}/START/1"
    send_result(emulator, source_id, "START", task_id=task_id, result_key=first_key)
    assert emulator.state()["tasks"][0]["state"] == "MIGRATE_SUCCESS"
    emulator.action(task_id, "restart")
    assert poll_name(emulator, source_id) == "START"

    send_result(emulator, source_id, "START", task_id=task_id, result_key=first_key)

    state = emulator.state()
    assert state["tasks"][0]["state"] == "RUNNING"
    assert [(c["command_name"], c["state"]) for c in state["commands"]] == [
        ("START", "done"),
        ("START", "delivered"),
    ]
    assert keys_and_duplicates(emulator) == [(first_key, 1)]


def test_keys_survive_a_restart_with_a_state_file(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """With `--state`, a redelivery after the emulator restarted is still recognised."""
    process = start_emulator(state=tmp_path / "emulator.db")
    source_id, task_id = started_task(process)
    key = f"{task_id}/START/1"
    send_result(process, source_id, "START", task_id=task_id, result_key=key)
    send_result(process, source_id, "START", task_id=task_id, result_key=key)

    assert process.stop() == 0
    process.restart()
    send_result(process, source_id, "START", task_id=task_id, result_key=key)

    assert keys_and_duplicates(process) == [(key, 2)]
    assert process.state()["duplicate_results"] == 2


def test_reset_forgets_the_keys(emulator: EmulatorProcess) -> None:
    """After a reset the same key is a first delivery again."""
    source_id = emulator.register_source()
    send_result(emulator, source_id, "UPLOAD_LOG", result_key="-/UPLOAD_LOG/1")
    emulator.reset()
    source_id = emulator.register_source()
    send_result(emulator, source_id, "UPLOAD_LOG", result_key="-/UPLOAD_LOG/1")
    assert keys_and_duplicates(emulator) == [("-/UPLOAD_LOG/1", 0)]
