"""Console shortcuts of the admin API: creating tasks with their options, overriding task fields."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.emulator import AdminError, EmulatorProcess


def show_task(process: EmulatorProcess, task_id: str) -> dict[str, Any]:
    answer = process.signed_request("GET", f"/v3/tasks/{task_id}")
    assert answer.status == 200, answer
    task: dict[str, Any] = answer.json()
    return task


def test_create_task_defaults(emulator: EmulatorProcess) -> None:
    """Without options the task is a READY file-level Linux task in the default region."""
    source_id = emulator.register_source()
    task = show_task(emulator, emulator.create_task(source_id))
    shown = {k: task.get(k) for k in ("type", "os_type", "state", "migration_ip", "region_id")}
    assert shown == {
        "type": "MIGRATE_FILE",
        "os_type": "LINUX",
        "state": "READY",
        "migration_ip": "127.0.0.1",
        "region_id": "ap-southeast-3",
    }
    assert ("syncing" in task, "speed_limit" in task) == (False, False)


def test_create_task_options_reach_show_task(emulator: EmulatorProcess) -> None:
    """`migration_ip`, `syncing`, `speed_limit`, `type` and other fields reach ShowTask."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(
        source_id,
        type="MIGRATE_BLOCK",
        migration_ip="198.51.100.7",
        syncing=True,
        speed_limit=40,
        region_id="cn-north-4",
    )
    task = show_task(emulator, task_id)
    shown = {k: task.get(k) for k in ("type", "migration_ip", "syncing", "speed_limit")}
    assert shown == {
        "type": "MIGRATE_BLOCK",
        "migration_ip": "198.51.100.7",
        "syncing": True,
        "speed_limit": 40,
    }
    assert task["region_id"] == "cn-north-4"


def test_patch_sets_a_plugin_type_and_fields(emulator: EmulatorProcess) -> None:
    """Fields CreateTask does not know are set, shown by ShowTask, and kept for later calls."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(source_id)
    answered = emulator.patch_task(
        task_id,
        type="FSCOPY_TEST",
        fscopy_source={"paths": ["/srv/data"], "exclude": []},
        migration_ip="203.0.113.5",
    )
    task = show_task(emulator, task_id)
    assert answered == task
    assert (task["type"], task["migration_ip"]) == ("FSCOPY_TEST", "203.0.113.5")
    assert task["fscopy_source"] == {"paths": ["/srv/data"], "exclude": []}
    assert (task["state"], task["source_server"]["id"]) == ("READY", source_id)
    emulator.action(task_id, "start")
    assert show_task(emulator, task_id)["fscopy_source"] == {"paths": ["/srv/data"], "exclude": []}


def test_patch_overrides_the_target(emulator: EmulatorProcess) -> None:
    """`target_server` is replaced as given, so a test can point a task at its own target."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(source_id)
    target = {"name": "target-02", "ip": "192.0.2.99", "vm_id": "vm-0002"}
    emulator.patch_task(task_id, target_server=target)
    assert show_task(emulator, task_id)["target_server"] == target


def test_patch_null_removes_a_field(emulator: EmulatorProcess) -> None:
    """A null value removes the field from the task."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(source_id, speed_limit=10)
    emulator.patch_task(task_id, speed_limit=None)
    assert "speed_limit" not in show_task(emulator, task_id)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"id": "other"}, "'id'"),
        ({"source_server": {"id": "other"}}, "'source_server'"),
        ({"sub_tasks": "none"}, "'sub_tasks'"),
        ({"priority": "high"}, "'priority'"),
    ],
)
def test_patch_refuses_what_would_break_the_task(
    emulator: EmulatorProcess, fields: dict[str, Any], named: str
) -> None:
    """Identity fields and values ShowTask could not serve are a 400 naming the field."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(source_id)
    with pytest.raises(AdminError) as raised:
        emulator.patch_task(task_id, **fields)
    assert raised.value.status == 400
    assert named in raised.value.body["error_msg"]
    assert show_task(emulator, task_id)["type"] == "MIGRATE_FILE"


def test_patch_needs_an_object_and_a_task(emulator: EmulatorProcess) -> None:
    """A body that is not an object is a 400; an unknown task is a 404."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(source_id)
    with pytest.raises(AdminError) as not_object:
        emulator.admin("PATCH", f"/tasks/{task_id}", ["type"])
    assert not_object.value.status == 400
    with pytest.raises(AdminError) as missing:
        emulator.patch_task("no-such-task", type="FSCOPY_TEST")
    assert (missing.value.status, missing.value.body["error_code"]) == (404, "SMS.7703")


def test_journal_accessors_filter(emulator: EmulatorProcess) -> None:
    """`changestates(source_id)` and `progress(task_id)` return only that source's or task's."""
    first = emulator.register_source(name="source-a", ip="192.0.2.11")
    second = emulator.register_source(name="source-b", ip="192.0.2.12")
    task_id = emulator.create_task(first)
    change = {"copystate": "init", "migrationcycle": "checking"}
    for source_id in (first, second):
        answer = emulator.request("PUT", f"/v3/sources/{source_id}/changestate", change)
        assert answer.status == 200
    progress = {
        "subtask_name": "MIGRATE_LINUX_FILE",
        "progress": 10,
        "replicatesize": 1,
        "totalsize": 10,
        "process_trace": "copying",
    }
    assert emulator.request("PUT", f"/v3/tasks/{task_id}/progress", progress).status == 200
    assert [c["source_id"] for c in emulator.changestates()] == [first, second]
    assert [c["source_id"] for c in emulator.changestates(second)] == [second]
    assert [p["progress"] for p in emulator.progress(task_id)] == [10]
    assert emulator.progress("another-task") == []
