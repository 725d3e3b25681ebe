"""The emulated control plane: every SMS operation as a method over sources, tasks and commands.

Methods take validated models and return the JSON object to answer with; they raise `ApiError`
for answers that are errors. Flows that cross sources, tasks and commands (an action queues a
command, a result moves a task) live here; each part keeps its own documents.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from smsagent.api.enums import CommandName, CommandResult, TaskOperation
from smsagent.api.models import (
    CommandBody,
    ConfigurationRequestBody,
    NetworkCheckInfoRequestBody,
    PostSourceServerBody,
    PostTask,
    PutCopyStateReq,
    PutDiskInfoReq,
    PutTaskReq,
    SetConsistencyResultRequestBody,
    SpeedLimit,
    UpdateTaskSpeedReq,
    UpdateTaskStatusReq,
)
from smsagent.emulator import rules
from smsagent.emulator.commands import CommandQueue, DeliveryMode
from smsagent.emulator.errors import TASK_EXISTS, ApiError, invalid
from smsagent.emulator.queries import ListServersQuery, ListTasksQuery
from smsagent.emulator.results import CommandResults
from smsagent.emulator.sources import Sources, to_ms
from smsagent.emulator.store import Doc, Store
from smsagent.emulator.taskdata import CertKeyUpdate, TaskData
from smsagent.emulator.tasks import Tasks

# Journals: what the agents and the console sent, in arrival order, for inspection. Command
# results are kept apart (`results`) because a redelivered one is counted, not appended.
PROGRESS = "progress"
CHANGESTATES = "changestates"
ACTIONS = "actions"
JOURNALS = (PROGRESS, CHANGESTATES, ACTIONS)

# `log_collect_status` (spec §4.5); the server keeps it, from CollectLog and the UPLOAD_LOG result.
LOG_UPLOADING = "UPLOADING"
LOG_UPLOADED = "UPLOADED"
LOG_UPLOAD_FAIL = "UPLOAD_FAIL"

PRIVACY = "privacy"
AGENT_CONFIG: dict[str, Any] = {
    "config": {"mainRegion": "ap-southeast-3", "disktype": "SAS"},
    "regions": [
        {"region_name": "ap-southeast-3", "project_name": "ap-southeast-3"},
        {"region_name": "cn-north-4", "project_name": "cn-north-4"},
    ],
}


class ControlPlane:
    """All SMS operations the emulator serves, over one `Store`.

    Args:
        store: where documents and journals live.
        delivery: how commands are handed out (see `commands`).
        redeliver_after_s: in `once` mode, offer a command again after this long without result.
        disconnect_after_s: a source that has not polled for this long shows as disconnected.
        clock: wall-clock seconds; tests may pass their own.
    """

    def __init__(
        self,
        store: Store,
        delivery: DeliveryMode,
        redeliver_after_s: float,
        disconnect_after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._clock = clock
        self.sources = Sources(store, disconnect_after_s)
        self.tasks = Tasks(store)
        self.task_data = TaskData(store)
        self.commands = CommandQueue(store, delivery, redeliver_after_s)
        self.results = CommandResults(store)

    # --- agent side: configuration, registration, commands (spec §3.1-3.8) ---

    def show_config(self) -> dict[str, Any]:
        """ShowConfig: the agent configuration and the regions."""
        return dict(AGENT_CONFIG)

    def privacy_flag(self) -> dict[str, Any]:
        """ShowPrivacyAgreements: whether the agreement was accepted."""
        return {"flag": self._store.get(PRIVACY, "agreement") is not None}

    def agree_privacy(self) -> dict[str, Any]:
        """CreatePrivacyAgreements: record the acceptance."""
        self._store.put(PRIVACY, "agreement", {"agreed_at": self._clock()})
        return {}

    def register(self, body: PostSourceServerBody) -> dict[str, Any]:
        """RegisterServer: store the source and answer its id."""
        return {"id": self.sources.register(body, self._clock())}

    def show_source(self, source_id: str) -> dict[str, Any]:
        """ShowServer: the source with its current task."""
        doc = self.sources.get(source_id)
        return self.sources.view(doc, self.tasks.for_source(source_id), self._clock())

    def update_disks(self, source_id: str, body: PutDiskInfoReq) -> dict[str, Any]:
        """UpdateDiskInfo: replace the source's disk lists."""
        self.sources.update_disks(source_id, body)
        return {}

    def poll_command(self, source_id: str) -> dict[str, Any]:
        """The command for a polling agent, or `{}`; every poll keeps the source connected."""
        now_s = self._clock()
        self.sources.touch(source_id, now_s)
        command = self.commands.poll(source_id, now_s)
        if command is None:
            return {}
        return {"command_name": command["command_name"], "command_param": command["command_param"]}

    def command_result(self, source_id: str, body: CommandBody) -> dict[str, Any]:
        """Record a result; the one for the active command also moves the task on.

        A result whose `result_key` this source already sent is only counted: the agent
        redelivers after a lost answer, and the real service answers 200 to that too.
        """
        self.sources.get(source_id)
        if self.results.count_duplicate(source_id, body.result_detail):
            return {}
        now_s = self._clock()
        command = self.commands.complete(source_id, body.command_name.value, now_s)
        task_id = command["command_param"].get("task_id") if command else None
        entry = {"source_id": source_id, "received_at": now_s, **body.to_wire()}
        entry.update(command_id=command["id"] if command else None, task_id=task_id)
        self.results.record(source_id, entry)
        if task_id is not None and self.tasks.find(task_id) is not None:
            self._apply_result(task_id, body, now_s)
        if body.command_name is CommandName.UPLOAD_LOG:
            self._log_collected(source_id, task_id, body, now_s)
        return {}

    def change_state(self, source_id: str, body: PutCopyStateReq) -> dict[str, Any]:
        """UpdateCopyState: set the source's state and migration cycle."""
        now_s = self._clock()
        self.sources.change_state(source_id, body, now_s)
        self._store.append(
            CHANGESTATES, {"source_id": source_id, "received_at": now_s, **body.to_wire()}
        )
        return {}

    # --- agent side: tasks (spec §3.9-3.18) ---

    def show_task(self, task_id: str) -> dict[str, Any]:
        """ShowTask: the task with its source's current state."""
        return self._task_view(self.tasks.get(task_id))

    def update_task(self, task_id: str, body: PutTaskReq) -> dict[str, Any]:
        """UpdateTask: merge task and target fields."""
        return {"id": self.tasks.update(task_id, body)["id"]}

    def record_progress(self, task_id: str, body: UpdateTaskSpeedReq) -> dict[str, Any]:
        """UpdateTaskSpeed: apply a progress report to the task and its source."""
        now_s = self._clock()
        task = self.tasks.record_progress(task_id, body, now_s)
        source_id = task["source_server"]["id"]
        if self.sources.find(source_id) is not None:
            self.sources.update(
                source_id, replicatesize=body.replicatesize, totalsize=body.totalsize
            )
        self._store.append(PROGRESS, {"task_id": task_id, "received_at": now_s, **body.to_wire()})
        return {}

    def action(self, task_id: str, body: UpdateTaskStatusReq) -> dict[str, Any]:
        """Apply a console operation: new task state and, where it has one, a queued command."""
        now_s = self._clock()
        task = self.tasks.get(task_id)
        rule = rules.action_rule(body.operation)
        if rule.resets_progress:
            self.tasks.reset_progress(task_id)
        if rule.next_state is not None:
            self.tasks.set_state(task_id, rule.next_state, now_s)
        queued = None
        if rule.command is not None:
            source_id = task["source_server"]["id"]
            param = {"task_id": task_id}
            queued = self.commands.push(source_id, rule.command.value, now_s, param)
        entry = {"task_id": task_id, "received_at": now_s, **body.to_wire()}
        entry["queued_command"] = queued["command_name"] if queued else None
        self._store.append(ACTIONS, entry)
        return {}

    def collect_log(self, task_id: str, log_bucket: str) -> dict[str, Any]:
        """CollectLog (spec §3.19): the task's logs are wanted in `log_bucket`; its source's
        agent gets UPLOAD_LOG with the bucket, and the task shows `UPLOADING` until it answers."""
        task = self.tasks.get(task_id)
        self.tasks.override(
            task_id, {"log_bucket": log_bucket, "log_collect_status": LOG_UPLOADING}
        )
        param = {"task_id": task_id, "bucket": log_bucket}
        self.commands.push(
            task["source_server"]["id"], CommandName.UPLOAD_LOG.value, self._clock(), param
        )
        return {}

    def cert_key(self, task_id: str) -> dict[str, Any]:
        """ShowCertKey: the keys the console set for the task."""
        self.tasks.get(task_id)
        return self.task_data.cert_key(task_id)

    def passphrase(self, task_id: str) -> dict[str, Any]:
        """ShowPassphrase: the task's passphrase."""
        self.tasks.get(task_id)
        return self.task_data.passphrase(task_id)

    def network_check(self, task_id: str, body: NetworkCheckInfoRequestBody) -> dict[str, Any]:
        """UpdateNetworkCheckInfo: keep the agent's network measurement."""
        self.tasks.record_network_check(task_id, body)
        return {"task_id": task_id}

    def speed_limits(self, task_id: str) -> dict[str, Any]:
        """ShowsSpeedLimits: the task's rate-limit windows."""
        self.tasks.get(task_id)
        return self.task_data.speed_limits(task_id)

    def set_speed_limits(self, task_id: str, body: SpeedLimit) -> dict[str, Any]:
        """UpdateSpeed: replace the task's rate-limit windows."""
        self.tasks.get(task_id)
        self.task_data.set_speed_limits(task_id, body)
        return {}

    def configurations(self, task_id: str, config_key: Optional[str]) -> dict[str, Any]:
        """ShowConfigSetting: the task's settings, or only `config_key`'s."""
        return self.task_data.configurations(self.tasks.get(task_id), config_key)

    def set_configurations(self, task_id: str, body: ConfigurationRequestBody) -> dict[str, Any]:
        """UploadSpecialConfigurationSetting: store settings by key."""
        self.tasks.get(task_id)
        self.task_data.set_configurations(task_id, body)
        return {}

    def consistency(self, task_id: str) -> dict[str, Any]:
        """ShowConsistencyResult: the stored verification results."""
        self.tasks.get(task_id)
        return self.task_data.consistency(task_id)

    def set_consistency(
        self, task_id: str, body: SetConsistencyResultRequestBody
    ) -> dict[str, Any]:
        """UpdateConsistencyResult: replace the verification results."""
        self.tasks.get(task_id)
        self.task_data.set_consistency(task_id, body)
        return {}

    # --- console side (spec §3.22) ---

    def list_sources(self, query: ListServersQuery) -> dict[str, Any]:
        """ListServers: the sources that pass the query's filters, one page."""
        now_s = self._clock()
        views = [
            self.sources.view(doc, self.tasks.for_source(doc["id"]), now_s)
            for doc in self.sources.all()
        ]
        matching = [view for view in views if query.matches(view)]
        return {"count": len(matching), "source_servers": query.page(matching)}

    def delete_source(self, source_id: str) -> dict[str, Any]:
        """Forget a source and its task; its agent gets 404 and must register again."""
        self.sources.get(source_id)
        task = self.tasks.for_source(source_id)
        if task is not None:
            self.delete_task(task["id"])
        self.commands.drop(source_id)
        self.sources.delete(source_id)
        return {}

    def create_task(self, body: PostTask) -> dict[str, Any]:
        """Create a READY task for a registered source; `auto_start` also starts it."""
        source_id = body.source_server.id
        source = self.sources.find(source_id)
        if source is None:
            raise invalid("source_server.id", f"the source server does not exist: {source_id}")
        if self.tasks.for_source(source_id) is not None:
            msg = f"The source server already has a migration task: {source_id}"
            raise ApiError(400, TASK_EXISTS, msg)
        task = self.tasks.create(body, source, self._clock())
        if body.auto_start:
            self.action(task["id"], UpdateTaskStatusReq(operation=TaskOperation.start))
        return {"id": task["id"]}

    def list_tasks(self, query: ListTasksQuery) -> dict[str, Any]:
        """ListTasks: the tasks that pass the query's filters, one page."""
        matching = [view for view in map(self._task_view, self.tasks.all()) if query.matches(view)]
        return {"count": len(matching), "tasks": query.page(matching)}

    def delete_task(self, task_id: str) -> dict[str, Any]:
        """DeleteTask: forget the task, its side documents and its pending command."""
        task = self.tasks.delete(task_id)
        self.task_data.forget(task_id)
        self.commands.drop(task["source_server"]["id"], task_id)
        return {}

    # --- emulator administration ---

    def set_cert_key(self, task_id: str, body: CertKeyUpdate) -> dict[str, Any]:
        """Set what ShowCertKey (and optionally ShowPassphrase) answers for a task."""
        self.tasks.get(task_id)
        self.task_data.set_cert_key(task_id, body)
        return {}

    def override_task(self, task_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Set any task fields (a plugin task type, plugin fields) and answer the ShowTask view."""
        return self._task_view(self.tasks.override(task_id, fields))

    def queue_command(self, source_id: str, name: CommandName, param: dict[str, Any]) -> Doc:
        """Queue any command for a source, as if the console had caused it."""
        self.sources.get(source_id)
        return self.commands.push(source_id, name.value, self._clock(), param)

    def dump(self) -> dict[str, Any]:
        """Everything the emulator holds, for tests and for people debugging an agent."""
        now_s = self._clock()
        state: dict[str, Any] = {
            "sources": [
                self.sources.view(doc, self.tasks.for_source(doc["id"]), now_s)
                for doc in self.sources.all()
            ],
            "tasks": [self._task_view(doc) for doc in self.tasks.all()],
            "commands": self.commands.all(),
            "command_results": self.results.all(),
            "duplicate_results": self.results.duplicate_count(),
        }
        state.update({journal: self._store.entries(journal) for journal in JOURNALS})
        return state

    def reset(self) -> None:
        """Forget every source, task, command and journal entry."""
        self._store.clear()

    def _task_view(self, task: Doc) -> dict[str, Any]:
        source = self.sources.find(task["source_server"]["id"])
        connected = source is not None and self.sources.is_connected(source, self._clock())
        return self.tasks.view(task, source, connected)

    def _log_collected(
        self, source_id: str, task_id: Optional[str], body: CommandBody, now_s: float
    ) -> None:
        """An UPLOAD_LOG result moves the task's `log_collect_status` on (the command may name
        no task: then it is the source's task, if it has one)."""
        task = self.tasks.find(task_id) if task_id else self.tasks.for_source(source_id)
        if task is None:
            return
        if body.result is CommandResult.success:
            fields: dict[str, Any] = {
                "log_collect_status": LOG_UPLOADED,
                "log_upload_time": to_ms(now_s),
            }
        else:
            fields = {"log_collect_status": LOG_UPLOAD_FAIL}
        bucket = body.result_detail.get("bucket")
        if isinstance(bucket, str) and bucket:
            fields["log_bucket"] = bucket
        self.tasks.override(task["id"], fields)

    def _apply_result(self, task_id: str, body: CommandBody, now_s: float) -> None:
        state = rules.result_state(CommandName(body.command_name), CommandResult(body.result))
        if state is None:
            return
        error = body.result_detail if state in rules.FAILED_STATES else None
        self.tasks.set_state(task_id, state, now_s, error=error)
