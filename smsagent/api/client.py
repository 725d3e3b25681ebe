"""`SmsClient`: one typed async method per SMS v3 endpoint, over one aiohttp session."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Optional, TypeVar, Union
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError
from yarl import URL

from smsagent import __version__
from smsagent.api.auth import Credentials
from smsagent.api.body import MAX_RESPONSE_BYTES, read_capped
from smsagent.api.enums import ConfigKey
from smsagent.api.errors import (
    MalformedResponse,
    ResponseTooLarge,
    TransportError,
    describe_exception,
    error_from_response,
    parse_http_date,
)
from smsagent.api.models import (
    CommandBody,
    ConfigurationRequestBody,
    IdResponse,
    ListServersResponse,
    ListTasksResponse,
    NetworkCheckInfoRequestBody,
    PostSourceServerBody,
    PostTask,
    PrivacyAgreementsResponse,
    PutCopyStateReq,
    PutDiskInfoReq,
    PutTaskReq,
    RequestModel,
    SetConsistencyResultRequestBody,
    ShowCertKeyResponse,
    ShowCommandResponse,
    ShowConfigResponse,
    ShowConfigSettingResponse,
    ShowPassphraseResponse,
    ShowSpeedLimitsResponse,
    SourceServer,
    SpeedLimit,
    Task,
    TaskIdResponse,
    UpdateTaskSpeedReq,
    UpdateTaskStatusReq,
)
from smsagent.api.proxy import ProxyRoutes
from smsagent.api.signing import canonical_query_string, query_pairs

log = structlog.get_logger()

JSON: Final = "application/json"
# What the SDK sends for the three operations declared `application/json;charset=UTF-8`: it
# lower-cases the declared type before sending.
JSON_UTF8: Final = "application/json;charset=utf-8"

# Credentials whose refusal may be cured by fetching a new token.
_RENEWABLE_MODES: Final = frozenset({"token", "iam"})

ModelT = TypeVar("ModelT", bound=BaseModel)


def _segment(name: str, value: str) -> str:
    """A path parameter, percent-encoded as one segment (the SDK quotes with no safe chars)."""
    if not value:
        msg = f"{name} must not be empty"
        raise ValueError(msg)
    return quote(value, safe="")


def _validate_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        msg = f"endpoint {endpoint!r} is not an http(s) URL without a query"
        raise ValueError(msg)
    return endpoint.rstrip("/")


class SmsClient:
    """The SMS v3 API as typed async methods; use as `async with SmsClient(...) as client`.

    Every failure raises an `SmsError` subclass whose `action` tells the caller what to do.
    Only a 2xx is a success; redirects are refused, never followed. With token credentials a
    401 drops the token and the request is sent once more.

    Args:
        endpoint: the SMS endpoint, e.g. `https://sms.ap-southeast-3.myhuaweicloud.com`.
        credentials: how requests are authenticated.
        connect_timeout_s: limit for getting a connection.
        read_timeout_s: limit for each read of the response.
        verify_tls: check the server certificate and host name.
        ca_bundle: a PEM file of extra trusted CAs, added to the system store.
        proxy: proxy URL; when None, `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` apply.
        user_agent: the `User-Agent` header.
        max_response_bytes: the largest response body read; a longer one is refused.
    """

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        verify_tls: bool = True,
        ca_bundle: Optional[Path] = None,
        proxy: Optional[str] = None,
        user_agent: str = f"smsagent/{__version__}",
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._base: Final = _validate_endpoint(endpoint)
        self._credentials: Final = credentials
        self._timeout: Final = aiohttp.ClientTimeout(
            total=connect_timeout_s + read_timeout_s,
            connect=connect_timeout_s,
            sock_read=read_timeout_s,
        )
        self._verify_tls: Final = verify_tls
        self._ca_bundle: Final = ca_bundle
        self._routes: Final = ProxyRoutes(proxy)
        self._user_agent: Final = user_agent
        self._max_response_bytes: Final = max_response_bytes
        self._session: Optional[aiohttp.ClientSession] = None
        self.request_count = 0
        self.last_server_date: Optional[datetime] = None
        """The `Date` header of the last response, to measure the local clock's skew."""

    def __repr__(self) -> str:
        return f"SmsClient(endpoint={self._base!r}, credentials={self._credentials!r})"

    @property
    def endpoint(self) -> str:
        return self._base

    async def __aenter__(self) -> SmsClient:
        connector = aiohttp.TCPConnector(ssl=self._ssl_context())
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._credentials.attach(self._session, self._routes)
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session; the client cannot be used afterwards."""
        self._credentials.attach(None)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ssl_context(self) -> Union[ssl.SSLContext, bool]:
        """What the connector verifies TLS with.

        Without a CA bundle this is aiohttp's own context (`True`: the system store, host name
        checked; `False`: nothing checked), which aiohttp builds once at import: a context of
        our own would load the system store a second time, about 0.7 MB the agent holds for
        its whole life. A CA bundle needs its own context: the system store plus the bundle.
        """
        if not self._verify_tls:
            return False
        if self._ca_bundle is None:
            return True
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=str(self._ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            msg = f"ca_bundle {self._ca_bundle}: cannot load: {exc}"
            raise ValueError(msg) from exc
        return context

    # One request

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Optional[RequestModel] = None,
        query: Optional[Mapping[str, object]] = None,
        content_type: str = JSON,
    ) -> bytes:
        """Send one request and return the body of a success (2xx).

        Raises:
            SmsError: a subclass chosen by what failed.
        """
        payload = b"" if body is None else json.dumps(body.to_wire()).encode("utf-8")
        query_string = canonical_query_string(query_pairs(query or {}))
        url = self._base + path + (f"?{query_string}" if query_string else "")
        headers = {"Content-Type": content_type, "User-Agent": self._user_agent}
        status, response_headers, raw = await self._send(method, path, url, headers, payload)
        if status == 401 and self._credentials.mode in _RENEWABLE_MODES:
            await self._credentials.invalidate()
            status, response_headers, raw = await self._send(method, path, url, headers, payload)
        if not 200 <= status < 300:
            raise error_from_response(status, response_headers, raw, method, path)
        return raw

    async def _send(
        self, method: str, path: str, url: str, headers: dict[str, str], payload: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        session = self._session
        if session is None:
            msg = "SmsClient is not open; use it as `async with SmsClient(...) as client`"
            raise RuntimeError(msg)
        headers = {**headers, **await self._credentials.headers_for(method, url, headers, payload)}
        self.request_count += 1
        started = time.monotonic()
        proxy, proxy_auth = self._routes.for_url(url)
        try:
            async with session.request(
                method,
                # Sent exactly as signed: yarl must not re-encode the path or the query.
                URL(url, encoded=True),
                data=payload or None,
                headers=headers,
                proxy=proxy,
                proxy_auth=proxy_auth,
                allow_redirects=False,
            ) as response:
                status, response_headers = response.status, response.headers
                self.last_server_date = parse_http_date(response_headers.get("Date"))
                raw = await read_capped(response, self._max_response_bytes)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransportError(
                method=method, path=path, error_msg=describe_exception(exc)
            ) from exc
        log.debug(
            "sms_request",
            method=method,
            path=path,
            status=status,
            elapsed_ms=round((time.monotonic() - started) * 1000),
            request_id=response_headers.get("X-Request-Id"),
        )
        if raw is None:
            raise ResponseTooLarge(
                method=method,
                path=path,
                limit_bytes=self._max_response_bytes,
                status=status,
                server_date=self.last_server_date,
            )
        return status, response_headers, raw

    async def _fetch(
        self,
        model: type[ModelT],
        method: str,
        path: str,
        *,
        body: Optional[RequestModel] = None,
        query: Optional[Mapping[str, object]] = None,
        content_type: str = JSON,
    ) -> ModelT:
        raw = await self._call(method, path, body=body, query=query, content_type=content_type)
        return _parse(model, raw, method, path)

    # Agent-side operations (spec §3.1-3.18)

    async def show_config(self) -> ShowConfigResponse:
        """GET /v3/config: agent configuration and regions."""
        return await self._fetch(ShowConfigResponse, "GET", "/v3/config")

    async def show_privacy_agreements(self) -> PrivacyAgreementsResponse:
        """GET /v3/privacy-agreements: whether the user has agreed."""
        return await self._fetch(PrivacyAgreementsResponse, "GET", "/v3/privacy-agreements")

    async def create_privacy_agreements(self) -> None:
        """POST /v3/privacy-agreements: record the user's agreement."""
        await self._call("POST", "/v3/privacy-agreements")

    async def register_server(self, body: PostSourceServerBody) -> IdResponse:
        """POST /v3/sources: register or re-report this server; answers its source id."""
        return await self._fetch(IdResponse, "POST", "/v3/sources", body=body)

    async def show_server(self, source_id: str) -> SourceServer:
        """GET /v3/sources/{source_id}."""
        path = f"/v3/sources/{_segment('source_id', source_id)}"
        return await self._fetch(SourceServer, "GET", path)

    async def update_disk_info(self, source_id: str, body: PutDiskInfoReq) -> None:
        """PUT /v3/sources/{source_id}/diskinfo: replace the stored disks."""
        path = f"/v3/sources/{_segment('source_id', source_id)}/diskinfo"
        await self._call("PUT", path, body=body)

    async def show_command(self, server_id: str) -> ShowCommandResponse:
        """GET /v3/sources/{server_id}/command: the pending command, if any."""
        path = f"/v3/sources/{_segment('server_id', server_id)}/command"
        return await self._fetch(ShowCommandResponse, "GET", path)

    async def update_command_result(self, server_id: str, body: CommandBody) -> None:
        """POST /v3/sources/{server_id}/command_result."""
        path = f"/v3/sources/{_segment('server_id', server_id)}/command_result"
        await self._call("POST", path, body=body)

    async def update_copy_state(self, source_id: str, body: PutCopyStateReq) -> None:
        """PUT /v3/sources/{source_id}/changestate."""
        path = f"/v3/sources/{_segment('source_id', source_id)}/changestate"
        await self._call("PUT", path, body=body)

    async def show_task(self, task_id: str) -> Task:
        """GET /v3/tasks/{task_id}."""
        return await self._fetch(Task, "GET", _task_path(task_id))

    async def update_task(self, task_id: str, body: PutTaskReq) -> IdResponse:
        """PUT /v3/tasks/{task_id}."""
        return await self._fetch(IdResponse, "PUT", _task_path(task_id), body=body)

    async def update_task_speed(self, task_id: str, body: UpdateTaskSpeedReq) -> None:
        """PUT /v3/tasks/{task_id}/progress: report a subtask's progress."""
        await self._call("PUT", _task_path(task_id, "progress"), body=body)

    async def update_task_status(self, task_id: str, body: UpdateTaskStatusReq) -> None:
        """POST /v3/tasks/{task_id}/action."""
        await self._call("POST", _task_path(task_id, "action"), body=body)

    async def show_cert_key(
        self, task_id: str, enable_ca_cert: Optional[bool] = None
    ) -> ShowCertKeyResponse:
        """GET /v3/tasks/{task_id}/certkey[?enable_ca_cert=]: PEM material for the transfer."""
        query = {"enable_ca_cert": enable_ca_cert}
        return await self._fetch(
            ShowCertKeyResponse, "GET", _task_path(task_id, "certkey"), query=query
        )

    async def show_passphrase(self, task_id: str) -> ShowPassphraseResponse:
        """GET /v3/tasks/{task_id}/passphrase."""
        return await self._fetch(ShowPassphraseResponse, "GET", _task_path(task_id, "passphrase"))

    async def shows_speed_limits(self, task_id: str) -> ShowSpeedLimitsResponse:
        """GET /v3/tasks/{task_id}/speed-limit."""
        return await self._fetch(ShowSpeedLimitsResponse, "GET", _task_path(task_id, "speed-limit"))

    async def update_speed(self, task_id: str, body: SpeedLimit) -> None:
        """POST /v3/tasks/{task_id}/speed-limit."""
        await self._call("POST", _task_path(task_id, "speed-limit"), body=body)

    async def show_config_setting(
        self, task_id: str, config_key: Union[ConfigKey, str, None] = None
    ) -> ShowConfigSettingResponse:
        """GET /v3/tasks/{task_id}/configuration-setting[?config_key=]."""
        path = _task_path(task_id, "configuration-setting")
        query = {"config_key": config_key}
        return await self._fetch(ShowConfigSettingResponse, "GET", path, query=query)

    async def upload_special_configuration_setting(
        self, task_id: str, body: ConfigurationRequestBody
    ) -> None:
        """POST /v3/tasks/{task_id}/configuration-setting."""
        path = _task_path(task_id, "configuration-setting")
        await self._call("POST", path, body=body, content_type=JSON_UTF8)

    async def update_network_check_info(
        self, task_id: str, body: NetworkCheckInfoRequestBody
    ) -> TaskIdResponse:
        """POST /v3/{task_id}/update-network-check-info (no `/tasks/` segment)."""
        path = f"/v3/{_segment('task_id', task_id)}/update-network-check-info"
        return await self._fetch(TaskIdResponse, "POST", path, body=body, content_type=JSON_UTF8)

    async def update_consistency_result(
        self, task_id: str, body: SetConsistencyResultRequestBody
    ) -> None:
        """POST /v3/tasks/{task_id}/consistency-result."""
        path = _task_path(task_id, "consistency-result")
        await self._call("POST", path, body=body, content_type=JSON_UTF8)

    # Console-side operations (spec §3.22)

    async def list_servers(self, **query: object) -> ListServersResponse:
        """GET /v3/sources with filters such as `name`, `state`, `limit`, `offset`."""
        return await self._fetch(ListServersResponse, "GET", "/v3/sources", query=query)

    async def create_task(self, body: PostTask) -> IdResponse:
        """POST /v3/tasks."""
        return await self._fetch(IdResponse, "POST", "/v3/tasks", body=body)

    async def list_tasks(self, **query: object) -> ListTasksResponse:
        """GET /v3/tasks with filters such as `source_server_id`, `state`, `limit`."""
        return await self._fetch(ListTasksResponse, "GET", "/v3/tasks", query=query)

    async def delete_task(self, task_id: str) -> None:
        """DELETE /v3/tasks/{task_id}."""
        await self._call("DELETE", _task_path(task_id))


def _task_path(task_id: str, action: Optional[str] = None) -> str:
    path = f"/v3/tasks/{_segment('task_id', task_id)}"
    return f"{path}/{action}" if action else path


def _parse(model: type[ModelT], raw: bytes, method: str, path: str) -> ModelT:
    """Validate a success body; an empty body or JSON null reads as `{}`.

    Raises:
        MalformedResponse: the body is not a JSON object or does not fit `model`. The message
            names the fields but never repeats their values (they may be keys or passphrases).
    """

    def malformed(reason: str) -> MalformedResponse:
        return MalformedResponse(method=method, path=path, error_msg=reason)

    try:
        document = json.loads(raw) if raw.strip() else None
    except ValueError:
        raise malformed("the response body is not JSON") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise malformed(f"the response body is a JSON {type(document).__name__}, not an object")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise malformed(
            f"the response body does not fit {model.__name__}: {_fields(exc)}"
        ) from None


def _fields(exc: ValidationError) -> str:
    problems = exc.errors(include_input=False, include_url=False, include_context=False)
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
        for problem in problems[:5]
    )
