"""Errors the emulator answers with, in the SMS / API-gateway body shape (spec §1.4).

Codes the emulator uses (the real service's catalogue is not public; these follow its style):

| Status | Code | When |
|---|---|---|
| 400 | `SMS.9001` | a body, query or path parameter is invalid; `error_msg` names the field |
| 400 | `SMS.7705` | a task is created for a source server that already has one |
| 401 | `APIGW.0301` | missing or bad signature or token, or a clock skew over 15 minutes |
| 401 | `APIGW.0307` | the token has expired ("The token must be updated") |
| 404 | `APIGW.0101` | no such API (path or method) |
| 404 | `SMS.7701` | the source server does not exist |
| 404 | `SMS.7703` | the task does not exist |
| 413 | `SMS.9001` | the body is larger than the limit |
| 500/503 | `SMS.2007` | an injected fault, or an unexpected error inside the emulator |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

from pydantic import ValidationError

INVALID_PARAMETER = "SMS.9001"
SOURCE_NOT_FOUND = "SMS.7701"
TASK_NOT_FOUND = "SMS.7703"
TASK_EXISTS = "SMS.7705"
AUTH_FAILED = "APIGW.0301"
TOKEN_EXPIRED = "APIGW.0307"
NO_SUCH_API = "APIGW.0101"
INTERNAL_ERROR = "SMS.2007"

MAX_ERROR_MSG_CHARS = 1024


class ApiError(Exception):
    """An error answer: HTTP status, SMS-style code and message, optional extra headers."""

    def __init__(
        self,
        status: int,
        error_code: str,
        error_msg: str,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(f"{status} {error_code}: {error_msg}")
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg[:MAX_ERROR_MSG_CHARS]
        self.headers = dict(headers or {})

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body: `error_code`, `error_msg` and the request id, as the gateway sends."""
        return {
            "error_code": self.error_code,
            "error_msg": self.error_msg,
            "request_id": request_id,
        }


def invalid(field: str, reason: str) -> ApiError:
    """A 400 naming the field (dotted path for nested body fields) and why it is rejected."""
    return ApiError(400, INVALID_PARAMETER, f"Invalid field '{field}': {reason}")


def task_not_found(task_id: str) -> ApiError:
    """The 404 for an unknown task id."""
    return ApiError(404, TASK_NOT_FOUND, f"The task does not exist: {task_id}")


def source_not_found(source_id: str) -> ApiError:
    """The 404 for an unknown source server id."""
    return ApiError(404, SOURCE_NOT_FOUND, f"The source server does not exist: {source_id}")


def field_path(loc: Sequence[Union[int, str]]) -> str:
    """`("disks", 0, "size")` -> `disks[0].size`; an empty location is the whole body."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "body"


def from_validation(exc: ValidationError, prefix: str = "") -> ApiError:
    """Turn a pydantic error into a 400 naming the first bad field and counting the rest.

    Args:
        exc: the validation error of a body or a query.
        prefix: put before the field path (e.g. a query parameter has none, a nested body part
            has its parent's name).
    """
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    field = field_path(first["loc"])
    if prefix:
        field = prefix if field == "body" else f"{prefix}.{field}"
    reason = str(first["msg"])
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more invalid field{'s' if len(errors) > 2 else ''})"
    return invalid(field, reason)
