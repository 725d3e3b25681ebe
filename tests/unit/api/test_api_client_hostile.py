"""`SmsClient` against answers a real SMS never gives: redirects, odd statuses, huge bodies."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import tracemalloc
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest
from aiohttp import web
from pydantic import SecretStr

from smsagent.api.auth import AkSkCredentials, Credentials, IamTokenCredentials
from smsagent.api.body import MAX_RESPONSE_BYTES
from smsagent.api.client import SmsClient
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.errors import (
    ErrorAction,
    RedirectRefused,
    ResponseTooLarge,
    ServerError,
    UnexpectedStatus,
    error_from_response,
)
from smsagent.api.models import CommandBody
from tests.support.sms_http import Clock, FakeService

AK = "AKEXAMPLE1234567890A"
SK = "SKEXAMPLESKEXAMPLESKEXAMPLESKEXAMPLE"
SIGNATURE = "Signature=d0e5f1secret"
# Small enough that an over-cap body costs nothing to send, far below the default.
CAP = 64 * 1024
MiB = 1024 * 1024

Call = Callable[[SmsClient], Awaitable[object]]

# The two calls a redirect hurts most: a poll that would look healthy, a result that would be
# dropped from the outbox as delivered.
CALLS: list[tuple[str, Call, str, str]] = [
    ("show_command", lambda c: c.show_command("s-1"), "GET", "/v3/sources/s-1/command"),
    (
        "update_command_result",
        lambda c: c.update_command_result(
            "s-1", CommandBody(command_name=CommandName.START, result=CommandResult.success)
        ),
        "POST",
        "/v3/sources/s-1/command_result",
    ),
]
CALL_IDS = [entry[0] for entry in CALLS]


def _client(url: str, credentials: Optional[Credentials] = None, **kwargs: Any) -> SmsClient:
    return SmsClient(url, credentials or AkSkCredentials(AK, SecretStr(SK)), **kwargs)


@pytest.fixture
async def client(service: FakeService) -> AsyncIterator[SmsClient]:
    async with _client(service.url, max_response_bytes=CAP) as sms:
        yield sms


def _padded_json(size: int) -> bytes:
    """A valid JSON object of exactly `size` bytes (whitespace after `{}`)."""
    return b"{}" + b" " * (size - 2)


@dataclass
class Stream:
    """A handler streaming `total` bytes in chunks, made lazily; notes how far it got."""

    total: int
    status: int = 200
    chunk: bytes = b" " * (64 * 1024)
    sent: int = 0
    finished: bool = False
    cut: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: web.Request, _: bytes) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status)
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            await response.write(b"{}")
            self.sent = 2
            while self.sent < self.total:
                # The same chunk object every time: the server holds no more than one.
                await response.write(self.chunk)
                self.sent += len(self.chunk)
            await response.write_eof()
            self.finished = True
        except (ConnectionError, asyncio.CancelledError):
            self.cut = True
            raise
        finally:
            self.done.set()
        return response


class TestRedirects:
    @pytest.mark.parametrize("status", [301, 302, 307, 308])
    @pytest.mark.parametrize(("call", "method", "path"), [c[1:] for c in CALLS], ids=CALL_IDS)
    async def test_a_redirect_is_refused_and_not_followed(
        self,
        service: FakeService,
        client: SmsClient,
        status: int,
        call: Call,
        method: str,
        path: str,
    ) -> None:
        """The error names the target without its query; the target never sees a request."""
        target = f"{service.url}/elsewhere/v3/x"
        service.reply(method, path, status, Location=f"{target}?{SIGNATURE}#frag")
        with pytest.raises(RedirectRefused) as caught:
            await call(client)
        error = caught.value
        assert error.action is ErrorAction.retry
        assert error.status == status
        assert str(error) == (
            f"{method} {path}: HTTP {status} redirect to {target}; redirects are not followed"
        )
        assert "?" not in str(error)
        assert SIGNATURE not in repr(error)
        assert [request.raw_path for request in service.requests] == [path]
        assert client.request_count == 1

    async def test_a_redirect_to_another_host_names_that_host(
        self, service: FakeService, client: SmsClient
    ) -> None:
        service.reply(
            "GET",
            "/v3/sources/s-1/command",
            301,
            Location=f"https://user:pw@other.example:8443/v3/sources/s-1/command?{SIGNATURE}",
        )
        with pytest.raises(RedirectRefused, match=r"HTTP 301 redirect to ") as caught:
            await client.show_command("s-1")
        assert (
            "redirect to https://other.example:8443/v3/sources/s-1/command; redirects are not"
            in str(caught.value)
        )
        assert "pw" not in str(caught.value)

    async def test_a_redirect_of_the_iam_token_request_is_not_followed(
        self, service: FakeService, clock: Clock
    ) -> None:
        """The password is never posted to where an IAM redirect points."""
        service.reply("POST", "/v3/auth/tokens", 307, Location=f"{service.url}/stolen?x=1")
        async with _client(service.url, _iam(service, clock)) as sms:
            with pytest.raises(RedirectRefused) as caught:
                await sms.show_config()
        assert str(caught.value) == (
            f"POST /v3/auth/tokens: HTTP 307 redirect to {service.url}/stolen; "
            "redirects are not followed"
        )
        assert caught.value.action is ErrorAction.retry
        assert [request.raw_path for request in service.requests] == ["/v3/auth/tokens"]


class TestLocationInMessages:
    @pytest.mark.parametrize(
        ("location", "shown"),
        [
            ("https://h.example/a/b?sig=1&x=2", "redirect to https://h.example/a/b;"),
            ("https://h.example/a#sig", "redirect to https://h.example/a;"),
            ("https://u:secret@h.example/a", "redirect to https://h.example/a;"),
            ("/v3/other?sig=1", "redirect to /v3/other;"),
            ("?sig=1", "redirect to an empty Location;"),
            ("http://[::1/broken", "redirect to an unreadable Location;"),
        ],
    )
    def test_only_scheme_host_and_path_are_shown(self, location: str, shown: str) -> None:
        error = error_from_response(302, {"Location": location}, b"", "GET", "/v3/config")
        assert isinstance(error, RedirectRefused)
        assert shown in str(error)
        assert "sig" not in str(error)
        assert "secret" not in str(error)

    def test_a_redirect_without_location_says_so(self) -> None:
        error = error_from_response(303, {}, b"", "GET", "/v3/config")
        assert isinstance(error, RedirectRefused)
        assert str(error) == (
            "GET /v3/config: HTTP 303 redirect without a Location; redirects are not followed"
        )


class TestStatuses:
    @pytest.mark.parametrize("status", [200, 201, 202, 204])
    @pytest.mark.parametrize(("call", "method", "path"), [c[1:] for c in CALLS], ids=CALL_IDS)
    async def test_a_2xx_is_a_success(
        self,
        service: FakeService,
        client: SmsClient,
        status: int,
        call: Call,
        method: str,
        path: str,
    ) -> None:
        service.reply(method, path, status)
        await call(client)
        assert len(service.requests) == 1

    @pytest.mark.parametrize("status", [300, 304])
    @pytest.mark.parametrize(("call", "method", "path"), [c[1:] for c in CALLS], ids=CALL_IDS)
    async def test_another_3xx_is_an_unexpected_status(
        self,
        service: FakeService,
        client: SmsClient,
        status: int,
        call: Call,
        method: str,
        path: str,
    ) -> None:
        service.reply(method, path, status)
        with pytest.raises(UnexpectedStatus) as caught:
            await call(client)
        assert str(caught.value) == (
            f"{method} {path}: HTTP {status} unexpected status; only 2xx is a success"
        )
        assert caught.value.action is ErrorAction.retry

    async def test_a_final_101_is_an_unexpected_status(self) -> None:
        """A 1xx aiohttp hands back as the final answer is not a success either."""
        answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        async with _raw_server(answer) as url, _client(url) as sms:
            with pytest.raises(UnexpectedStatus, match=r"HTTP 101 unexpected status") as caught:
                await sms.show_command("s-1")
        assert caught.value.action is ErrorAction.retry


class TestBodyCap:
    def test_the_default_cap_is_4_mib(self) -> None:
        assert 4 * MiB == MAX_RESPONSE_BYTES

    async def test_a_body_of_exactly_the_cap_is_read(
        self, service: FakeService, client: SmsClient
    ) -> None:
        service.reply("GET", "/v3/sources/s-1/command", 200, _padded_json(CAP))
        command = await client.show_command("s-1")
        assert command.command_name is None

    async def test_a_declared_length_over_the_cap_is_refused(
        self, service: FakeService, client: SmsClient
    ) -> None:
        body = b'{"command_name": "' + b"BODYTEXT" * (CAP // 8) + b'"}'
        service.reply("GET", "/v3/sources/s-1/command", 200, body)
        with pytest.raises(ResponseTooLarge) as caught:
            await client.show_command("s-1")
        error = caught.value
        assert str(error) == (
            f"GET /v3/sources/s-1/command: HTTP 200 the response body exceeds the cap of "
            f"{CAP} bytes; refused"
        )
        assert (error.action, error.status, error.limit_bytes) == (ErrorAction.retry, 200, CAP)
        assert "BODYTEXT" not in repr(error)

    async def test_a_declared_length_is_refused_before_the_body_arrives(self) -> None:
        """Only the headers and two bytes come; the length alone decides."""
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n{}"
        # A client that read the body would fail on the read timeout instead.
        options: dict[str, Any] = {"max_response_bytes": CAP, "read_timeout_s": 5}
        async with _raw_server(answer) as url, _client(url, **options) as sms:
            with pytest.raises(ResponseTooLarge):
                await sms.show_command("s-1")

    async def test_the_default_cap_applies(self, service: FakeService) -> None:
        service.reply("GET", "/v3/config", 200, _padded_json(MAX_RESPONSE_BYTES + 1))
        async with _client(service.url) as sms:
            with pytest.raises(ResponseTooLarge, match=f"cap of {MAX_RESPONSE_BYTES} bytes"):
                await sms.show_config()

    async def test_an_endless_chunked_body_is_cut_early(
        self, service: FakeService, client: SmsClient
    ) -> None:
        """50 MB without a length: the client stops near the cap and drops the connection."""
        stream = Stream(total=50 * 1000 * 1000)
        service.route("GET", "/v3/sources/s-1/command", stream)
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge):
                await client.show_command("s-1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await asyncio.wait_for(stream.done.wait(), timeout=30)
        # Both ends of the loopback connection live in this process, so the peak counts the
        # server's buffers too; reading the 50 MB would have taken at least 50 MB.
        assert peak < 4 * MiB
        assert stream.cut
        assert not stream.finished
        # What the kernel's socket buffers took before the cut, far from all of it.
        assert stream.sent < 25 * 1000 * 1000

    async def test_a_compressed_body_is_counted_decompressed(
        self, service: FakeService, client: SmsClient
    ) -> None:
        """A small gzip body that inflates past the cap is refused all the same."""
        packed = gzip.compress(_padded_json(4 * CAP))
        assert len(packed) < CAP
        service.reply("GET", "/v3/sources/s-1/command", 200, packed, **{"Content-Encoding": "gzip"})
        with pytest.raises(ResponseTooLarge):
            await client.show_command("s-1")

    @pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
    async def test_an_error_body_over_the_cap_is_refused(
        self, service: FakeService, client: SmsClient, declared: bool
    ) -> None:
        path = "/v3/sources/s-1/command"
        if declared:
            service.reply("GET", path, 500, b'{"error_msg": "' + b"x" * CAP + b'"}')
        else:
            service.route("GET", path, Stream(total=4 * CAP, status=500))
        with pytest.raises(ResponseTooLarge) as caught:
            await client.show_command("s-1")
        assert caught.value.status == 500
        assert caught.value.action is ErrorAction.retry

    async def test_an_error_body_under_the_cap_is_still_parsed(
        self, service: FakeService, client: SmsClient
    ) -> None:
        service.reply(
            "GET", "/v3/sources/s-1/command", 503, {"error_code": "SMS.0001", "error_msg": "busy"}
        )
        with pytest.raises(ServerError, match=r"HTTP 503 SMS\.0001: busy"):
            await client.show_command("s-1")

    @pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
    async def test_a_refused_connection_is_not_reused(
        self, service: FakeService, client: SmsClient, declared: bool
    ) -> None:
        """Kept-alive connections carry the calls until a refusal; the next call opens anew."""
        peers: list[object] = []
        stream = Stream(total=4 * CAP)

        async def small(request: web.Request, _: bytes) -> web.StreamResponse:
            peers.append(_peer(request))
            return web.json_response({})

        async def large(request: web.Request, body: bytes) -> web.StreamResponse:
            peers.append(_peer(request))
            if declared:
                return web.Response(body=_padded_json(4 * CAP))
            return await stream(request, body)

        service.route("GET", "/v3/config", small)
        service.route("GET", "/v3/sources/s-1/command", large)
        await client.show_config()
        await client.show_config()
        with pytest.raises(ResponseTooLarge):
            await client.show_command("s-1")
        await client.show_config()
        assert peers[0] is not None
        assert peers[0] == peers[1] == peers[2] != peers[3]

    async def test_an_iam_answer_over_the_cap_is_refused(
        self, service: FakeService, clock: Clock
    ) -> None:
        service.reply(
            "POST", "/v3/auth/tokens", 201, _padded_json(2 * CAP), **{"X-Subject-Token": "tok-1"}
        )
        credentials = _iam(service, clock, max_response_bytes=CAP)
        async with _client(service.url, credentials) as sms:
            with pytest.raises(ResponseTooLarge) as caught:
                await sms.show_config()
        assert str(caught.value) == (
            f"POST /v3/auth/tokens: HTTP 201 the response body exceeds the cap of {CAP} bytes; "
            "refused"
        )
        assert service.sent_to("/v3/config") == []


def _peer(request: web.Request) -> object:
    """The client's address and port: a new port means a new connection."""
    return None if request.transport is None else request.transport.get_extra_info("peername")


def _iam(service: FakeService, clock: Clock, **kwargs: Any) -> IamTokenCredentials:
    return IamTokenCredentials(
        iam_endpoint=service.url,
        user="agent",
        password=SecretStr("pw"),
        domain="acme",
        clock=clock,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def _raw_server(answer: bytes) -> AsyncIterator[str]:
    """A server that reads a request, writes `answer` as is and waits for the client to go."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(answer)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()
