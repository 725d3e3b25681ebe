"""The emulator's own API under `/_emulator/`: inspect state, switch faults, drive the console.

It is not signed and sees no faults, so keep the emulator on a loopback address. Calls:

* `GET /_emulator/health` -> `{"status": "ok"}`.
* `GET /_emulator/state` -> the state dump:
  `sources` and `tasks` (as ShowServer and ShowTask show them);
  `commands` (every command queued, oldest first, with `state` pending | delivered | done |
  superseded | dropped, `delivery_count`, `delivered_at`, `completed_at`);
  `command_results`, `progress`, `changestates`, `actions` (what was received, in arrival order,
  each with `received_at` in epoch seconds; a command result whose `result_detail.result_key`
  its source already sent is not stored again but counted in that result's `duplicates`);
  `duplicate_results` (the sum of those counts);
  `requests` (per `METHOD /route/{param}`: `count`, `statuses` by code, `at` epoch seconds;
  status 0 is a connection reset); `faults`, `faults_injected`, `options`; with an object store
  (`--obs-port`), `obs`: its `url`, `region`, `buckets` (each `denied` or not, with its
  `objects`: `key`, `size`, `etag`) and `requests` (`method`, `path`, `status`, `code`, `at`).
* `GET /_emulator/faults` -> the fault settings.
* `PUT /_emulator/faults` with `latency_s`, `error_rate` (0..1), `error_status` (500 | 503),
  `retry_after_s` (integer seconds, default 1; null for no header), `reset_rate`, `malformed_rate`,
  `expire_tokens`, `path_pattern` (regex on the path), `max_faults` (stop after this many) ->
  the new settings. The body replaces the settings: fields left out are off.
* `POST /_emulator/reset` -> `{}`: every source, task, command, journal and request count is
  forgotten and the faults go back to the start-up flags.
* `POST /_emulator/tasks` with a CreateTask body -> `{"id"}`, as `POST /v3/tasks`.
* `PATCH /_emulator/tasks/{task_id}` with an object of task fields -> the task as ShowTask
  shows it. Each field is set as given, any name (e.g. `type: "FSCOPY_TEST"` or a plugin's own
  fields); null removes a field; `id` and `source_server` cannot be set.
* `POST /_emulator/tasks/{task_id}/action` with `{"operation"}` -> `{}`, as the SMS action.
* `PUT /_emulator/tasks/{task_id}/certkey` with the ShowCertKey fields (`private_key`, `cert`,
  `ca`, `target_*`) and an optional `passphrase` -> `{}`.
* `POST /_emulator/sources/{source_id}/command` with `{"command_name", "command_param"}` -> the
  queued command (any command, e.g. `UPLOAD_LOG` or `TASK_HAS_FINISHED`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from smsagent.api.enums import CommandName
from smsagent.api.models import PostTask, UpdateTaskStatusReq
from smsagent.emulator.app import body_of, ok, path_id
from smsagent.emulator.faults import FaultSettings
from smsagent.emulator.runtime import Emulator
from smsagent.emulator.taskdata import CertKeyUpdate

PREFIX = "/_emulator"


class QueuedCommand(BaseModel):
    """Body of `POST /_emulator/sources/{id}/command`."""

    model_config = ConfigDict(extra="forbid")

    command_name: CommandName
    command_param: dict[str, Any] = Field(default_factory=dict)


class TaskFields(RootModel[dict[str, Any]]):
    """Body of `PATCH /_emulator/tasks/{id}`: any JSON object."""


class AdminRoutes:
    """Routes that inspect and steer one `Emulator`."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    def routes(self) -> list[web.RouteDef]:
        """Every admin route, to add to an application."""
        return [
            web.get(PREFIX + "/health", self.health),
            web.get(PREFIX + "/state", self.state),
            web.get(PREFIX + "/faults", self.show_faults),
            web.put(PREFIX + "/faults", self.set_faults),
            web.post(PREFIX + "/reset", self.reset),
            web.post(PREFIX + "/tasks", self.create_task),
            web.patch(PREFIX + "/tasks/{task_id}", self.patch_task),
            web.post(PREFIX + "/tasks/{task_id}/action", self.action),
            web.put(PREFIX + "/tasks/{task_id}/certkey", self.set_cert_key),
            web.post(PREFIX + "/sources/{source_id}/command", self.queue_command),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return ok({"status": "ok"})

    async def state(self, request: web.Request) -> web.Response:
        return ok(self._emulator.state())

    async def show_faults(self, request: web.Request) -> web.Response:
        return ok(self._emulator.faults.settings.model_dump(mode="json"))

    async def set_faults(self, request: web.Request) -> web.Response:
        self._emulator.set_faults(await body_of(request, FaultSettings))
        return await self.show_faults(request)

    async def reset(self, request: web.Request) -> web.Response:
        self._emulator.reset()
        return ok({})

    async def create_task(self, request: web.Request) -> web.Response:
        return ok(self._emulator.plane.create_task(await body_of(request, PostTask)))

    async def patch_task(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, TaskFields)
        return ok(self._emulator.plane.override_task(task_id, body.root))

    async def action(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, UpdateTaskStatusReq)
        return ok(self._emulator.plane.action(task_id, body))

    async def set_cert_key(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, CertKeyUpdate)
        return ok(self._emulator.plane.set_cert_key(task_id, body))

    async def queue_command(self, request: web.Request) -> web.Response:
        source_id = path_id(request, "source_id")
        body = await body_of(request, QueuedCommand)
        return ok(
            self._emulator.plane.queue_command(source_id, body.command_name, body.command_param)
        )
