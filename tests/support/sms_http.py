"""A real HTTP server on 127.0.0.1 whose answers each test scripts, and an IAM token issuer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

from aiohttp import web
from multidict import CIMultiDict

Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    raw_path: str
    raw_query: str
    headers: CIMultiDict[str]
    body: bytes


class FakeService:
    """Routes `(method, path)` to handlers set by the test; records every request."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._handlers: dict[tuple[str, str], Handler] = {}
        self.default: Optional[Handler] = None
        self.url = ""

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._handlers[(method, path)] = handler

    def reply(
        self, method: str, path: str, status: int = 200, body: object = None, **headers: str
    ) -> None:
        """Answer `(method, path)` with a fixed status and JSON (or raw bytes) body."""
        raw = (
            body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        )

        async def handler(request: web.Request, _: bytes) -> web.StreamResponse:
            return web.Response(status=status, body=raw, headers=headers)

        self.route(method, path, handler)

    def sent_to(self, path: str) -> list[Recorded]:
        return [request for request in self.requests if request.raw_path == path]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        recorded = Recorded(
            method=request.method,
            raw_path=request.rel_url.raw_path,
            raw_query=request.rel_url.raw_query_string,
            headers=CIMultiDict(request.headers),
            body=body,
        )
        self.requests.append(recorded)
        handler = self._handlers.get((request.method, request.path), self.default)
        if handler is None:
            return web.json_response(
                {"error_code": "TEST.404", "error_msg": "no route"}, status=404
            )
        return await handler(request, body)


@contextlib.asynccontextmanager
async def serve_fake(ssl_context: Optional[ssl.SSLContext] = None) -> AsyncIterator[FakeService]:
    """Run a `FakeService` on 127.0.0.1 (a free port) until the block ends."""
    fake = FakeService()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.dispatch)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class IamIssuer:
    """Issues `tok-1`, `tok-2`, ... valid for `lifetime_s` from the shared clock."""

    clock: Clock
    lifetime_s: float = 24 * 3600
    status: int = 201
    issued: list[str] = field(default_factory=list)
    bodies: list[dict[str, object]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    gate: Optional[asyncio.Event] = None

    async def __call__(self, request: web.Request, body: bytes) -> web.StreamResponse:
        self.bodies.append(json.loads(body))
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.status >= 400:
            return web.json_response(
                {"error": {"code": "IAM.0004", "message": "The username or password is wrong."}},
                status=self.status,
            )
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        expires_at = self.clock.now + timedelta(seconds=self.lifetime_s)
        return web.json_response(
            {"token": {"expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}},
            status=self.status,
            headers={"X-Subject-Token": token},
        )
