"""Tokens the emulator accepts as `X-Auth-Token`, and a minimal IAM `POST /v3/auth/tokens`.

The fixed `--token` is accepted from start-up. With an IAM user configured, the emulator also
issues tokens for that user's password (spec §5.2: 201, token in `X-Subject-Token`, expiry in
`token.expires_at`), so an agent's IAM token provider can run against it. Expiring tokens (the
`expire_tokens` fault) refuses every token issued before the fault was switched on, the fixed one
included; tokens issued afterwards work, which is how a client proves it renews its token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from smsagent.emulator.errors import AUTH_FAILED, TOKEN_EXPIRED, ApiError, from_validation

IAM_TOKENS_PATH = "/v3/auth/tokens"
SUBJECT_TOKEN_HEADER = "X-Subject-Token"
DEFAULT_TOKEN_TTL_S = 86400.0


@dataclass(frozen=True)
class IamUser:
    """The one IAM user whose password gets a token."""

    name: str
    password: str
    domain: str

    def __repr__(self) -> str:
        return f"IamUser(name={self.name!r}, domain={self.domain!r}, password=<hidden>)"


@dataclass(frozen=True)
class _Issued:
    issued_at_s: float
    expires_at_s: float


class TokenRegistry:
    """Which tokens are valid now.

    Args:
        static_token: the token accepted from start-up, if any.
        ttl_s: the lifetime of tokens issued through IAM.
        clock: wall-clock seconds.
    """

    def __init__(
        self, static_token: Optional[str], ttl_s: float, clock: Callable[[], float]
    ) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._tokens: dict[str, _Issued] = {}
        self._expired_before_s: Optional[float] = None
        if static_token:
            self._tokens[static_token] = _Issued(clock(), float("inf"))

    @property
    def enabled(self) -> bool:
        """True when some token can be valid (a fixed token or an IAM user)."""
        return bool(self._tokens)

    def issue(self) -> tuple[str, float]:
        """A new token and its expiry time (epoch seconds)."""
        token = secrets.token_urlsafe(48)
        now_s = self._clock()
        issued = _Issued(now_s, now_s + self._ttl_s)
        self._tokens[token] = issued
        return token, issued.expires_at_s

    def set_expired(self, expired: bool) -> None:
        """Refuse every token issued until now (kept while on), or accept them again."""
        if not expired:
            self._expired_before_s = None
        elif self._expired_before_s is None:
            self._expired_before_s = self._clock()

    def check(self, token: str) -> None:
        """Accept a token or raise the 401 the gateway answers with."""
        issued = self._lookup(token)
        if issued is None:
            raise ApiError(
                401, AUTH_FAILED, "Incorrect IAM authentication information: token invalid"
            )
        expired_before = self._expired_before_s
        now_s = self._clock()
        if now_s >= issued.expires_at_s or (
            expired_before is not None and issued.issued_at_s <= expired_before
        ):
            raise ApiError(401, TOKEN_EXPIRED, "The token must be updated.")

    def _lookup(self, token: str) -> Optional[_Issued]:
        for known, issued in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return issued
        return None


class _Domain(BaseModel):
    name: str


class _User(BaseModel):
    name: str
    password: str
    domain: _Domain


class _Password(BaseModel):
    user: _User


class _Identity(BaseModel):
    methods: list[str]
    password: _Password


class _Auth(BaseModel):
    identity: _Identity


class TokenRequest(BaseModel):
    """The password-method body of `POST /v3/auth/tokens` (extra parts such as scope ignored)."""

    model_config = ConfigDict(extra="ignore")

    auth: _Auth


def issue_token(
    user: IamUser, tokens: TokenRegistry, raw_body: bytes
) -> tuple[str, dict[str, object]]:
    """Check a password request for `user` and return the new token and the IAM answer body."""
    try:
        request = TokenRequest.model_validate_json(raw_body)
    except ValidationError as exc:
        raise from_validation(exc) from exc
    given = request.auth.identity.password.user
    same_password = hmac.compare_digest(given.password.encode(), user.password.encode())
    if given.name != user.name or given.domain.name != user.domain or not same_password:
        msg = "Incorrect IAM authentication information: the user name or password is wrong"
        raise ApiError(401, AUTH_FAILED, msg)
    token, expires_at_s = tokens.issue()
    expires_at = datetime.fromtimestamp(expires_at_s, tz=timezone.utc)
    body: dict[str, object] = {
        "token": {
            "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "methods": ["password"],
            "user": {"name": user.name, "domain": {"name": user.domain}},
        }
    }
    return token, body


def iam_routes(user: IamUser, tokens: TokenRegistry) -> list[web.RouteDef]:
    """The IAM token route for `user`, to add to an application."""

    async def create_token(request: web.Request) -> web.Response:
        token, body = issue_token(user, tokens, await request.read())
        return web.json_response(body, status=201, headers={SUBJECT_TOKEN_HEADER: token})

    return [web.post(IAM_TOKENS_PATH, create_token)]
