"""`SmsClient` against a real HTTP server: what goes on the wire and how failures come back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from aiohttp import web
from pydantic import SecretStr

from smsagent import __version__
from smsagent.api.auth import (
    AkSkCredentials,
    Credentials,
    IamTokenCredentials,
    TokenCredentials,
)
from smsagent.api.client import SmsClient
from smsagent.api.enums import (
    CommandName,
    CommandResult,
    ConfigKey,
    CopyState,
    MigrationCycle,
    OsType,
    SubtaskName,
    TaskOperation,
    TaskType,
)
from smsagent.api.errors import (
    AuthError,
    ClientError,
    ErrorAction,
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    ServerError,
    SmsError,
    TransportError,
)
from smsagent.api.models import (
    CommandBody,
    ConfigBody,
    ConfigurationRequestBody,
    ConsistencyResult,
    NetworkCheckInfoRequestBody,
    PostSourceServerBody,
    PostTask,
    PutCopyStateReq,
    PutDiskInfoReq,
    PutTaskReq,
    SetConsistencyResultRequestBody,
    SourceServerByTask,
    SpeedLimit,
    SpeedLimitWindow,
    UpdateTaskSpeedReq,
    UpdateTaskStatusReq,
)
from smsagent.api.signing import verify
from tests.support.sms_http import Clock, FakeService, IamIssuer, Recorded, serve_fake

AK = "AKEXAMPLE1234567890A"
SK = "SKEXAMPLESKEXAMPLESKEXAMPLESKEXAMPLE"
TOKEN = "MIIT0KEN-never-shown"

SERVER = PostSourceServerBody(
    name="web01", os_type=OsType.LINUX, os_version="Debian 12 64bit", agent_version="0.1.0"
)
NETWORK_CHECK = NetworkCheckInfoRequestBody(
    network_delay=1.5,
    network_jitter=0.2,
    migration_speed=100.0,
    loss_percentage=0.0,
    cpu_usage=10.0,
    mem_usage=20.0,
    evaluation_result="success",
)


def _client(url: str, credentials: Credentials | None = None, **kwargs: Any) -> SmsClient:
    return SmsClient(url, credentials or AkSkCredentials(AK, SecretStr(SK)), **kwargs)


@pytest.fixture
async def client(service: FakeService) -> AsyncIterator[SmsClient]:
    async with _client(service.url) as sms:
        yield sms


def _assert_signed(request: Recorded) -> None:
    """The gateway-side verifier accepts the request exactly as it arrived."""
    access = verify(
        method=request.method,
        path=request.raw_path,
        raw_query=request.raw_query,
        headers=request.headers,
        body=request.body,
        secret_for={AK: SK}.get,
        now=datetime.now(timezone.utc),
    )
    assert access == AK


async def _ok_with_ids(request: web.Request, _: bytes) -> web.StreamResponse:
    return web.json_response({"id": "id-1", "task_id": "t-1"})


Call = Callable[[SmsClient], Awaitable[object]]

# Every operation: how to call it, and the method, raw path, query and content type it must send.
ENDPOINTS: list[tuple[str, Call, str, str, str, str]] = [
    ("show_config", lambda c: c.show_config(), "GET", "/v3/config", "", "application/json"),
    (
        "show_privacy_agreements",
        lambda c: c.show_privacy_agreements(),
        "GET",
        "/v3/privacy-agreements",
        "",
        "application/json",
    ),
    (
        "create_privacy_agreements",
        lambda c: c.create_privacy_agreements(),
        "POST",
        "/v3/privacy-agreements",
        "",
        "application/json",
    ),
    (
        "register_server",
        lambda c: c.register_server(SERVER),
        "POST",
        "/v3/sources",
        "",
        "application/json",
    ),
    (
        "show_server",
        lambda c: c.show_server("s-1"),
        "GET",
        "/v3/sources/s-1",
        "",
        "application/json",
    ),
    (
        "update_disk_info",
        lambda c: c.update_disk_info("s-1", PutDiskInfoReq(disks=[])),
        "PUT",
        "/v3/sources/s-1/diskinfo",
        "",
        "application/json",
    ),
    (
        "show_command",
        lambda c: c.show_command("s-1"),
        "GET",
        "/v3/sources/s-1/command",
        "",
        "application/json",
    ),
    (
        "update_command_result",
        lambda c: c.update_command_result(
            "s-1", CommandBody(command_name=CommandName.START, result=CommandResult.success)
        ),
        "POST",
        "/v3/sources/s-1/command_result",
        "",
        "application/json",
    ),
    (
        "update_copy_state",
        lambda c: c.update_copy_state(
            "s-1",
            PutCopyStateReq(
                copystate=CopyState.replicate, migrationcycle=MigrationCycle.replicating
            ),
        ),
        "PUT",
        "/v3/sources/s-1/changestate",
        "",
        "application/json",
    ),
    ("show_task", lambda c: c.show_task("t-1"), "GET", "/v3/tasks/t-1", "", "application/json"),
    (
        "update_task",
        lambda c: c.update_task("t-1", PutTaskReq(image_disk_id="d-1")),
        "PUT",
        "/v3/tasks/t-1",
        "",
        "application/json",
    ),
    (
        "update_task_speed",
        lambda c: c.update_task_speed(
            "t-1",
            UpdateTaskSpeedReq(
                subtask_name=SubtaskName.MIGRATE_LINUX_FILE,
                progress=50,
                replicatesize=1,
                totalsize=2,
                process_trace="",
            ),
        ),
        "PUT",
        "/v3/tasks/t-1/progress",
        "",
        "application/json",
    ),
    (
        "update_task_status",
        lambda c: c.update_task_status(
            "t-1", UpdateTaskStatusReq(operation=TaskOperation.error_for_overspeed)
        ),
        "POST",
        "/v3/tasks/t-1/action",
        "",
        "application/json",
    ),
    (
        "show_cert_key",
        lambda c: c.show_cert_key("t-1", enable_ca_cert=True),
        "GET",
        "/v3/tasks/t-1/certkey",
        "enable_ca_cert=true",
        "application/json",
    ),
    (
        "show_passphrase",
        lambda c: c.show_passphrase("t-1"),
        "GET",
        "/v3/tasks/t-1/passphrase",
        "",
        "application/json",
    ),
    (
        "shows_speed_limits",
        lambda c: c.shows_speed_limits("t-1"),
        "GET",
        "/v3/tasks/t-1/speed-limit",
        "",
        "application/json",
    ),
    (
        "update_speed",
        lambda c: c.update_speed(
            "t-1", SpeedLimit(speed_limit=[SpeedLimitWindow(start="00:00", end="23:59", speed=10)])
        ),
        "POST",
        "/v3/tasks/t-1/speed-limit",
        "",
        "application/json",
    ),
    (
        "show_config_setting",
        lambda c: c.show_config_setting("t-1", ConfigKey.LINUX_CPU_LIMIT),
        "GET",
        "/v3/tasks/t-1/configuration-setting",
        "config_key=LINUX_CPU_LIMIT",
        "application/json",
    ),
    (
        "upload_special_configuration_setting",
        lambda c: c.upload_special_configuration_setting(
            "t-1",
            ConfigurationRequestBody(
                configurations=[ConfigBody(config_key=ConfigKey.LINUX_CPU_LIMIT, config_value="60")]
            ),
        ),
        "POST",
        "/v3/tasks/t-1/configuration-setting",
        "",
        "application/json;charset=utf-8",
    ),
    (
        "update_network_check_info",
        lambda c: c.update_network_check_info("t-1", NETWORK_CHECK),
        "POST",
        "/v3/t-1/update-network-check-info",
        "",
        "application/json;charset=utf-8",
    ),
    (
        "update_consistency_result",
        lambda c: c.update_consistency_result(
            "t-1",
            SetConsistencyResultRequestBody(
                consistency_result=[
                    ConsistencyResult(
                        dir_check="/srv",
                        num_total_files=3,
                        num_different_files=0,
                        num_target_miss_files=0,
                        num_target_more_files=0,
                    )
                ]
            ),
        ),
        "POST",
        "/v3/tasks/t-1/consistency-result",
        "",
        "application/json;charset=utf-8",
    ),
    (
        "list_servers",
        lambda c: c.list_servers(name="web 01", limit=10, connected=False),
        "GET",
        "/v3/sources",
        "connected=false&limit=10&name=web%2001",
        "application/json",
    ),
    (
        "create_task",
        lambda c: c.create_task(
            PostTask(
                name="t",
                type=TaskType.MIGRATE_FILE,
                source_server=SourceServerByTask(id="s-1"),
                region_name="r",
                region_id="r",
                project_name="p",
                project_id="p",
            )
        ),
        "POST",
        "/v3/tasks",
        "",
        "application/json",
    ),
    (
        "list_tasks",
        lambda c: c.list_tasks(source_server_id="s-1", state=None),
        "GET",
        "/v3/tasks",
        "source_server_id=s-1",
        "application/json",
    ),
    (
        "delete_task",
        lambda c: c.delete_task("t-1"),
        "DELETE",
        "/v3/tasks/t-1",
        "",
        "application/json",
    ),
]


class TestWire:
    @pytest.mark.parametrize(
        ("call", "method", "path", "query", "content_type"),
        [entry[1:] for entry in ENDPOINTS],
        ids=[entry[0] for entry in ENDPOINTS],
    )
    async def test_each_operation_sends_its_method_path_and_type(
        self,
        service: FakeService,
        client: SmsClient,
        call: Call,
        method: str,
        path: str,
        query: str,
        content_type: str,
    ) -> None:
        """Each method hits the spec's method, path, query and content type, correctly signed."""
        service.default = _ok_with_ids
        await call(client)
        [request] = service.requests
        assert (request.method, request.raw_path, request.raw_query) == (method, path, query)
        assert request.headers["Content-Type"] == content_type
        _assert_signed(request)

    async def test_register_sends_the_wire_body_and_reads_the_id(
        self, service: FakeService, client: SmsClient
    ) -> None:
        service.reply("POST", "/v3/sources", 200, {"id": "src-9"})
        answer = await client.register_server(SERVER)
        assert answer.id == "src-9"
        [request] = service.requests
        assert json.loads(request.body) == SERVER.to_wire()
        assert request.headers["User-Agent"] == f"smsagent/{__version__}"
        assert client.request_count == 1

    async def test_path_ids_are_encoded_as_one_segment(
        self, service: FakeService, client: SmsClient
    ) -> None:
        """An id with a space or a slash stays one path segment and still verifies."""
        service.default = _ok_with_ids
        await client.show_command("a b/c")
        [request] = service.requests
        assert request.raw_path == "/v3/sources/a%20b%2Fc/command"
        _assert_signed(request)

    async def test_empty_id_is_refused_before_sending(
        self, service: FakeService, client: SmsClient
    ) -> None:
        with pytest.raises(ValueError, match="task_id must not be empty"):
            await client.show_task("")
        assert service.requests == []

    @pytest.mark.parametrize("body", [b"", b"{}", b"null", b'"ok"'])
    async def test_bodiless_answers_are_accepted(
        self, service: FakeService, client: SmsClient, body: bytes
    ) -> None:
        """Operations without a payload accept an empty body, `{}`, null or a message."""
        service.reply("POST", "/v3/sources/s-1/command_result", 200, body)
        await client.update_command_result(
            "s-1", CommandBody(command_name=CommandName.STOP, result=CommandResult.success)
        )
        assert len(service.requests) == 1

    @pytest.mark.parametrize("body", [b"", b"{}"])
    async def test_no_pending_command_reads_as_empty(
        self, service: FakeService, client: SmsClient, body: bytes
    ) -> None:
        service.reply("GET", "/v3/sources/s-1/command", 200, body)
        command = await client.show_command("s-1")
        assert (command.command_name, command.command_param) == (None, None)

    async def test_a_command_is_parsed(self, service: FakeService, client: SmsClient) -> None:
        service.reply(
            "GET",
            "/v3/sources/s-1/command",
            200,
            {"command_name": "START", "command_param": {"task_id": "t-1"}, "future": 1},
        )
        command = await client.show_command("s-1")
        assert command.command_name == "START"
        assert command.command_param is not None
        assert command.command_param.task_id == "t-1"


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "kind", "action"),
        [
            (400, ClientError, ErrorAction.fatal),
            (401, AuthError, ErrorAction.reauthenticate),
            (403, ForbiddenError, ErrorAction.forbidden),
            (404, NotFoundError, ErrorAction.reregister),
            (429, ServerError, ErrorAction.retry),
            (500, ServerError, ErrorAction.retry),
            (503, ServerError, ErrorAction.retry),
        ],
    )
    async def test_status_maps_to_class_and_action(
        self,
        service: FakeService,
        client: SmsClient,
        status: int,
        kind: type[SmsError],
        action: ErrorAction,
    ) -> None:
        service.reply(
            "GET",
            "/v3/sources/s-1/command",
            status,
            {"error_code": "SMS.0000", "error_msg": "nope"},
            **{"X-Request-Id": "req-7", "Retry-After": "7"},
        )
        with pytest.raises(kind) as caught:
            await client.show_command("s-1")
        assert caught.value.action is action
        assert str(caught.value) == (
            f"GET /v3/sources/s-1/command: HTTP {status} SMS.0000: nope (request id req-7)"
        )
        assert caught.value.retry_after_s == 7.0
        assert SK not in str(caught.value)
        assert SK not in repr(caught.value)
        assert client.request_count == 1

    async def test_malformed_json_on_200_is_retried(
        self, service: FakeService, client: SmsClient
    ) -> None:
        service.reply("GET", "/v3/sources/s-1/command", 200, b"<html>captive portal</html>")
        with pytest.raises(MalformedResponse) as caught:
            await client.show_command("s-1")
        assert caught.value.action is ErrorAction.retry
        assert "not JSON" in str(caught.value)

    async def test_a_json_array_is_malformed(self, service: FakeService, client: SmsClient) -> None:
        service.reply("GET", "/v3/sources/s-1/command", 200, [1, 2])
        with pytest.raises(MalformedResponse, match="JSON list, not an object"):
            await client.show_command("s-1")

    async def test_a_missing_field_is_named(self, service: FakeService, client: SmsClient) -> None:
        service.reply("POST", "/v3/sources", 200, {})
        with pytest.raises(MalformedResponse, match="does not fit IdResponse: id: Field required"):
            await client.register_server(SERVER)

    async def test_invalid_values_are_not_repeated(
        self, service: FakeService, client: SmsClient
    ) -> None:
        """A key that fails validation is named, but its (secret) value never appears."""
        service.reply(
            "GET",
            "/v3/tasks/t-1/certkey",
            200,
            {"private_key": ["-----BEGIN PRIVATE KEY----- SECRETKEYDATA"]},
        )
        with pytest.raises(MalformedResponse) as caught:
            await client.show_cert_key("t-1")
        assert "private_key" in str(caught.value)
        assert "SECRETKEYDATA" not in str(caught.value)
        assert "SECRETKEYDATA" not in repr(caught.value)

    async def test_a_connection_reset_is_a_transport_error(self) -> None:
        async with _resetting_server() as url, _client(url) as sms:
            with pytest.raises(TransportError) as caught:
                await sms.show_config()
        assert caught.value.action is ErrorAction.retry
        assert caught.value.status is None
        assert SK not in str(caught.value)

    async def test_a_refused_connection_is_a_transport_error(self) -> None:
        async with _client(f"http://127.0.0.1:{_closed_port()}") as sms:
            with pytest.raises(TransportError, match="GET /v3/config: ClientConnectorError"):
                await sms.show_config()

    async def test_a_silent_server_times_out(self, service: FakeService) -> None:
        """A server that never answers costs read_timeout_s, then a retryable error."""
        never = asyncio.Event()

        async def hang(request: web.Request, _: bytes) -> web.StreamResponse:
            await never.wait()
            return web.Response()

        service.route("GET", "/v3/config", hang)
        async with _client(service.url, read_timeout_s=0.3) as sms:
            with pytest.raises(TransportError, match="Timeout") as caught:
                await sms.show_config()
        assert caught.value.action is ErrorAction.retry


class TestTokenRenewal:
    async def test_a_401_renews_the_iam_token_and_retries_once(
        self, service: FakeService, iam: IamIssuer, clock: Clock
    ) -> None:
        """The first token is refused; a new one is fetched and the request succeeds."""

        async def refuse_first_token(request: web.Request, _: bytes) -> web.StreamResponse:
            if request.headers["X-Auth-Token"] == "tok-1":
                return web.json_response(
                    {"error_code": "APIGW.0301", "error_msg": "token expires"}, status=401
                )
            return web.json_response({"flag": True})

        service.route("GET", "/v3/privacy-agreements", refuse_first_token)
        async with _client(service.url, _iam(service, clock)) as sms:
            answer = await sms.show_privacy_agreements()
        assert answer.flag is True
        assert iam.issued == ["tok-1", "tok-2"]
        assert sms.request_count == 2

    async def test_a_second_401_is_raised(
        self, service: FakeService, iam: IamIssuer, clock: Clock
    ) -> None:
        service.reply("GET", "/v3/config", 401, {"error_code": "APIGW.0301", "error_msg": "no"})
        async with _client(service.url, _iam(service, clock)) as sms:
            with pytest.raises(AuthError):
                await sms.show_config()
        assert sms.request_count == 2
        assert len(service.sent_to("/v3/config")) == 2

    async def test_a_fixed_token_is_never_shown(self, service: FakeService) -> None:
        service.reply("GET", "/v3/config", 401, {"error_code": "APIGW.0301", "error_msg": "no"})
        credentials = TokenCredentials(SecretStr(TOKEN))
        async with _client(service.url, credentials) as sms:
            with pytest.raises(AuthError) as caught:
                await sms.show_config()
        assert service.requests[0].headers["X-Auth-Token"] == TOKEN
        assert TOKEN not in str(caught.value) + repr(caught.value) + repr(sms)

    async def test_aksk_401_is_not_retried(self, service: FakeService, client: SmsClient) -> None:
        """Re-signing with the same key pair cannot help, so the 401 comes back at once."""
        service.reply("GET", "/v3/config", 401, {"error_code": "APIGW.0301", "error_msg": "no"})
        with pytest.raises(AuthError):
            await client.show_config()
        assert client.request_count == 1


class TestTransport:
    async def test_explicit_proxy_carries_the_request(self, service: FakeService) -> None:
        """With `proxy` set, an unresolvable endpoint is reached through the proxy."""
        service.default = _ok_with_ids
        async with _client("http://sms.invalid", proxy=service.url) as sms:
            await sms.show_config()
        [request] = service.requests
        assert request.headers["Host"] == "sms.invalid"
        assert request.raw_path == "/v3/config"
        _assert_signed(request)

    async def test_environment_proxy_is_used(
        self, service: FakeService, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        service.default = _ok_with_ids
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", service.url)
        async with _client("http://sms.invalid") as sms:
            await sms.show_config()
        assert [request.headers["Host"] for request in service.requests] == ["sms.invalid"]

    async def test_no_proxy_bypasses_the_environment_proxy(
        self, service: FakeService, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        service.default = _ok_with_ids
        monkeypatch.delenv("http_proxy", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with _client(service.url) as sms:
            await sms.show_config()
        assert len(service.requests) == 1

    async def test_tls_with_the_ca_bundle(self, tls: tuple[ssl.SSLContext, Path]) -> None:
        """A private CA given as ca_bundle is trusted in addition to the system store."""
        context, ca_file = tls
        async with serve_fake(context) as fake:
            fake.default = _ok_with_ids
            async with _client(fake.url, ca_bundle=ca_file) as sms:
                await sms.show_config()
            assert len(fake.requests) == 1

    async def test_tls_without_the_ca_is_refused(self, tls: tuple[ssl.SSLContext, Path]) -> None:
        context, _ = tls
        async with serve_fake(context) as fake, _client(fake.url) as sms:
            with pytest.raises(TransportError, match="certificate verify failed"):
                await sms.show_config()
            assert fake.requests == []

    async def test_tls_verification_can_be_switched_off(
        self, tls: tuple[ssl.SSLContext, Path]
    ) -> None:
        context, _ = tls
        async with serve_fake(context) as fake:
            fake.default = _ok_with_ids
            async with _client(fake.url, verify_tls=False) as sms:
                await sms.show_config()
            assert len(fake.requests) == 1

    @pytest.mark.parametrize("verify_tls", [True, False])
    async def test_without_a_ca_bundle_no_tls_context_is_built(self, verify_tls: bool) -> None:
        """The system store is loaded once, by aiohttp, not again per client (0.7 MB each)."""

        def tls_contexts() -> int:
            return sum(isinstance(item, ssl.SSLContext) for item in gc.get_objects())

        before = tls_contexts()
        async with _client("https://sms.example.com", verify_tls=verify_tls):
            assert tls_contexts() == before

    async def test_an_unreadable_ca_bundle_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"^ca_bundle .*missing\.pem: cannot load"):
            async with _client("https://127.0.0.1", ca_bundle=tmp_path / "missing.pem"):
                pass

    @pytest.mark.parametrize("endpoint", ["ftp://sms.example.com", "sms.example.com", "https://"])
    def test_a_bad_endpoint_is_named(self, endpoint: str) -> None:
        with pytest.raises(ValueError, match=r"^endpoint "):
            _client(endpoint)

    async def test_using_a_closed_client_is_an_error(self) -> None:
        sms = _client("http://127.0.0.1:1")
        with pytest.raises(RuntimeError, match="not open"):
            await sms.show_config()


def _iam(service: FakeService, clock: Clock) -> IamTokenCredentials:
    return IamTokenCredentials(
        iam_endpoint=service.url,
        user="agent",
        password=SecretStr("pw"),
        domain="acme",
        clock=clock,
    )


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def _resetting_server() -> AsyncIterator[str]:
    """A server that reads the request and answers with a TCP reset."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        sock = writer.get_extra_info("socket")
        # Linger 0: closing sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ssl.SSLContext, Path]]:
    """A server context with a certificate for 127.0.0.1 and the CA file that signed it."""
    directory = tmp_path_factory.mktemp("smsapi-tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=smsagent test CA",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    yield context, cert
