"""Fixtures of the SMS API tests: a scripted HTTP server, a hand-moved clock, an IAM issuer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.sms_http import Clock, FakeService, IamIssuer, serve_fake


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    async with serve_fake() as fake:
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def iam(service: FakeService, clock: Clock) -> IamIssuer:
    # Built inside the running loop: on Python 3.9 an asyncio.Event binds to the current loop.
    issuer = IamIssuer(clock)
    service.route("POST", "/v3/auth/tokens", issuer)
    return issuer
