"""Checks of the way to SMS: the endpoint and its TLS, the local clock, the credentials, and
the privacy statement.

One signed call (`GET /v3/config`) answers the first three: whether anything answered, the
server's `Date` against the local clock, and whether the signature or token was accepted. A
second (`GET /v3/privacy-agreements`, which changes nothing) gives the privacy statement the
verdict `smsagent run` stops on.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Final, Optional
from urllib.parse import urlsplit

from smsagent.agent.preflight import PRIVACY_SETTING, PRIVACY_STATEMENT, privacy_blocker
from smsagent.api.auth import IAM_TOKENS_PATH
from smsagent.api.client import SmsClient
from smsagent.api.enums import CheckResult
from smsagent.api.errors import (
    AuthError,
    ForbiddenError,
    MalformedResponse,
    ServerError,
    SmsError,
    TransportError,
)
from smsagent.checks.model import Check, blocker_check
from smsagent.config import AuthMode, Settings

# SMS error codes of the way to SMS (spec §6.3).
ENDPOINT_UNREACHABLE: Final = "SMS.0203"
TLS_FAILED: Final = "SMS.0304"
AUTH_FAILED: Final = "SMS.0202"
FORBIDDEN: Final = "SMS.0204"
CLOCK_SKEWED: Final = "SMS.0205"

ENDPOINT: Final = "endpoint"
CLOCK: Final = "clock"
CREDENTIALS: Final = "credentials"

# The API gateway refuses a signature dated more than 15 minutes off (spec §5.1).
MAX_SIGNATURE_SKEW_S: Final = 900.0
# Beyond this, log times and the time windows of speed limits are visibly off.
WARN_SKEW_S: Final = 60.0

CREDENTIALS_KIND: Final = {
    AuthMode.aksk: "AK/SK signature",
    AuthMode.token: "token",
    AuthMode.iam: "IAM user's token",
}

_TLS_PROBLEM: Final = re.compile(r"SSL|TLS|[Cc]ertificate")
PROBE_CALL: Final = "GET /v3/config"
PRIVACY_CALL: Final = "GET /v3/privacy-agreements"
NO_TOKEN: Final = "no IAM token to call SMS with"


@dataclass(frozen=True)
class EndpointProbe:
    """What one signed call to SMS showed.

    Attributes:
        error: the call's error, or None when it succeeded.
        server_date: the response's `Date`, or None when no response (or no header) came.
        local_date: the local clock when the call ended.
        elapsed_s: how long the call took.
    """

    error: Optional[SmsError]
    server_date: Optional[datetime]
    local_date: datetime
    elapsed_s: float

    @property
    def answered(self) -> bool:
        """True when the service sent an HTTP response (even an error)."""
        return not isinstance(self.error, TransportError)

    @property
    def no_token(self) -> bool:
        """True when IAM gave no token, so SMS itself was never asked."""
        return self.error is not None and self.error.path == IAM_TOKENS_PATH


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


async def probe_endpoint(
    client: SmsClient, now: Callable[[], datetime] = _utc_now
) -> EndpointProbe:
    """Make the signed call and keep what it showed; never raises an `SmsError`."""
    started = time.monotonic()
    error: Optional[SmsError] = None
    try:
        await client.show_config()
    except SmsError as exc:
        error = exc
    return EndpointProbe(error, _answer_date(client, error), now(), time.monotonic() - started)


def _answer_date(client: SmsClient, error: Optional[SmsError]) -> Optional[datetime]:
    """The `Date` of the answer to the call just made, if one came."""
    if error is None:
        return client.last_server_date
    # Without a status no answer came, and the client's last date belongs to an earlier call.
    return error.server_date if error.status is not None else None


def clock_skew_s(server_date: Optional[datetime], local_now: datetime) -> Optional[float]:
    """Seconds the local clock runs ahead of the server's `Date` (negative: behind), if known."""
    if server_date is None:
        return None
    return (
        local_now.astimezone(timezone.utc) - server_date.astimezone(timezone.utc)
    ).total_seconds()


def endpoint_check(probe: EndpointProbe, endpoint: str, verify_tls: bool) -> Check:
    """Whether the endpoint answered, and over what kind of connection."""
    error = probe.error
    if probe.no_token:
        return Check.not_checked(ENDPOINT, NO_TOKEN)
    if isinstance(error, TransportError):
        detail = error.error_msg or "no answer"
        if _TLS_PROBLEM.search(detail):
            reason = f"TLS with {endpoint} failed: {detail} (check SMSAGENT_CA_BUNDLE)"
            return Check.error(ENDPOINT, reason, TLS_FAILED)
        reason = f"{endpoint} cannot be reached: {detail} (check DNS, routes, SMSAGENT_PROXY)"
        return Check.error(ENDPOINT, reason, ENDPOINT_UNREACHABLE)
    elapsed_ms = round(probe.elapsed_s * 1000)
    if isinstance(error, (ServerError, MalformedResponse)):
        return Check.warn(
            ENDPOINT, f"{endpoint} answered, but is failing: {error}", error.error_code
        )
    scheme = urlsplit(endpoint).scheme
    if scheme == "https" and not verify_tls:
        reason = f"{endpoint} answered, but its certificate is not verified (SMSAGENT_VERIFY_TLS)"
        return Check.warn(ENDPOINT, reason, elapsed_ms=elapsed_ms)
    how = "TLS verified" if scheme == "https" else "plain HTTP"
    return Check.ok(
        ENDPOINT, f"{endpoint} answered in {elapsed_ms} ms ({how})", elapsed_ms=elapsed_ms
    )


def clock_check(probe: EndpointProbe, *, signs_requests: bool) -> Check:
    """The local clock against the server's, from the response `Date` (1 s resolution).

    Args:
        probe: the call to judge.
        signs_requests: AK/SK credentials, whose signatures a skew over 15 minutes breaks.
    """
    if probe.no_token:
        return Check.not_checked(CLOCK, NO_TOKEN)
    if not probe.answered:
        return Check.not_checked(CLOCK, "the endpoint did not answer")
    skew_s = clock_skew_s(probe.server_date, probe.local_date)
    if skew_s is None:
        return Check.warn(CLOCK, "the endpoint sent no Date header to compare the clock with")
    text = f"the local clock is {abs(skew_s):.0f} s {'ahead of' if skew_s > 0 else 'behind'} SMS"
    rounded_s = round(skew_s, 1)
    if abs(skew_s) > MAX_SIGNATURE_SKEW_S and signs_requests:
        reason = f"{text}; signed requests are refused beyond 15 minutes (set the time, use NTP)"
        return Check.error(CLOCK, reason, CLOCK_SKEWED, skew_s=rounded_s)
    if abs(skew_s) > WARN_SKEW_S:
        return Check.warn(CLOCK, f"{text}; synchronise it (NTP)", CLOCK_SKEWED, skew_s=rounded_s)
    return Check.ok(CLOCK, f"the local clock agrees with SMS ({skew_s:+.0f} s)", skew_s=rounded_s)


def credentials_check(probe: EndpointProbe, credentials_kind: str) -> Check:
    """Whether SMS accepted the credentials for a call the agent makes."""
    error = probe.error
    if probe.no_token and error is not None:
        code = ENDPOINT_UNREACHABLE if isinstance(error, TransportError) else AUTH_FAILED
        return Check.error(CREDENTIALS, f"IAM gave no token: {error}", code)
    if not probe.answered:
        return Check.not_checked(CREDENTIALS, "the endpoint did not answer")
    if error is None:
        return Check.ok(CREDENTIALS, f"SMS accepted the {credentials_kind} for {PROBE_CALL}")
    if isinstance(error, (ServerError, MalformedResponse)):
        return Check.not_checked(CREDENTIALS, f"SMS is failing ({error.error_code})")
    if isinstance(error, AuthError):
        skew_s = clock_skew_s(probe.server_date, probe.local_date)
        if skew_s is not None and abs(skew_s) > MAX_SIGNATURE_SKEW_S:
            reason = (
                f"SMS refused the {credentials_kind}: the local clock is off by {skew_s:+.0f} s"
            )
            return Check.error(CREDENTIALS, reason, CLOCK_SKEWED)
        reason = f"SMS refused the {credentials_kind} ({error.error_code}: {error.error_msg})"
        return Check.error(CREDENTIALS, reason, AUTH_FAILED)
    if isinstance(error, ForbiddenError):
        reason = f"the identity lacks a permission for {PROBE_CALL}: {error.error_msg}"
        return Check.error(CREDENTIALS, reason, FORBIDDEN)
    return Check.error(CREDENTIALS, f"{PROBE_CALL} failed: {error}", error.error_code)


async def endpoint_checks(client: SmsClient, settings: Settings) -> list[Check]:
    """The `endpoint`, `clock` and `credentials` checks from one signed call.

    Args:
        client: an open client built from `settings`.
        settings: whether TLS is verified and which kind of credentials is used.
    """
    probe = await probe_endpoint(client)
    mode = settings.auth_mode
    return [
        endpoint_check(probe, client.endpoint, settings.verify_tls),
        clock_check(probe, signs_requests=mode is AuthMode.aksk),
        credentials_check(probe, CREDENTIALS_KIND[mode]),
    ]


async def privacy_check(client: SmsClient, settings: Settings, credentials: Check) -> Check:
    """Whether the agent may go past the privacy statement: the ERROR `smsagent run` stops on
    when the account has not accepted it and the settings do not accept it either.

    Args:
        client: an open client built from `settings`.
        settings: whether the operator accepts the statement (`accept_privacy_statement`).
        credentials: the credentials check; unless it is OK, SMS is not asked.
    """
    if credentials.result is not CheckResult.OK:
        return Check.not_checked(PRIVACY_STATEMENT, "the credentials were not accepted")
    try:
        agreement = await client.show_privacy_agreements()
    except SmsError as exc:
        # The agent retries this call at start-up like any failing call; it does not stop.
        return Check.warn(PRIVACY_STATEMENT, f"{PRIVACY_CALL} failed: {exc}", exc.error_code)
    blocker = privacy_blocker(agreement.flag, settings.accept_privacy_statement)
    if blocker is not None:
        return blocker_check(blocker)
    if agreement.flag:
        return Check.ok(PRIVACY_STATEMENT, "the account has accepted the SMS privacy statement")
    return Check.ok(
        PRIVACY_STATEMENT,
        "the SMS privacy statement is not yet accepted for this account; the agent accepts it "
        f"when it starts ({PRIVACY_SETTING}=true)",
    )
