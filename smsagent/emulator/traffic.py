"""The outermost layer of every answer: a request id, SMS-style error bodies, and a request log."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import structlog
from aiohttp import web

from smsagent.emulator.errors import INTERNAL_ERROR, INVALID_PARAMETER, NO_SUCH_API, ApiError

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

REQUEST_ID_HEADER = "X-Request-Id"
ADMIN_PREFIX = "/_emulator/"
RESET_STATUS = 0  # recorded for a request whose connection was reset instead of answered
KEEP_TIMES_PER_ROUTE = 1000

log = structlog.get_logger()


class RequestLog:
    """How often each route was called, with what statuses and when (epoch seconds)."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Any]] = {}

    def record(self, route: str, status: int, at_s: float) -> None:
        entry = self._routes.setdefault(
            route, {"count": 0, "statuses": {}, "at": deque(maxlen=KEEP_TIMES_PER_ROUTE)}
        )
        entry["count"] += 1
        entry["statuses"][str(status)] = entry["statuses"].get(str(status), 0) + 1
        entry["at"].append(at_s)

    def summary(self) -> dict[str, dict[str, Any]]:
        """`{"GET /v3/sources/{server_id}/command": {"count", "statuses", "at"}, ...}`."""
        return {
            route: {"count": e["count"], "statuses": dict(e["statuses"]), "at": list(e["at"])}
            for route, e in self._routes.items()
        }

    def clear(self) -> None:
        self._routes.clear()


def route_name(request: web.Request) -> str:
    """`METHOD /path/{param}`: the route's pattern, or the raw path when nothing matched."""
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else request.path
    return f"{request.method} {pattern}"


def _http_error(exc: web.HTTPException) -> ApiError:
    if exc.status == 413:
        return ApiError(413, INVALID_PARAMETER, f"Invalid field 'body': {exc.text or 'too large'}")
    if exc.status in (404, 405):
        msg = "The API does not exist or has not been published in the environment"
        return ApiError(404, NO_SUCH_API, msg)
    return ApiError(exc.status, INVALID_PARAMETER, exc.reason)


def answer(error: ApiError, request_id: str) -> web.Response:
    """The JSON answer for an error."""
    response = web.json_response(error.body(request_id), status=error.status)
    response.headers.update(error.headers)
    return response


def traffic_middleware(requests: RequestLog, clock: Callable[[], float]) -> Middleware:
    """The aiohttp middleware that ids, logs and turns every failure into an SMS-style answer."""

    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = uuid.uuid4().hex
        route = route_name(request)
        # Admin calls (a test polling the state) would drown the agent's calls in the log.
        logged = not request.path.startswith(ADMIN_PREFIX)
        try:
            response = await _answer(request, handler, request_id)
        except asyncio.CancelledError:
            if logged:
                requests.record(route, RESET_STATUS, clock())
            raise
        response.headers[REQUEST_ID_HEADER] = request_id
        if logged:
            requests.record(route, response.status, clock())
        return response

    return handle


async def _answer(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return answer(exc, request_id)
    except web.HTTPException as exc:
        return answer(_http_error(exc), request_id)
    except Exception:
        # The boundary of one request: an emulator bug answers 500 and the server keeps serving.
        log.exception("emulator_request_failed", route=route_name(request), request_id=request_id)
        return answer(ApiError(500, INTERNAL_ERROR, "Internal server error"), request_id)
