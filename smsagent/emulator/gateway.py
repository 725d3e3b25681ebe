"""The API-gateway check in front of the SMS endpoints: an AK/SK signature or a valid token.

A request with `X-Auth-Token` is checked against the token registry; any other request must carry
an `SDK-HMAC-SHA256` signature by the configured access key, dated within 15 minutes of the
emulator's clock. Failures answer 401 with the gateway's `APIGW.*` body. Paths with no API
behind them get their 404 without authentication, as the real gateway answers them, and
`/_emulator/` plus the public paths given (the IAM token call) are not checked at all.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Optional

from aiohttp import web

from smsagent.api.signing import SignatureError, verify
from smsagent.emulator.errors import ApiError
from smsagent.emulator.iam import TokenRegistry
from smsagent.emulator.traffic import ADMIN_PREFIX

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

MAX_SKEW_S = 900.0
AUTH_TOKEN_HEADER = "X-Auth-Token"
PRINCIPAL_KEY = "smsagent.principal"


class Gateway:
    """Authenticates one request against the access key pair and the token registry.

    Args:
        ak: the access key the emulator knows.
        sk: its secret key.
        tokens: the tokens accepted as `X-Auth-Token`.
        clock: wall-clock seconds, to judge the signature's date.
    """

    def __init__(
        self,
        ak: str,
        sk: str,
        tokens: TokenRegistry,
        clock: Callable[[], float],
    ) -> None:
        self._ak = ak
        self._sk = sk
        self._tokens = tokens
        self._clock = clock

    def __repr__(self) -> str:
        return f"Gateway(ak={self._ak!r}, sk=<hidden>)"

    async def authenticate(self, request: web.Request) -> str:
        """The caller's identity (`token` or its access key), or a 401 `ApiError`."""
        token = request.headers.get(AUTH_TOKEN_HEADER)
        if token is not None:
            self._tokens.check(token)
            return "token"
        body = await request.read()
        try:
            return verify(
                method=request.method,
                path=request.rel_url.raw_path,
                raw_query=request.rel_url.raw_query_string,
                headers=request.headers,
                body=body,
                secret_for=self._secret_for,
                now=datetime.fromtimestamp(self._clock(), tz=timezone.utc),
                max_skew_s=MAX_SKEW_S,
            )
        except SignatureError as exc:
            raise ApiError(401, exc.error_code, exc.error_msg) from exc

    def _secret_for(self, access_key: str) -> Optional[str]:
        return self._sk if access_key == self._ak else None


def gateway_middleware(gateway: Gateway, public_paths: Collection[str]) -> Middleware:
    """The aiohttp middleware that lets only authenticated requests reach the SMS handlers."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        unrouted = request.match_info.http_exception is not None
        if unrouted or request.path.startswith(ADMIN_PREFIX) or request.path in public_paths:
            return await handler(request)
        request[PRINCIPAL_KEY] = await gateway.authenticate(request)
        return await handler(request)

    return authenticate
