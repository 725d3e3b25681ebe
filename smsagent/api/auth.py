"""The credentials a client sends: AK/SK signatures, a fixed token, or IAM tokens it renews.

Signing itself is `signing.py`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Final, Optional, Protocol

import aiohttp
import structlog
from pydantic import SecretStr

from smsagent.api.body import MAX_RESPONSE_BYTES, read_capped
from smsagent.api.errors import (
    MalformedResponse,
    ResponseTooLarge,
    SmsError,
    TransportError,
    describe_exception,
    error_from_response,
    parse_http_date,
)
from smsagent.api.proxy import ProxyRoutes
from smsagent.api.signing import (
    HEADER_CONTENT_TYPE,
    HEADER_PROJECT_ID,
    sign,
)

log = structlog.get_logger(__name__)

HEADER_AUTH_TOKEN: Final = "X-Auth-Token"
HEADER_SUBJECT_TOKEN: Final = "X-Subject-Token"
IAM_TOKENS_PATH: Final = "/v3/auth/tokens"
IAM_CONTENT_TYPE: Final = "application/json;charset=utf8"


class Credentials(Protocol):
    """How a client authenticates: the headers for one request, and what to do after a 401."""

    mode: str
    """`aksk`, `token` or `iam`."""

    def attach(
        self, session: Optional[aiohttp.ClientSession], routes: Optional[ProxyRoutes] = None
    ) -> None:
        """Lend the client's HTTP session (and its proxy routes) to credentials that make calls
        of their own."""

    async def headers_for(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        """The headers to add to a request about to be sent as given."""

    async def invalidate(self) -> None:
        """Forget anything cached, after the service refused these credentials."""


def _project_header(project_id: Optional[str]) -> dict[str, str]:
    return {HEADER_PROJECT_ID: project_id} if project_id else {}


class AkSkCredentials:
    """Permanent AK/SK: every request is signed (`X-Project-Id`, when set, is signed too)."""

    mode: str = "aksk"

    def __init__(self, ak: str, sk: SecretStr, project_id: Optional[str] = None) -> None:
        if not ak:
            raise ValueError("ak must not be empty")
        if not sk.get_secret_value():
            raise ValueError("sk must not be empty")
        self.ak: Final = ak
        self._sk: Final = sk
        self.project_id: Final = project_id

    def __repr__(self) -> str:
        return f"AkSkCredentials(ak={self.ak!r}, sk=<hidden>, project_id={self.project_id!r})"

    def attach(
        self, session: Optional[aiohttp.ClientSession], routes: Optional[ProxyRoutes] = None
    ) -> None:
        """Signing needs no session."""

    async def headers_for(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        added = _project_header(self.project_id)
        added.update(
            sign(
                ak=self.ak,
                sk=self._sk.get_secret_value(),
                method=method,
                url=url,
                headers={**headers, **added},
                body=body,
            )
        )
        return added

    async def invalidate(self) -> None:
        """A key pair has nothing cached to forget."""


class TokenCredentials:
    """A fixed IAM token sent as `X-Auth-Token`."""

    mode: str = "token"

    def __init__(self, token: SecretStr, project_id: Optional[str] = None) -> None:
        if not token.get_secret_value():
            raise ValueError("token must not be empty")
        self._token: Final = token
        self.project_id: Final = project_id

    def __repr__(self) -> str:
        return f"TokenCredentials(token=<hidden>, project_id={self.project_id!r})"

    def attach(
        self, session: Optional[aiohttp.ClientSession], routes: Optional[ProxyRoutes] = None
    ) -> None:
        """A fixed token needs no session."""

    async def headers_for(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        return {
            HEADER_AUTH_TOKEN: self._token.get_secret_value(),
            **_project_header(self.project_id),
        }

    async def invalidate(self) -> None:
        """A fixed token cannot be renewed; the next request sends it again."""


@dataclass(frozen=True)
class _CachedToken:
    token: SecretStr
    expires_at: datetime
    refresh_at: datetime


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class IamTokenCredentials:
    """An IAM user's token from a password (spec §5.2), cached and renewed before it expires.

    The token is domain-scoped (SMS is a global service). It is fetched on first use, renewed
    `refresh_margin_s` before `expires_at` (at most half-way through its life, so a short-lived
    token is not fetched on every request), renewed by one caller while concurrent callers wait,
    and dropped by `invalidate()` so the next request fetches a new one. When a renewal fails
    while the old token is still valid, the old token is used. As for SMS calls, only a 2xx is
    a success, a redirect is refused (never followed: the password goes to no other host) and
    an answer over `max_response_bytes` is refused.
    """

    mode: str = "iam"

    def __init__(
        self,
        *,
        iam_endpoint: str,
        user: str,
        password: SecretStr,
        domain: str,
        project_id: Optional[str] = None,
        refresh_margin_s: float = 3600.0,
        clock: Callable[[], datetime] = _utc_now,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        for field, value in (
            ("iam_endpoint", iam_endpoint),
            ("iam_user", user),
            ("iam_domain", domain),
        ):
            if not value:
                raise ValueError(f"{field} must not be empty")
        if not password.get_secret_value():
            raise ValueError("iam_password must not be empty")
        self.iam_endpoint: Final = iam_endpoint.rstrip("/")
        self.user: Final = user
        self._password: Final = password
        self.domain: Final = domain
        self.project_id: Final = project_id
        self._refresh_margin_s: Final = refresh_margin_s
        self._clock: Final = clock
        self._max_response_bytes: Final = max_response_bytes
        self._session: Optional[aiohttp.ClientSession] = None
        self._routes = ProxyRoutes()
        self._cached: Optional[_CachedToken] = None
        # Created on first use: an asyncio.Lock made outside the running loop breaks on 3.9.
        self._lock: Optional[asyncio.Lock] = None
        self.fetch_count = 0
        """How many times a token was requested from IAM."""

    def __repr__(self) -> str:
        return (
            f"IamTokenCredentials(iam_endpoint={self.iam_endpoint!r}, user={self.user!r}, "
            f"domain={self.domain!r}, project_id={self.project_id!r}, password=<hidden>)"
        )

    @property
    def token_expires_at(self) -> Optional[datetime]:
        """When the cached token expires, or None when none is cached."""
        return None if self._cached is None else self._cached.expires_at

    def attach(
        self, session: Optional[aiohttp.ClientSession], routes: Optional[ProxyRoutes] = None
    ) -> None:
        """Use the client's session (its TLS settings) and proxy routes to reach IAM."""
        self._session = session
        self._routes = routes or ProxyRoutes()

    async def headers_for(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str]:
        token = await self._current_token()
        return {HEADER_AUTH_TOKEN: token, **_project_header(self.project_id)}

    async def invalidate(self) -> None:
        self._cached = None

    def _fresh(self) -> Optional[str]:
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.token.get_secret_value()
        return None

    async def _current_token(self) -> str:
        token = self._fresh()
        if token is not None:
            return token
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            # Another caller may have renewed the token while this one waited.
            token = self._fresh()
            if token is not None:
                return token
            return await self._renew()

    async def _renew(self) -> str:
        previous = self._cached
        try:
            self._cached = await self._fetch()
        except SmsError as exc:
            if previous is None or self._clock() >= previous.expires_at:
                raise
            log.warning("iam_token_renewal_failed", error=str(exc), action=exc.action.value)
            return previous.token.get_secret_value()
        return self._cached.token.get_secret_value()

    def _request_body(self) -> bytes:
        domain = {"name": self.domain}
        identity = {
            "methods": ["password"],
            "password": {
                "user": {
                    "name": self.user,
                    "password": self._password.get_secret_value(),
                    "domain": domain,
                }
            },
        }
        return json.dumps({"auth": {"identity": identity, "scope": {"domain": domain}}}).encode()

    async def _fetch(self) -> _CachedToken:
        if self._session is None:
            msg = "IamTokenCredentials has no HTTP session; attach() the client's session first"
            raise RuntimeError(msg)
        url = f"{self.iam_endpoint}{IAM_TOKENS_PATH}?nocatalog=true"
        proxy, proxy_auth = self._routes.for_url(url)
        fetched_at = self._clock()
        self.fetch_count += 1
        try:
            async with self._session.post(
                url,
                data=self._request_body(),
                headers={HEADER_CONTENT_TYPE: IAM_CONTENT_TYPE},
                proxy=proxy,
                proxy_auth=proxy_auth,
                allow_redirects=False,
            ) as response:
                status, response_headers = response.status, response.headers
                payload = await read_capped(response, self._max_response_bytes)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransportError(
                method="POST", path=IAM_TOKENS_PATH, error_msg=describe_exception(exc)
            ) from exc
        if payload is None:
            raise ResponseTooLarge(
                method="POST",
                path=IAM_TOKENS_PATH,
                limit_bytes=self._max_response_bytes,
                status=status,
                server_date=parse_http_date(response_headers.get("Date")),
            )
        if not 200 <= status < 300:
            raise error_from_response(status, response_headers, payload, "POST", IAM_TOKENS_PATH)
        return _cached_token(
            response_headers.get(HEADER_SUBJECT_TOKEN), payload, fetched_at, self._refresh_margin_s
        )


def _cached_token(
    token: Optional[str], payload: bytes, fetched_at: datetime, margin_s: float
) -> _CachedToken:
    """The token from an IAM answer: the `X-Subject-Token` header and `token.expires_at`."""

    def malformed(reason: str) -> MalformedResponse:
        return MalformedResponse(method="POST", path=IAM_TOKENS_PATH, error_msg=reason)

    if not token:
        raise malformed("the IAM answer has no X-Subject-Token header")
    try:
        expires_text = json.loads(payload)["token"]["expires_at"]
        expires_at = datetime.fromisoformat(str(expires_text).replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        raise malformed("the IAM answer has no readable token.expires_at") from None
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=timezone.utc)
    lifetime = expires_at - fetched_at
    margin = max(timedelta(0), min(timedelta(seconds=margin_s), lifetime / 2))
    return _CachedToken(SecretStr(token), expires_at, expires_at - margin)
