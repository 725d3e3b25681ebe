"""Endpoint, clock and credentials checks judged from one call's outcome."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest

from smsagent.api.enums import CheckResult
from smsagent.api.errors import (
    AuthError,
    ForbiddenError,
    ServerError,
    SmsError,
    TransportError,
    parse_http_date,
)
from smsagent.checks.endpoint import (
    AUTH_FAILED,
    CLOCK_SKEWED,
    ENDPOINT_UNREACHABLE,
    FORBIDDEN,
    TLS_FAILED,
    EndpointProbe,
    clock_check,
    clock_skew_s,
    credentials_check,
    endpoint_check,
)

OK, WARN, ERROR = CheckResult.OK, CheckResult.WARN, CheckResult.ERROR
LOCAL_NOW = datetime(2025, 3, 4, 10, 0, 30, tzinfo=timezone.utc)
HTTPS = "https://sms.example.com"


def _probe(error: Optional[SmsError] = None, skew_s: Optional[float] = 0.0) -> EndpointProbe:
    server_date = None if skew_s is None else LOCAL_NOW - timedelta(seconds=skew_s)
    return EndpointProbe(error, server_date, LOCAL_NOW, 0.042)


def _http_error(kind: type[SmsError], status: int, code: str, msg: str = "no") -> SmsError:
    return kind(method="GET", path="/v3/config", status=status, error_code=code, error_msg=msg)


def _transport(msg: str) -> SmsError:
    return TransportError(method="GET", path="/v3/config", error_msg=msg)


class TestClockSkew:
    def test_from_date_header(self) -> None:
        """The skew is the local time minus the server's `Date`: ahead is positive."""
        server = parse_http_date("Tue, 04 Mar 2025 10:00:00 GMT")
        assert clock_skew_s(server, LOCAL_NOW) == 30.0
        assert clock_skew_s(server, LOCAL_NOW - timedelta(minutes=20)) == -1170.0

    def test_other_time_zones_agree(self) -> None:
        """A local time in another zone is compared as the same instant."""
        server = parse_http_date("Tue, 04 Mar 2025 10:00:30 GMT")
        local = LOCAL_NOW.astimezone(timezone(timedelta(hours=8)))
        assert clock_skew_s(server, local) == 0.0

    def test_no_date(self) -> None:
        """Without a `Date` the skew is unknown."""
        assert clock_skew_s(None, LOCAL_NOW) is None

    @pytest.mark.parametrize(
        ("skew_s", "signs", "expected"),
        [
            (0.0, True, OK),
            (-45.0, True, OK),
            (120.0, True, WARN),
            (-1000.0, True, ERROR),
            (1000.0, False, WARN),
        ],
    )
    def test_thresholds(self, skew_s: float, signs: bool, expected: CheckResult) -> None:
        """A minute is fine; more is WARN; beyond 15 minutes signed requests fail: ERROR."""
        check = clock_check(_probe(skew_s=skew_s), signs_requests=signs)
        assert check.result is expected
        if expected is not OK:
            assert check.error_code == CLOCK_SKEWED
            assert ("behind" if skew_s < 0 else "ahead of") in check.reason

    def test_no_answer(self) -> None:
        """Without an answer the clock is not checked; without a Date it is a WARN."""
        assert clock_check(_probe(_transport("refused"), None), signs_requests=True).reason == (
            "not checked: the endpoint did not answer"
        )
        assert clock_check(_probe(skew_s=None), signs_requests=True).result is WARN


class TestEndpoint:
    def test_ok(self) -> None:
        """An answer over verified TLS is OK with its time."""
        check = endpoint_check(_probe(), HTTPS, verify_tls=True)
        assert check.result is OK
        assert "TLS verified" in check.reason and check.details["elapsed_ms"] == 42

    def test_refused_credentials_still_mean_reachable(self) -> None:
        """A 401 is an answer: the endpoint itself is fine."""
        error = _http_error(AuthError, 401, "APIGW.0301")
        assert endpoint_check(_probe(error), HTTPS, verify_tls=True).result is OK

    def test_unreachable(self) -> None:
        """No connection is ERROR SMS.0203."""
        error = _transport("ClientConnectorError: Cannot connect to host sms.example.com:443")
        check = endpoint_check(_probe(error, None), HTTPS, verify_tls=True)
        assert (check.result, check.error_code) == (ERROR, ENDPOINT_UNREACHABLE)

    def test_tls_failure(self) -> None:
        """A certificate problem is ERROR SMS.0304 pointing at the CA bundle."""
        error = _transport(
            "ClientConnectorCertificateError: Cannot connect to host sms.example.com:443 "
            "[SSLCertVerificationError: certificate verify failed: self-signed certificate]"
        )
        check = endpoint_check(_probe(error, None), HTTPS, verify_tls=True)
        assert (check.result, check.error_code) == (ERROR, TLS_FAILED)
        assert "SMSAGENT_CA_BUNDLE" in check.reason

    def test_unverified_tls_warns(self) -> None:
        """Turning certificate checks off is a WARN."""
        check = endpoint_check(_probe(), HTTPS, verify_tls=False)
        assert check.result is WARN and "SMSAGENT_VERIFY_TLS" in check.reason

    def test_failing_service_warns(self) -> None:
        """A 503 means the endpoint is there but failing: WARN with its code."""
        check = endpoint_check(_probe(_http_error(ServerError, 503, "503")), HTTPS, True)
        assert (check.result, check.error_code) == (WARN, "503")


class TestCredentials:
    def test_accepted(self) -> None:
        """A successful signed call is OK."""
        assert credentials_check(_probe(), "AK/SK signature").result is OK

    def test_refused(self) -> None:
        """A 401 with a sane clock is ERROR SMS.0202 quoting the gateway."""
        error = _http_error(AuthError, 401, "APIGW.0301", "verify aksk signature fail")
        check = credentials_check(_probe(error), "AK/SK signature")
        assert (check.result, check.error_code) == (ERROR, AUTH_FAILED)
        assert "verify aksk signature fail" in check.reason

    def test_refused_because_of_the_clock(self) -> None:
        """A 401 with a clock 20 minutes off is ERROR SMS.0205: the clock is the cause."""
        error = _http_error(AuthError, 401, "APIGW.0301")
        check = credentials_check(_probe(error, skew_s=1200.0), "AK/SK signature")
        assert (check.result, check.error_code) == (ERROR, CLOCK_SKEWED)

    def test_forbidden(self) -> None:
        """A 403 is ERROR SMS.0204 naming the missing permission."""
        error = _http_error(ForbiddenError, 403, "SMS.9004", "no permission sms:server:queryServer")
        check = credentials_check(_probe(error), "token")
        assert (check.result, check.error_code) == (ERROR, FORBIDDEN)
        assert "sms:server:queryServer" in check.reason

    def test_not_checked(self) -> None:
        """With no answer, or a failing service, the credentials are not judged."""
        assert credentials_check(_probe(_transport("x"), None), "token").result is WARN
        failing = _probe(_http_error(ServerError, 500, "500"))
        assert credentials_check(failing, "token").reason.startswith("not checked")

    @pytest.mark.parametrize(
        ("error", "code"),
        [
            (AuthError(method="POST", path="/v3/auth/tokens", status=401, error_code="401"),
             AUTH_FAILED),
            (TransportError(method="POST", path="/v3/auth/tokens", error_msg="refused"),
             ENDPOINT_UNREACHABLE),
        ],
    )  # fmt: skip
    def test_no_iam_token(self, error: SmsError, code: str) -> None:
        """When IAM gives no token the credentials are ERROR; SMS and the clock are not judged."""
        probe = _probe(error, None)
        check = credentials_check(probe, "IAM user's token")
        assert (check.result, check.error_code) == (ERROR, code)
        assert check.reason.startswith("IAM gave no token: POST /v3/auth/tokens")
        for judged in (
            endpoint_check(probe, HTTPS, True),
            clock_check(probe, signs_requests=False),
        ):
            assert judged.reason == "not checked: no IAM token to call SMS with"
