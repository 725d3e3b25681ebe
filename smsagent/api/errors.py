"""`SmsError` and its classes: what failed on an SMS call and what the agent should do next."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, ClassVar, Final, Optional
from urllib.parse import urlsplit, urlunsplit

QUOTA_ERROR_CODE: Final = "SMS.6526"
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_MAX_MESSAGE_CHARS: Final = 512
_SOURCE_PATH: Final = re.compile(r"^/v3/sources/[^/]+(/.*)?$")
_URL_USERINFO: Final = re.compile(r"(?<=://)[^/@\s]+@")


class ErrorAction(str, Enum):
    """The agent's next step after a failed call."""

    retry = "retry"
    reauthenticate = "reauthenticate"
    reregister = "reregister"
    forbidden = "forbidden"
    fatal = "fatal"


class SmsError(Exception):
    """A failed SMS call.

    Attributes:
        action: what the caller should do next.
        status: the HTTP status, or None when no response arrived.
        error_code: `error_code` of the body (e.g. `SMS.9004`, `APIGW.0301`), else the status.
        error_msg: `error_msg` of the body, or what went wrong locally.
        request_id: the `X-Request-Id` response header.
        retry_after_s: the server's `Retry-After`, in seconds.
        server_date: the response `Date` header, to diagnose a skewed local clock.
        method: the request method.
        path: the request path (no query, no host).
    """

    default_action: ClassVar[ErrorAction] = ErrorAction.fatal

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: Optional[int] = None,
        error_code: Optional[str] = None,
        error_msg: Optional[str] = None,
        request_id: Optional[str] = None,
        retry_after_s: Optional[float] = None,
        server_date: Optional[datetime] = None,
        encoded_authorization_message: Optional[str] = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.error_code = error_code
        self.error_msg = None if error_msg is None else _one_line(error_msg)
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.server_date = server_date
        self.encoded_authorization_message = encoded_authorization_message
        self.action = self._action()
        super().__init__(str(self))

    def _action(self) -> ErrorAction:
        return self.default_action

    def __str__(self) -> str:
        text = f"{self.method} {self.path}: "
        if self.status is not None:
            text += f"HTTP {self.status} "
        if self.error_code:
            text += f"{self.error_code}: "
        text += self.error_msg or "no message"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, action={self.action.value})"

    def clock_skew_s(self, local_now: datetime) -> Optional[float]:
        """Seconds the local clock runs ahead of the server's (negative: behind), if known."""
        if self.server_date is None:
            return None
        return (_as_utc(local_now) - self.server_date).total_seconds()


class TransportError(SmsError):
    """No usable response: connection refused or reset, timeout, DNS, TLS, proxy."""

    default_action = ErrorAction.retry


class ServerError(SmsError):
    """5xx or 429: the service is failing or throttling; retry after `retry_after_s` if given."""

    default_action = ErrorAction.retry


class MalformedResponse(SmsError):
    """A 2xx whose body is not JSON or does not match the expected model."""

    default_action = ErrorAction.retry


class AuthError(SmsError):
    """401: the credentials were refused (wrong AK/SK, expired token, skewed clock)."""

    default_action = ErrorAction.reauthenticate


class ForbiddenError(SmsError):
    """403: the identity lacks a permission; retrying will not help until an operator acts."""

    default_action = ErrorAction.forbidden


class NotFoundError(SmsError):
    """404: for a source-server path the record is gone and the agent registers again."""

    def _action(self) -> ErrorAction:
        if _SOURCE_PATH.match(self.path):
            return ErrorAction.reregister
        return ErrorAction.fatal


class ClientError(SmsError):
    """Another 4xx: the request itself is wrong."""

    default_action = ErrorAction.fatal


class QuotaError(SmsError):
    """`SMS.6526`: quota exhausted or the account is frozen, suspended or restricted."""

    default_action = ErrorAction.fatal


class RedirectRefused(SmsError):
    """A 3xx redirect: never followed, so the request and its signature reach no other host.

    Retried, since a redirect may come from a proxy misbehaving for a while; the message names
    where it pointed (without its query) for the operator.
    """

    default_action = ErrorAction.retry


class UnexpectedStatus(SmsError):
    """A status below 400 that is neither a success (2xx) nor a redirect, e.g. 304 or 101."""

    default_action = ErrorAction.retry


class ResponseTooLarge(SmsError):
    """A response body over the size cap, refused before it could fill memory.

    Attributes:
        limit_bytes: the cap the body passed.
    """

    default_action = ErrorAction.retry

    def __init__(
        self,
        *,
        method: str,
        path: str,
        limit_bytes: int,
        status: Optional[int] = None,
        server_date: Optional[datetime] = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(
            method=method,
            path=path,
            status=status,
            error_msg=f"the response body exceeds the cap of {limit_bytes} bytes; refused",
            server_date=server_date,
        )


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body_bytes: bytes,
    method: str,
    path: str,
) -> SmsError:
    """The error for a response outside 2xx; from 400 on, parsed by the SDK's rules (spec §6.1).

    Below 400 the body is not looked at: a redirect is `RedirectRefused`, anything else
    `UnexpectedStatus`. From 400 on, the code and message come from `error_code`/`error_msg`,
    then `errorCode`/`errorMsg`, then `code`/`message`, then the first nested object holding
    one of those pairs. A body that is not a JSON object gives its text as the message and the
    status as the code.
    """
    if status < 400:
        return _refused_status(status, headers, method, path)
    text = body_bytes.decode("utf-8", errors="replace")
    fields = _error_fields(text)
    error_code = fields.get("code") or str(status)
    error_msg = fields.get("msg") or text.strip() or None
    server_date = parse_http_date(_header(headers, "Date"))
    kind = _error_class(status, error_code)
    return kind(
        method=method,
        path=path,
        status=status,
        error_code=error_code,
        error_msg=error_msg,
        request_id=_header(headers, "X-Request-Id"),
        retry_after_s=parse_retry_after(_header(headers, "Retry-After"), server_date),
        server_date=server_date,
        encoded_authorization_message=fields.get("encoded"),
    )


def _refused_status(status: int, headers: Mapping[str, str], method: str, path: str) -> SmsError:
    """The error for a non-2xx status below 400, which no SMS operation answers."""
    server_date = parse_http_date(_header(headers, "Date"))
    location = _header(headers, "Location")
    if status in _REDIRECT_STATUSES or (300 <= status < 400 and location):
        target = (
            f"redirect to {_location_for_message(location)}"
            if location
            else "redirect without a Location"
        )
        return RedirectRefused(
            method=method,
            path=path,
            status=status,
            error_msg=f"{target}; redirects are not followed",
            server_date=server_date,
        )
    return UnexpectedStatus(
        method=method,
        path=path,
        status=status,
        error_msg="unexpected status; only 2xx is a success",
        server_date=server_date,
    )


def _location_for_message(location: str) -> str:
    """`Location` as scheme://host/path, for an error message.

    A query or fragment may carry a signature and the user info a password: neither is shown.
    """
    try:
        parts = urlsplit(location.strip())
    except ValueError:
        return "an unreadable Location"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", "")) or "an empty Location"


def _error_class(status: int, error_code: str) -> type[SmsError]:
    if error_code == QUOTA_ERROR_CODE:
        return QuotaError
    by_status: dict[int, type[SmsError]] = {
        401: AuthError,
        403: ForbiddenError,
        404: NotFoundError,
        429: ServerError,
    }
    if status in by_status:
        return by_status[status]
    return ServerError if status >= 500 else ClientError


_CODE_MESSAGE_KEYS: Final = (
    ("error_code", "error_msg"),
    ("errorCode", "errorMsg"),
    ("code", "message"),
)


def _error_fields(text: str) -> dict[str, str]:
    """`code`, `msg` and `encoded` (authorization message) from a JSON error body, if any."""
    try:
        document = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    fields = _code_and_message(document) or {}
    encoded = document.get("encoded_authorization_message")
    if encoded is not None:
        fields["encoded"] = str(encoded)
    return fields


def _code_and_message(document: dict[str, Any]) -> Optional[dict[str, str]]:
    """The first code/message pair, here or depth-first in nested objects."""
    for code_key, message_key in _CODE_MESSAGE_KEYS:
        if code_key in document and message_key in document:
            return {
                "code": _text_or_empty(document[code_key]),
                "msg": _text_or_empty(document[message_key]),
            }
    for value in document.values():
        if isinstance(value, dict):
            found = _code_and_message(value)
            if found is not None:
                return found
    return None


def _text_or_empty(value: object) -> str:
    return "" if value is None else str(value)


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def parse_http_date(value: Optional[str]) -> Optional[datetime]:
    """An aware UTC datetime from an HTTP-date header, or None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return _as_utc(parsed)


def parse_retry_after(
    value: Optional[str], server_now: Optional[datetime] = None
) -> Optional[float]:
    """Seconds to wait from a `Retry-After` of delay-seconds or an HTTP-date.

    A date is measured from `server_now` (the response `Date`) when known, so a skewed local
    clock does not distort it; else from the local clock. A date in the past means 0.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    moment = parse_http_date(value)
    if moment is None:
        return None
    reference = server_now or datetime.now(timezone.utc)
    return max(0.0, (moment - reference).total_seconds())


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _one_line(text: str) -> str:
    """A message fit for one log line: no line breaks, no URL credentials, bounded length."""
    flat = " ".join(text.split())
    flat = _URL_USERINFO.sub("***@", flat)
    if len(flat) > _MAX_MESSAGE_CHARS:
        flat = flat[: _MAX_MESSAGE_CHARS - 3] + "..."
    return flat


def describe_exception(exc: BaseException) -> str:
    """`TypeName: message` of a transport exception, made safe for a log line."""
    detail = str(exc)
    name = type(exc).__name__
    return _one_line(f"{name}: {detail}" if detail else name)
