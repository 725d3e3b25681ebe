"""Migration tasks: creation from the console body, updates, state, progress, and their view."""

from __future__ import annotations

import json
import uuid
from typing import Any, Optional

from pydantic import ValidationError

from smsagent.api.enums import TaskState, TaskType
from smsagent.api.models import (
    CloneServer,
    NetworkCheckInfoRequestBody,
    PostTask,
    PutTaskReq,
    ResponseModel,
    Task,
    TaskTargetServer,
    UpdateTaskSpeedReq,
)
from smsagent.emulator.errors import from_validation, invalid, task_not_found
from smsagent.emulator.sources import to_ms
from smsagent.emulator.store import Doc, Store
from smsagent.emulator.targetlayout import target_server

KIND = "task"

DEFAULT_PRIORITY = 1
# Fields of `PUT /v3/tasks/{id}` that describe the target server rather than the task.
_TARGET_FIELDS = ("image_disk_id", "cutovered_snapshot_ids")
# Progress fields copied onto the task as they are, and those renamed on the way.
_PROGRESS_FIELDS = (
    "migrate_speed",
    "compress_rate",
    "total_cpu_usage",
    "agent_cpu_usage",
    "total_mem_usage",
    "agent_mem_usage",
    "total_disk_io",
    "agent_disk_io",
    "need_migration_test",
    "replicatesize",
    "totalsize",
)
# Fields an override may not touch: the store key, and the link the task is found by.
_FIXED_FIELDS = ("id", "source_server")
_SOURCE_VIEW_FIELDS = (
    "id",
    "ip",
    "name",
    "os_type",
    "os_version",
    "oem_system",
    "state",
    "migration_cycle",
)


def validated_part(
    model: type[ResponseModel], value: Optional[dict[str, Any]], field: str
) -> Optional[dict[str, Any]]:
    """Check a free-form object against the shape ShowTask serves it in; 400 naming the field.

    CreateTask and UpdateTask take `target_server` and `clone_server` as open objects; checking
    them here keeps a bad type from breaking every later ShowTask.
    """
    if value is None:
        return None
    try:
        return model.model_validate(value).to_wire()
    except ValidationError as exc:
        raise from_validation(exc, prefix=field) from exc


class Tasks:
    """The migration tasks, kept in a `Store`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def create(self, body: PostTask, source: Doc, now_s: float) -> Doc:
        """A new READY task for `source` from a CreateTask body.

        The target's disks, volume groups and btrfs list the body leaves out are filled in from
        the source's registration, as the console does (`targetlayout.py`).
        """
        doc: Doc = body.to_wire()
        doc["target_server"] = target_server(
            body.target_server, source, block_level=body.type is TaskType.MIGRATE_BLOCK
        )
        doc.update(
            id=uuid.uuid4().hex,
            state=TaskState.READY.value,
            create_date=to_ms(now_s),
            os_type=doc.get("os_type") or source.get("os_type"),
            priority=doc.get("priority", DEFAULT_PRIORITY),
            source_server={"id": source["id"]},
            sub_tasks=[],
        )
        self._store.put(KIND, doc["id"], {k: v for k, v in doc.items() if v is not None})
        return self.get(doc["id"])

    def find(self, task_id: str) -> Optional[Doc]:
        """The stored task, or None."""
        return self._store.get(KIND, task_id)

    def get(self, task_id: str) -> Doc:
        """The stored task.

        Raises:
            ApiError: 404 (`SMS.7703`) when there is no such task.
        """
        doc = self._store.get(KIND, task_id)
        if doc is None:
            raise task_not_found(task_id)
        return doc

    def all(self) -> list[Doc]:
        """Every task, oldest first."""
        return self._store.values(KIND)

    def for_source(self, source_id: str) -> Optional[Doc]:
        """The task of a source server, if it has one."""
        for doc in self.all():
            if doc["source_server"]["id"] == source_id:
                return doc
        return None

    def delete(self, task_id: str) -> Doc:
        """Remove a task and return what it was."""
        doc = self.get(task_id)
        self._store.delete(KIND, task_id)
        return doc

    def update(self, task_id: str, body: PutTaskReq) -> Doc:
        """Merge an UpdateTask body: task fields on the task, target fields on its target."""
        doc = self.get(task_id)
        wire = body.to_wire()
        target = dict(doc.get("target_server") or {})
        target.update(
            validated_part(TaskTargetServer, wire.pop("target_server", None), "target_server") or {}
        )
        clone = validated_part(CloneServer, wire.pop("clone_server", None), "clone_server")
        if clone is not None:
            doc["clone_server"] = clone
        for field in _TARGET_FIELDS:
            if field in wire:
                target[field] = wire.pop(field)
        doc.update(wire)
        if target:
            doc["target_server"] = target
        return self._put(doc)

    def override(self, task_id: str, fields: dict[str, Any]) -> Doc:
        """Set any task fields as given, a null removing one; the result must still be a task.

        Tests use it for what the console body cannot say (a plugin task type, plugin fields).

        Raises:
            ApiError: 400 naming the field for `id`, `source_server`, or a value ShowTask
                could not serve (e.g. `sub_tasks` that is not a list).
        """
        for field in _FIXED_FIELDS:
            if field in fields:
                raise invalid(field, "cannot be overridden")
        doc = self.get(task_id)
        doc.update(fields)
        doc = {key: value for key, value in doc.items() if value is not None}
        try:
            Task.model_validate(doc)
        except ValidationError as exc:
            raise from_validation(exc) from exc
        return self._put(doc)

    def set_state(
        self,
        task_id: str,
        state: TaskState,
        now_s: float,
        error: Optional[dict[str, Any]] = None,
    ) -> Doc:
        """Move a task to `state`, stamping start/finish dates and the last error."""
        doc = self.get(task_id)
        doc["state"] = state.value
        if state is TaskState.RUNNING:
            doc.setdefault("start_date", to_ms(now_s))
        if state in (TaskState.MIGRATE_SUCCESS, TaskState.SYNC_SUCCESS):
            doc["finish_date"] = to_ms(now_s)
            doc["total_time"] = doc["finish_date"] - doc.get("start_date", doc["finish_date"])
        if error is not None:
            doc["error_json"] = json.dumps(error, sort_keys=True)
        return self._put(doc)

    def reset_progress(self, task_id: str) -> Doc:
        """Forget the progress of a task that starts over."""
        doc = self.get(task_id)
        doc["sub_tasks"] = []
        for field in (*_PROGRESS_FIELDS, "remain_seconds", "start_date", "finish_date"):
            doc.pop(field, None)
        return self._put(doc)

    def record_progress(self, task_id: str, body: UpdateTaskSpeedReq, now_s: float) -> Doc:
        """Apply a progress report to the task and to its subtask of the same name."""
        doc = self.get(task_id)
        wire = body.to_wire()
        doc.update({field: wire[field] for field in _PROGRESS_FIELDS if field in wire})
        if body.remain_time is not None:
            doc["remain_seconds"] = body.remain_time
        doc["sub_tasks"] = _with_subtask(doc.get("sub_tasks") or [], body, now_s)
        return self._put(doc)

    def record_network_check(self, task_id: str, body: NetworkCheckInfoRequestBody) -> Doc:
        """Keep the agent's network measurement; ShowTask shows it as `network_check_info`."""
        doc = self.get(task_id)
        doc["network_check_info"] = body.to_wire()
        return self._put(doc)

    def view(self, doc: Doc, source: Optional[Doc], connected: bool) -> dict[str, Any]:
        """The ShowTask / ListTasks body, with the source's current state filled in."""
        shown = dict(doc)
        if source is not None:
            shown["source_server"] = {k: source[k] for k in _SOURCE_VIEW_FIELDS if k in source}
            shown["connected"] = connected
        return Task.model_validate(shown).to_wire()

    def _put(self, doc: Doc) -> Doc:
        self._store.put(KIND, doc["id"], doc)
        return doc


def _with_subtask(sub_tasks: list[Doc], body: UpdateTaskSpeedReq, now_s: float) -> list[Doc]:
    name = body.subtask_name.value
    current = next((sub for sub in sub_tasks if sub.get("name") == name), None)
    if current is None:
        current = {"id": len(sub_tasks) + 1, "name": name, "start_date": to_ms(now_s)}
        sub_tasks.append(current)
    current["progress"] = body.progress
    current["process_trace"] = body.process_trace
    if body.migrate_speed is not None:
        current["migrate_speed"] = body.migrate_speed
    if body.progress >= 100:
        current.setdefault("end_date", to_ms(now_s))
    else:
        current.pop("end_date", None)
    return sub_tasks
