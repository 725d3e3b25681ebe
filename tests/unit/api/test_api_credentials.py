"""Credentials: signed AK/SK headers, a fixed token, and IAM tokens fetched from a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from pydantic import SecretStr

from smsagent.api.auth import AkSkCredentials, IamTokenCredentials, TokenCredentials
from smsagent.api.errors import (
    AuthError,
    ErrorAction,
    MalformedResponse,
    ServerError,
    TransportError,
)
from smsagent.api.signing import parse_authorization, verify
from tests.support.sms_http import Clock, FakeService, IamIssuer

AK = "AKEXAMPLE1234567890A"
SK = "SKEXAMPLESKEXAMPLESKEXAMPLESKEXAMPLE"
PASSWORD = "pa55-w0rd-never-shown"
URL = "https://sms.example.com/v3/sources/s-1/command"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def _iam_credentials(service: FakeService, clock: Clock, **kwargs: object) -> IamTokenCredentials:
    return IamTokenCredentials(
        iam_endpoint=service.url + "/",
        user="agent",
        password=SecretStr(PASSWORD),
        domain="acme",
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


class TestAkSk:
    async def test_signs_the_project_id_too(self) -> None:
        """X-Project-Id is added and covered by the signature, which the verifier accepts."""
        credentials = AkSkCredentials(AK, SecretStr(SK), project_id="p-1")
        base = {"Content-Type": "application/json"}
        added = await credentials.headers_for("GET", URL, base, b"")
        assert added["X-Project-Id"] == "p-1"
        assert "x-project-id" in parse_authorization(added["Authorization"]).signed_headers
        access = verify(
            method="GET",
            path="/v3/sources/s-1/command",
            raw_query="",
            headers={**base, **added},
            body=b"",
            secret_for={AK: SK}.get,
            now=datetime.now(timezone.utc),
        )
        assert access == AK

    def test_repr_hides_the_secret_key(self) -> None:
        text = repr(AkSkCredentials(AK, SecretStr(SK)))
        assert SK not in text
        assert AK in text

    @pytest.mark.parametrize(("ak", "sk", "field"), [("", SK, "ak"), (AK, "", "sk")])
    def test_empty_values_are_named(self, ak: str, sk: str, field: str) -> None:
        with pytest.raises(ValueError, match=f"^{field} must not be empty"):
            AkSkCredentials(ak, SecretStr(sk))


class TestToken:
    async def test_sends_the_token(self) -> None:
        credentials = TokenCredentials(SecretStr("t0ken"), project_id="p-1")
        added = await credentials.headers_for("GET", URL, {}, b"")
        assert added == {"X-Auth-Token": "t0ken", "X-Project-Id": "p-1"}
        assert "t0ken" not in repr(credentials)
        assert credentials.mode == "token"


class TestIamToken:
    async def test_fetches_a_domain_scoped_token_once(
        self,
        service: FakeService,
        iam: IamIssuer,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        """The first request fetches a token; later ones reuse it while it is fresh."""
        credentials = _iam_credentials(service, clock, project_id="p-1")
        credentials.attach(session)
        first = await credentials.headers_for("GET", URL, {}, b"")
        clock.advance(3600)
        second = await credentials.headers_for("GET", URL, {}, b"")

        assert first == second == {"X-Auth-Token": "tok-1", "X-Project-Id": "p-1"}
        assert iam.issued == ["tok-1"]
        request = service.sent_to("/v3/auth/tokens")[0]
        assert request.raw_query == "nocatalog=true"
        assert request.headers["Content-Type"] == "application/json;charset=utf8"
        assert iam.bodies[0] == {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": "agent", "password": PASSWORD, "domain": {"name": "acme"}}
                    },
                },
                "scope": {"domain": {"name": "acme"}},
            }
        }

    async def test_renews_a_margin_before_expiry(
        self,
        service: FakeService,
        iam: IamIssuer,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        """A 24 h token is used for 23 h, then renewed (default margin 1 h)."""
        credentials = _iam_credentials(service, clock)
        credentials.attach(session)
        await credentials.headers_for("GET", URL, {}, b"")
        clock.advance(23 * 3600 - 1)
        assert (await credentials.headers_for("GET", URL, {}, b""))["X-Auth-Token"] == "tok-1"
        clock.advance(1)
        assert (await credentials.headers_for("GET", URL, {}, b""))["X-Auth-Token"] == "tok-2"
        assert credentials.token_expires_at == clock.now + timedelta(hours=24)

    async def test_short_tokens_renew_half_way(
        self,
        service: FakeService,
        iam: IamIssuer,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        """A token shorter than the margin is kept for half its life, not refetched every call."""
        iam.lifetime_s = 600
        credentials = _iam_credentials(service, clock)
        credentials.attach(session)
        await credentials.headers_for("GET", URL, {}, b"")
        clock.advance(299)
        await credentials.headers_for("GET", URL, {}, b"")
        assert iam.issued == ["tok-1"]
        clock.advance(1)
        await credentials.headers_for("GET", URL, {}, b"")
        assert iam.issued == ["tok-1", "tok-2"]

    async def test_concurrent_callers_share_one_fetch(
        self,
        service: FakeService,
        iam: IamIssuer,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        """Ten requests that need a token at once cause exactly one IAM call."""
        iam.gate = asyncio.Event()
        credentials = _iam_credentials(service, clock)
        credentials.attach(session)
        calls = asyncio.gather(*(credentials.headers_for("GET", URL, {}, b"") for _ in range(10)))
        await asyncio.wait_for(iam.arrived.wait(), timeout=5)
        iam.gate.set()
        results = await asyncio.wait_for(calls, timeout=5)
        assert {result["X-Auth-Token"] for result in results} == {"tok-1"}
        assert len(service.sent_to("/v3/auth/tokens")) == 1

    async def test_invalidate_forces_one_renewal(
        self,
        service: FakeService,
        iam: IamIssuer,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        credentials = _iam_credentials(service, clock)
        credentials.attach(session)
        await credentials.headers_for("GET", URL, {}, b"")
        await credentials.invalidate()
        assert (await credentials.headers_for("GET", URL, {}, b""))["X-Auth-Token"] == "tok-2"
        assert (await credentials.headers_for("GET", URL, {}, b""))["X-Auth-Token"] == "tok-2"

    async def test_a_failed_renewal_keeps_a_still_valid_token(
        self,
        service: FakeService,
        iam: IamIssuer,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        """IAM failing an hour before expiry does not stop requests; after expiry it does."""
        credentials = _iam_credentials(service, clock)
        credentials.attach(session)
        await credentials.headers_for("GET", URL, {}, b"")
        iam.status = 500
        clock.advance(23.5 * 3600)
        assert (await credentials.headers_for("GET", URL, {}, b""))["X-Auth-Token"] == "tok-1"
        clock.advance(3600)
        with pytest.raises(ServerError) as caught:
            await credentials.headers_for("GET", URL, {}, b"")
        assert caught.value.action is ErrorAction.retry

    async def test_wrong_password_is_an_auth_error_without_the_password(
        self,
        service: FakeService,
        iam: IamIssuer,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        iam.status = 401
        credentials = _iam_credentials(service, clock)
        credentials.attach(session)
        with pytest.raises(AuthError) as caught:
            await credentials.headers_for("GET", URL, {}, b"")
        assert caught.value.error_code == "IAM.0004"
        assert str(caught.value).startswith("POST /v3/auth/tokens: HTTP 401 IAM.0004")
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(credentials)

    async def test_unreachable_iam_is_a_transport_error(
        self, clock: Clock, session: aiohttp.ClientSession
    ) -> None:
        credentials = IamTokenCredentials(
            iam_endpoint="http://127.0.0.1:9",
            user="agent",
            password=SecretStr(PASSWORD),
            domain="acme",
            clock=clock,
        )
        credentials.attach(session)
        with pytest.raises(TransportError) as caught:
            await credentials.headers_for("GET", URL, {}, b"")
        assert PASSWORD not in str(caught.value)

    async def test_an_answer_without_a_token_is_malformed(
        self,
        service: FakeService,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        service.reply("POST", "/v3/auth/tokens", 201, {"token": {"expires_at": "never"}})
        credentials = _iam_credentials(service, clock)
        credentials.attach(session)
        with pytest.raises(MalformedResponse, match="no X-Subject-Token header") as caught:
            await credentials.headers_for("GET", URL, {}, b"")
        assert caught.value.action is ErrorAction.retry

    def test_empty_settings_are_named(self, clock: Clock) -> None:
        with pytest.raises(ValueError, match="iam_password must not be empty"):
            IamTokenCredentials(
                iam_endpoint="https://iam.example.com",
                user="agent",
                password=SecretStr(""),
                domain="acme",
            )
