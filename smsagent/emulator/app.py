"""The SMS v3 routes: path and body parsing around the control plane (spec §3.1-3.19, §3.22).

Every body is validated with the wire models of `smsagent.api.models`; path ids must be 1..255
characters of `A-Z a-z 0-9 _ -`. Operations without a payload answer `{}`, which the official SDK
reads as an empty response.
"""

from __future__ import annotations

import re
from typing import Annotated, Optional, TypeVar

from aiohttp import web
from pydantic import BaseModel, StringConstraints, ValidationError

from smsagent.api.enums import ConfigKey
from smsagent.api.models import (
    CommandBody,
    ConfigurationRequestBody,
    NetworkCheckInfoRequestBody,
    PostSourceServerBody,
    PostTask,
    PutCopyStateReq,
    PutDiskInfoReq,
    PutTaskReq,
    RequestModel,
    SetConsistencyResultRequestBody,
    SpeedLimit,
    UpdateTaskSpeedReq,
    UpdateTaskStatusReq,
)
from smsagent.emulator.control import ControlPlane
from smsagent.emulator.errors import from_validation, invalid
from smsagent.emulator.queries import ListServersQuery, ListTasksQuery, parse_query

PATH_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


class CollectLogBody(RequestModel):
    """Body of CollectLog, `POST /v3/tasks/{id}/log` (spec §3.19)."""

    log_bucket: Annotated[str, StringConstraints(min_length=1, max_length=255)]


ModelT = TypeVar("ModelT", bound=BaseModel)


def path_id(request: web.Request, name: str) -> str:
    """A path parameter that must be an id; anything else is a 400 naming the parameter."""
    value = request.match_info[name]
    if PATH_ID.fullmatch(value) is None:
        raise invalid(name, "must be 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-'")
    return value


async def body_of(request: web.Request, model: type[ModelT]) -> ModelT:
    """The request body validated as `model`; bad JSON or a bad field is a 400 naming it."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation(exc) from exc


def ok(body: dict[str, object]) -> web.Response:
    """A 200 answer with a JSON body."""
    return web.json_response(body)


class SmsRoutes:
    """The SMS endpoints the emulator serves, each a thin call into the control plane."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def routes(self) -> list[web.RouteDef]:
        """Every SMS route, to add to an application."""
        tasks = "/v3/tasks/{task_id}"
        sources = "/v3/sources/{source_id}"
        return [
            web.get("/v3/config", self.show_config),
            web.get("/v3/privacy-agreements", self.show_privacy),
            web.post("/v3/privacy-agreements", self.agree_privacy),
            web.post("/v3/sources", self.register),
            web.get("/v3/sources", self.list_sources),
            web.get(sources, self.show_source),
            web.delete(sources, self.delete_source),
            web.put(sources + "/diskinfo", self.update_disks),
            web.put(sources + "/changestate", self.change_state),
            web.get("/v3/sources/{server_id}/command", self.show_command),
            web.post("/v3/sources/{server_id}/command_result", self.command_result),
            web.post("/v3/tasks", self.create_task),
            web.get("/v3/tasks", self.list_tasks),
            web.get(tasks, self.show_task),
            web.put(tasks, self.update_task),
            web.delete(tasks, self.delete_task),
            web.put(tasks + "/progress", self.update_progress),
            web.post(tasks + "/action", self.action),
            web.get(tasks + "/certkey", self.show_cert_key),
            web.get(tasks + "/passphrase", self.show_passphrase),
            web.post("/v3/{task_id}/update-network-check-info", self.network_check),
            web.get(tasks + "/speed-limit", self.show_speed_limits),
            web.post(tasks + "/speed-limit", self.update_speed_limits),
            web.get(tasks + "/configuration-setting", self.show_configurations),
            web.post(tasks + "/configuration-setting", self.update_configurations),
            web.get(tasks + "/consistency-result", self.show_consistency),
            web.post(tasks + "/consistency-result", self.update_consistency),
            web.post(tasks + "/log", self.collect_log),
        ]

    async def show_config(self, request: web.Request) -> web.Response:
        return ok(self._plane.show_config())

    async def show_privacy(self, request: web.Request) -> web.Response:
        return ok(self._plane.privacy_flag())

    async def agree_privacy(self, request: web.Request) -> web.Response:
        return ok(self._plane.agree_privacy())

    async def register(self, request: web.Request) -> web.Response:
        return ok(self._plane.register(await body_of(request, PostSourceServerBody)))

    async def list_sources(self, request: web.Request) -> web.Response:
        return ok(self._plane.list_sources(parse_query(ListServersQuery, request.query)))

    async def show_source(self, request: web.Request) -> web.Response:
        return ok(self._plane.show_source(path_id(request, "source_id")))

    async def delete_source(self, request: web.Request) -> web.Response:
        return ok(self._plane.delete_source(path_id(request, "source_id")))

    async def update_disks(self, request: web.Request) -> web.Response:
        source_id = path_id(request, "source_id")
        return ok(self._plane.update_disks(source_id, await body_of(request, PutDiskInfoReq)))

    async def change_state(self, request: web.Request) -> web.Response:
        source_id = path_id(request, "source_id")
        return ok(self._plane.change_state(source_id, await body_of(request, PutCopyStateReq)))

    async def show_command(self, request: web.Request) -> web.Response:
        return ok(self._plane.poll_command(path_id(request, "server_id")))

    async def command_result(self, request: web.Request) -> web.Response:
        server_id = path_id(request, "server_id")
        return ok(self._plane.command_result(server_id, await body_of(request, CommandBody)))

    async def create_task(self, request: web.Request) -> web.Response:
        return ok(self._plane.create_task(await body_of(request, PostTask)))

    async def list_tasks(self, request: web.Request) -> web.Response:
        return ok(self._plane.list_tasks(parse_query(ListTasksQuery, request.query)))

    async def show_task(self, request: web.Request) -> web.Response:
        return ok(self._plane.show_task(path_id(request, "task_id")))

    async def update_task(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        return ok(self._plane.update_task(task_id, await body_of(request, PutTaskReq)))

    async def delete_task(self, request: web.Request) -> web.Response:
        return ok(self._plane.delete_task(path_id(request, "task_id")))

    async def update_progress(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, UpdateTaskSpeedReq)
        return ok(self._plane.record_progress(task_id, body))

    async def action(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        return ok(self._plane.action(task_id, await body_of(request, UpdateTaskStatusReq)))

    async def show_cert_key(self, request: web.Request) -> web.Response:
        return ok(self._plane.cert_key(path_id(request, "task_id")))

    async def show_passphrase(self, request: web.Request) -> web.Response:
        return ok(self._plane.passphrase(path_id(request, "task_id")))

    async def network_check(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, NetworkCheckInfoRequestBody)
        return ok(self._plane.network_check(task_id, body))

    async def show_speed_limits(self, request: web.Request) -> web.Response:
        return ok(self._plane.speed_limits(path_id(request, "task_id")))

    async def update_speed_limits(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        return ok(self._plane.set_speed_limits(task_id, await body_of(request, SpeedLimit)))

    async def show_configurations(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        return ok(self._plane.configurations(task_id, _config_key(request)))

    async def update_configurations(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, ConfigurationRequestBody)
        return ok(self._plane.set_configurations(task_id, body))

    async def show_consistency(self, request: web.Request) -> web.Response:
        return ok(self._plane.consistency(path_id(request, "task_id")))

    async def update_consistency(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, SetConsistencyResultRequestBody)
        return ok(self._plane.set_consistency(task_id, body))

    async def collect_log(self, request: web.Request) -> web.Response:
        task_id = path_id(request, "task_id")
        body = await body_of(request, CollectLogBody)
        return ok(self._plane.collect_log(task_id, body.log_bucket))


def _config_key(request: web.Request) -> Optional[str]:
    value = request.query.get("config_key")
    if value is None:
        return None
    try:
        return ConfigKey(value).value
    except ValueError:
        raise invalid("config_key", f"not one of {', '.join(k.value for k in ConfigKey)}") from None
