"""A hostile control plane: an HTTP proxy in front of an emulator that answers chosen routes
itself (redirects, endless bodies, one command forever, error statuses) and forwards the rest.

    with HostileProxy(emulator.url) as proxy:
        agent = AgentProcess(emulator, workdir, settings={"SMSAGENT_ENDPOINT": proxy.url})
        proxy.redirect(POLL, 307)                         # the poll answers a redirect
        proxy.big_body(800 * MIB, content_length=False)   # the poll answers 800 MB
        proxy.repeat({"command_name": "SKIP", "command_param": {}})
        proxy.answer(task_route(task_id), Status(404))    # the task cannot be read
        proxy.honest()                                    # forward everything again
        proxy.requests(POLL, since=opened_s)              # what arrived when (time.monotonic())

The proxy runs on an event loop of its own in a thread, on 127.0.0.1 and a port the system
picked; its answers can be switched from any thread while it runs. A request no override
matches is forwarded unchanged: method, raw path and query, headers and body. The Host header
the agent sent goes along, so an AK/SK signature made for the proxy's address verifies at the
emulator; hop-by-hop headers are dropped, and bodies pass through undecoded. Every request is
recorded on arrival (method, raw path, `time.monotonic()`, and what the proxy did with it).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Optional, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

MIB: Final = 1024 * 1024
ELSEWHERE: Final = "https://elsewhere.invalid"
FORWARDED: Final = "forwarded"
START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0
UPSTREAM_TIMEOUT_S: Final = 30.0
# aiohttp refuses request lines over 8190 bytes; the proxy must take (and record) a path that
# holds a 10,000-character id, to let the emulator answer it as it would.
MAX_LINE_BYTES: Final = 64 * 1024
# Larger than any body the agent sends, so the proxy never refuses what the emulator would take.
MAX_REQUEST_BYTES: Final = 64 * MIB
# Headers about one connection, not the request: never passed on (RFC 9110 section 7.6.1).
# Content-Length goes too: the client sending the forwarded body sets it again.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)

T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    """Requests with `method` whose raw path (without the query) matches `pattern` in full."""

    method: str
    pattern: str

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.pattern, path) is not None


POLL: Final = Route("GET", r"/v3/sources/[^/]+/command")
RESULT: Final = Route("POST", r"/v3/sources/[^/]+/command_result")


def task_route(task_id: str) -> Route:
    """`GET /v3/tasks/{task_id}`: how the agent reads a task it was told to start."""
    return Route("GET", "/v3/tasks/" + re.escape(task_id))


@dataclass(frozen=True)
class Seen:
    """One request as the proxy received it.

    Attributes:
        method: the HTTP method.
        path: the raw path with its query, as sent.
        at: `time.monotonic()` when the request arrived.
        answer: `forwarded`, or the label of the answer the proxy gave instead.
    """

    method: str
    path: str
    at: float
    answer: str

    @property
    def hostile(self) -> bool:
        return self.answer != FORWARDED


class Answer(ABC):
    """What the proxy says on a route instead of forwarding the request."""

    @property
    @abstractmethod
    def label(self) -> str:
        """How the request log names this answer."""

    @abstractmethod
    async def respond(self, request: web.Request, closing: threading.Event) -> web.StreamResponse:
        """The response; `closing` is set when the proxy stops, to end a long one early."""


@dataclass(frozen=True)
class Redirect(Answer):
    """A redirect to the same path on a host that does not exist."""

    status: int
    location: str = ELSEWHERE

    @property
    def label(self) -> str:
        return f"redirect {self.status}"

    async def respond(self, request: web.Request, closing: threading.Event) -> web.StreamResponse:
        headers = {"Location": self.location + request.raw_path}
        return web.Response(status=self.status, headers=headers, text="moved")


@dataclass(frozen=True)
class Status(Answer):
    """An error status with an SMS-style JSON error body."""

    status: int
    error_code: str = "HOSTILE.0001"
    error_msg: str = "answered by the hostile proxy"

    @property
    def label(self) -> str:
        return f"status {self.status}"

    async def respond(self, request: web.Request, closing: threading.Event) -> web.StreamResponse:
        body = {"error_code": self.error_code, "error_msg": self.error_msg}
        return web.json_response(body, status=self.status)


@dataclass(frozen=True)
class Json(Answer):
    """A 200 with a fixed JSON document, whatever was asked."""

    document: Mapping[str, Any]

    @property
    def label(self) -> str:
        return "fixed json"

    async def respond(self, request: web.Request, closing: threading.Event) -> web.StreamResponse:
        return web.json_response(dict(self.document))


@dataclass(frozen=True)
class BigBody(Answer):
    """A 200 whose body is `size_bytes` long: `{`, spaces, `}` (valid JSON for a client that
    reads it all), streamed one chunk at a time and never held whole; with a Content-Length,
    or chunked."""

    size_bytes: int
    content_length: bool
    chunk_bytes: int = MIB

    @property
    def label(self) -> str:
        framing = "content-length" if self.content_length else "chunked"
        return f"big body {self.size_bytes} bytes {framing}"

    def chunks(self) -> Iterator[bytes]:
        """The body, chunk by chunk: one buffer of spaces, sliced, is all it holds."""
        spaces = b" " * self.chunk_bytes
        yield b"{"
        left = self.size_bytes - 2
        while left > 0:
            piece = min(left, self.chunk_bytes)
            yield spaces if piece == self.chunk_bytes else spaces[:piece]
            left -= piece
        yield b"}"

    async def respond(self, request: web.Request, closing: threading.Event) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if self.content_length:
            response.content_length = self.size_bytes
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for chunk in self.chunks():
                if closing.is_set():
                    break
                await response.write(chunk)
            else:
                await response.write_eof()
        except ConnectionError:
            pass  # the agent hung up on the body: what a client that refuses it does
        return response


@dataclass
class _Shared:
    """What the test thread and the proxy's loop both touch, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    overrides: dict[Route, Answer] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


class HostileProxy:
    """A reverse proxy to `upstream` whose answers a test switches at run time.

    Args:
        upstream: the base URL requests are forwarded to, e.g. an emulator's `url`.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self._shared = _Shared()
        self._closing = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._session: Optional[aiohttp.ClientSession] = None

    def __repr__(self) -> str:
        return f"HostileProxy(port={self.port}, upstream={self.upstream!r})"

    @property
    def url(self) -> str:
        """The base URL agents are pointed at, e.g. `http://127.0.0.1:41234`."""
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle ---

    def start(self) -> HostileProxy:
        """Start the loop thread and listen; the proxy starts honest."""
        if self._loop is not None:
            raise RuntimeError("the proxy is already running")
        self._closing.clear()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="hostile-proxy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._run(self._open(), START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop listening, end answers under way, close the loop; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._closing.set()  # a body still streaming stops at its next chunk
        try:
            self._run(self._close(), STOP_TIMEOUT_S)
        finally:
            self._loop = self._thread = None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> HostileProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.stop()

    # --- modes ---

    def honest(self) -> None:
        """Forward every request again."""
        with self._shared.lock:
            self._shared.overrides.clear()

    def answer(self, route: Route, answer: Answer) -> None:
        """Answer `route` with `answer` from now on (other overrides stay)."""
        with self._shared.lock:
            self._shared.overrides[route] = answer

    def redirect(self, route: Route, status: int) -> None:
        """Answer `route` with `status` and a Location on a host that does not exist."""
        self.answer(route, Redirect(status))

    def big_body(self, size_bytes: int, *, content_length: bool) -> None:
        """Answer every poll with a 200 of `size_bytes`, streamed."""
        self.answer(POLL, BigBody(size_bytes, content_length))

    def repeat(self, command: Mapping[str, Any]) -> None:
        """Answer every poll with `command`, without asking the emulator; results and every
        other route still go to the emulator."""
        self.answer(POLL, Json(command))

    # --- what arrived ---

    def requests(
        self,
        route: Optional[Route] = None,
        *,
        since: float = float("-inf"),
        until: float = float("inf"),
    ) -> list[Seen]:
        """The requests that arrived in [since, until] (monotonic seconds), on `route` or any,
        oldest first."""
        with self._shared.lock:
            seen = list(self._shared.seen)
        return [
            request
            for request in seen
            if since <= request.at <= until
            and (route is None or route.matches(request.method, _path_of(request.path)))
        ]

    # --- inside the loop ---

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(
            # Bodies pass through as the emulator encoded them.
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
        )
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=1.0,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        path = _path_of(request.raw_path)
        with self._shared.lock:
            answer = next(
                (
                    answer
                    for route, answer in self._shared.overrides.items()
                    if route.matches(request.method, path)
                ),
                None,
            )
            label = FORWARDED if answer is None else answer.label
            self._shared.seen.append(Seen(request.method, request.raw_path, arrived, label))
        if answer is not None:
            return await answer.respond(request, self._closing)
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP
        )
        try:
            async with self._session.request(
                request.method,
                URL(self.upstream + request.raw_path, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as upstream:
                payload = await upstream.read()
                answer_headers = CIMultiDict(
                    (name, value)
                    for name, value in upstream.headers.items()
                    if name.lower() not in HOP_BY_HOP
                )
                return web.Response(status=upstream.status, headers=answer_headers, body=payload)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            # What a gateway says when the service behind it is gone.
            return web.json_response(
                {"error_code": "HOSTILE.0502", "error_msg": f"upstream failed: {exc!r}"},
                status=502,
            )


def _path_of(raw_path: str) -> str:
    return raw_path.partition("?")[0]
