"""Error responses become `SmsError` classes with the right next action and a readable line."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

import pytest

from smsagent.api.errors import (
    AuthError,
    ClientError,
    ErrorAction,
    ForbiddenError,
    NotFoundError,
    QuotaError,
    ServerError,
    SmsError,
    TransportError,
    describe_exception,
    error_from_response,
    parse_retry_after,
)


def _error(
    status: int,
    body: object = b"",
    headers: Optional[dict[str, str]] = None,
    method: str = "GET",
    path: str = "/v3/config",
) -> SmsError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error_from_response(status, headers or {}, raw, method, path)


class TestBodyShapes:
    @pytest.mark.parametrize(
        ("body", "code", "message"),
        [
            ({"error_code": "SMS.9004", "error_msg": "no permission"}, "SMS.9004", "no permission"),
            ({"errorCode": "SMS.0204", "errorMsg": "denied"}, "SMS.0204", "denied"),
            ({"code": "APIGW.0308", "message": "throttled"}, "APIGW.0308", "throttled"),
            ({"error": {"code": "IAM.0011", "message": "nested"}}, "IAM.0011", "nested"),
            ({"a": 1, "b": {"c": {"error_code": "X.1", "error_msg": "deep"}}}, "X.1", "deep"),
            # Snake case wins over camel case when a body carries both.
            (
                {"errorCode": "B", "errorMsg": "b", "error_code": "A", "error_msg": "a"},
                "A",
                "a",
            ),
            ({"error_code": 42, "error_msg": None}, "42", '{"error_code": 42, "error_msg": null}'),
            ({"error_code": "only-code"}, "403", '{"error_code": "only-code"}'),
            (["not", "an", "object"], "403", '["not", "an", "object"]'),
            (b"<html>denied</html>", "403", "<html>denied</html>"),
        ],
        ids=[
            "snake",
            "camel",
            "code-message",
            "nested",
            "deeply-nested",
            "snake-first",
            "non-string-code",
            "half-pair",
            "json-list",
            "not-json",
        ],
    )
    def test_code_and_message_follow_the_sdk_rules(
        self, body: object, code: str, message: str
    ) -> None:
        exc = _error(403, body)
        assert (exc.error_code, exc.error_msg) == (code, message)

    def test_empty_body_reads_as_no_message(self) -> None:
        exc = _error(500, b"")
        assert exc.error_code == "500"
        assert exc.error_msg is None
        assert str(exc) == "GET /v3/config: HTTP 500 500: no message"

    def test_encoded_authorization_message_is_kept(self) -> None:
        exc = _error(
            403,
            {"error_code": "SMS.9004", "error_msg": "x", "encoded_authorization_message": "enc"},
        )
        assert exc.encoded_authorization_message == "enc"


class TestClasses:
    @pytest.mark.parametrize(
        ("status", "path", "kind", "action"),
        [
            (400, "/v3/sources", ClientError, ErrorAction.fatal),
            (401, "/v3/config", AuthError, ErrorAction.reauthenticate),
            (403, "/v3/config", ForbiddenError, ErrorAction.forbidden),
            (404, "/v3/sources/s-1/command", NotFoundError, ErrorAction.reregister),
            (404, "/v3/sources/s-1", NotFoundError, ErrorAction.reregister),
            (404, "/v3/tasks/t-1", NotFoundError, ErrorAction.fatal),
            (404, "/v3/sources", NotFoundError, ErrorAction.fatal),
            (409, "/v3/tasks", ClientError, ErrorAction.fatal),
            (429, "/v3/config", ServerError, ErrorAction.retry),
            (500, "/v3/config", ServerError, ErrorAction.retry),
            (503, "/v3/config", ServerError, ErrorAction.retry),
        ],
    )
    def test_status_picks_class_and_action(
        self, status: int, path: str, kind: type[SmsError], action: ErrorAction
    ) -> None:
        exc = _error(status, {"error_code": "E", "error_msg": "m"}, path=path)
        assert type(exc) is kind
        assert exc.action is action
        assert exc.status == status

    @pytest.mark.parametrize("status", [400, 403, 500])
    def test_quota_code_is_fatal_whatever_the_status(self, status: int) -> None:
        """SMS.6526 (quota, frozen or restricted account) is never retried."""
        exc = _error(status, {"error_code": "SMS.6526", "error_msg": "frozen"})
        assert isinstance(exc, QuotaError)
        assert exc.action is ErrorAction.fatal

    def test_transport_error_retries(self) -> None:
        exc = TransportError(method="GET", path="/v3/config", error_msg="ConnectionResetError")
        assert exc.action is ErrorAction.retry
        assert str(exc) == "GET /v3/config: ConnectionResetError"


class TestLine:
    def test_one_line_with_request_id(self) -> None:
        exc = _error(
            403,
            {"error_code": "SMS.9004", "error_msg": "no\npermission"},
            headers={"x-request-id": "r-1", "Authorization": "SDK-HMAC-SHA256 secret"},
        )
        assert str(exc) == "GET /v3/config: HTTP 403 SMS.9004: no permission (request id r-1)"
        assert exc.request_id == "r-1"

    def test_long_messages_are_bounded(self) -> None:
        exc = _error(502, b"x" * 10_000)
        assert len(str(exc)) < 600
        assert str(exc).endswith("...")

    def test_exception_descriptions_drop_url_credentials(self) -> None:
        text = describe_exception(OSError("proxy http://user:hunter2@proxy.example:3128 refused"))
        assert "hunter2" not in text
        assert text == "OSError: proxy http://***@proxy.example:3128 refused"


class TestRetryAfter:
    DATE = "Thu, 01 Jan 2026 00:00:00 GMT"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("120", 120.0),
            (" 7 ", 7.0),
            ("Thu, 01 Jan 2026 00:01:30 GMT", 90.0),
            ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
            ("soon", None),
            ("-5", None),
            (None, None),
        ],
    )
    def test_seconds_or_http_date_from_the_server_clock(
        self, value: Optional[str], expected: Optional[float]
    ) -> None:
        headers = {"Date": self.DATE}
        if value is not None:
            headers["Retry-After"] = value
        exc = _error(429, {"error_code": "APIGW.0308", "error_msg": "slow down"}, headers=headers)
        assert exc.retry_after_s == expected

    def test_http_date_without_a_server_date_uses_the_local_clock(self) -> None:
        assert parse_retry_after("Thu, 01 Jan 2015 00:00:00 GMT") == 0.0

    def test_server_date_gives_the_clock_skew(self) -> None:
        """A 401 carries the server's Date, so the agent can say its clock is off."""
        exc = _error(401, {"error_code": "APIGW.0301", "error_msg": "x"}, {"Date": self.DATE})
        assert exc.server_date == datetime(2026, 1, 1, tzinfo=timezone.utc)
        local = datetime(2026, 1, 1, 0, 20, tzinfo=timezone.utc)
        assert exc.clock_skew_s(local) == 1200.0

    def test_unreadable_date_is_none(self) -> None:
        exc = _error(500, b"", {"Date": "yesterday"})
        assert exc.server_date is None
        assert exc.clock_skew_s(datetime.now(timezone.utc)) is None
