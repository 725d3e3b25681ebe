"""Fault injection on the SMS endpoints: latency, 5xx answers, connection resets, malformed JSON.

Faults are drawn from one seeded random generator in a fixed order per request (reset, then
error, then malformed body), so the same seed and the same request sequence give the same faults.
Token expiry is not drawn: while `expire_tokens` is on, the gateway refuses tokens issued before
it was switched on. `/_emulator/` calls never see a fault.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Literal, Optional

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from smsagent.emulator.errors import INTERNAL_ERROR, ApiError
from smsagent.emulator.traffic import ADMIN_PREFIX

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class FaultSettings(BaseModel):
    """The faults to inject; the body of `PUT /_emulator/faults` (unset fields are off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: Annotated[float, Field(ge=0.0, le=600.0)] = 0.0
    error_rate: Rate = 0.0
    error_status: Literal[500, 503] = 503
    retry_after_s: Optional[Annotated[int, Field(ge=0, le=86400)]] = 1
    reset_rate: Rate = 0.0
    malformed_rate: Rate = 0.0
    expire_tokens: bool = False
    path_pattern: Optional[str] = None
    max_faults: Optional[Annotated[int, Field(ge=1)]] = None

    @field_validator("path_pattern")
    @classmethod
    def _compiles(cls, pattern: Optional[str]) -> Optional[str]:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    def without_random_faults(self) -> FaultSettings:
        """The same settings with resets, errors and malformed bodies switched off."""
        return self.model_copy(update={"error_rate": 0.0, "reset_rate": 0.0, "malformed_rate": 0.0})


class Fault(str, Enum):
    """A fault drawn for one request."""

    reset = "reset"
    error = "error"
    malformed = "malformed"


class FaultInjector:
    """Holds the current fault settings and draws faults from a seeded generator.

    Args:
        initial: the settings at start-up (and after a reset).
        seed: the generator's seed; None draws a fresh one.
    """

    def __init__(self, initial: FaultSettings, seed: Optional[int]) -> None:
        self._initial = initial
        self._seed = seed
        self.settings = initial
        self.injected_count = 0
        self._rng = random.Random(seed)

    def configure(self, settings: FaultSettings) -> None:
        """Replace the settings; `max_faults` counts from now."""
        self.settings = settings
        self.injected_count = 0

    def reset(self) -> None:
        """Back to the start-up settings and a re-seeded generator."""
        self.configure(self._initial)
        self._rng = random.Random(self._seed)

    def applies_to(self, path: str) -> bool:
        """True for SMS paths the current `path_pattern` (if any) matches."""
        if path.startswith(ADMIN_PREFIX):
            return False
        pattern = self.settings.path_pattern
        return pattern is None or re.search(pattern, path) is not None

    def draw(self, fault: Fault) -> bool:
        """Whether to inject `fault` now; consumes randomness only when its rate is set."""
        rate = {
            Fault.reset: self.settings.reset_rate,
            Fault.error: self.settings.error_rate,
            Fault.malformed: self.settings.malformed_rate,
        }[fault]
        if rate <= 0.0 or self._rng.random() >= rate:
            return False
        self._spend()
        return True

    def _spend(self) -> None:
        self.injected_count += 1
        limit = self.settings.max_faults
        if limit is not None and self.injected_count >= limit:
            # The budget is spent: keep latency and token expiry, stop drawing faults.
            self.settings = self.settings.without_random_faults()


def _reset_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # A zero linger time makes close() send RST instead of FIN: the client sees a reset.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()


def _malformed(response: web.StreamResponse) -> web.Response:
    body = response.body if isinstance(response, web.Response) else None
    data = bytes(body) if isinstance(body, (bytes, bytearray)) else b"{}"
    # Half a JSON document (at least its opening brace) never parses.
    return web.Response(
        body=data[: max(1, len(data) // 2)],
        status=response.status,
        content_type="application/json",
    )


def fault_middleware(injector: FaultInjector) -> Middleware:
    """The aiohttp middleware that applies `injector`'s faults around the SMS handlers."""

    @web.middleware
    async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not injector.applies_to(request.path):
            return await handler(request)
        settings = injector.settings
        if settings.latency_s > 0:
            await asyncio.sleep(settings.latency_s)
        if injector.draw(Fault.reset):
            _reset_connection(request)
            # The connection is gone: end the handler the way aiohttp ends one whose client left.
            raise asyncio.CancelledError
        if injector.draw(Fault.error):
            raise _injected_error(settings)
        response = await handler(request)
        if response.status < 400 and injector.draw(Fault.malformed):
            return _malformed(response)
        return response

    return inject_faults


def _injected_error(settings: FaultSettings) -> ApiError:
    headers = {}
    if settings.retry_after_s is not None:
        headers["Retry-After"] = str(settings.retry_after_s)
    reason = "Service unavailable" if settings.error_status == 503 else "Internal server error"
    return ApiError(settings.error_status, INTERNAL_ERROR, f"{reason} (injected fault)", headers)
