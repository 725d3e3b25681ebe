"""UPLOAD_LOG (spec §3.19): the agent's log bundle, secrets removed, uploaded to the OBS bucket
the command names (`command_param.bucket`); the result says where it went, or why it did not.

SMS keeps the task's `log_collect_status` from this result (UPLOADED or UPLOAD_FAIL). A failed
upload is a `fail` result with the reason; the next UPLOAD_LOG tries again. The bundle and the
client library are imported here, when the command comes, never by an agent waiting for work.
The whole command is bounded (`UPLOAD_TIMEOUT_S`), since commands after it wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
import time
from pathlib import Path
from typing import Callable, ClassVar, Final, Optional, TypeVar

from pydantic import JsonValue

from smsagent.agent.handler_api import CommandEnvelope, HandlerContext, HandlerOutcome
from smsagent.api.enums import CommandName
from smsagent.api.errors import SmsError
from smsagent.log import scrub

ERROR_BAD_BUCKET: Final = "SMSAGENT.LOG_BUCKET_INVALID"
ERROR_NO_AKSK: Final = "SMSAGENT.LOG_UPLOAD_NEEDS_AKSK"
ERROR_UPLOAD_FAILED: Final = "SMSAGENT.LOG_UPLOAD_FAILED"
ERROR_UPLOAD_TIMEOUT: Final = "SMSAGENT.LOG_UPLOAD_TIMEOUT"
UPLOAD_TIMEOUT_S: Final = 300.0
TASK_FILE: Final = "task.json"

T = TypeVar("T")


class UploadLogHandler:
    """UPLOAD_LOG: bundle, upload, answer success with the object's name or fail with why."""

    commands: ClassVar[frozenset[CommandName]] = frozenset({CommandName.UPLOAD_LOG})
    task_types: ClassVar[frozenset[str]] = frozenset()

    async def handle(self, ctx: HandlerContext, command: CommandEnvelope) -> HandlerOutcome:
        """Upload the bundle; every failure is a `fail` result naming its reason."""
        from smsagent.commands.obsupload import bucket_problem

        problem = bucket_problem(command.bucket)
        if problem is not None or command.bucket is None:
            ctx.log.warning("log_upload_refused", error_code=ERROR_BAD_BUCKET)
            return HandlerOutcome.failure(ERROR_BAD_BUCKET, problem or "no bucket")
        if ctx.settings.ak is None or ctx.settings.sk is None:
            message = (
                "the log upload to OBS signs with an AK/SK, and this agent has none "
                "(set SMSAGENT_AK and SMSAGENT_SK)"
            )
            return HandlerOutcome.failure(ERROR_NO_AKSK, message, detail={"bucket": command.bucket})
        ctx.log.info("log_upload_started", bucket=command.bucket)
        try:
            return await asyncio.wait_for(_upload(ctx, command.bucket), UPLOAD_TIMEOUT_S)
        except asyncio.TimeoutError:
            message = f"the log upload to bucket {command.bucket} took over {UPLOAD_TIMEOUT_S:g} s"
            ctx.log.warning("log_upload_failed", error=message)
            return HandlerOutcome.failure(
                ERROR_UPLOAD_TIMEOUT, message, detail={"bucket": command.bucket}
            )


async def _upload(ctx: HandlerContext, bucket: str) -> HandlerOutcome:
    from smsagent.commands import logbundle, obsupload

    settings = ctx.settings
    task_id = ctx.task_id or stored_task_id(settings.state_dir)
    try:
        target = obsupload.obs_target(settings, bucket, await _task_region(ctx, task_id))
    except obsupload.UploadError as exc:
        return _failed(ctx, ERROR_UPLOAD_FAILED, str(exc), bucket)
    now_s = ctx.clock()
    bundle = await logbundle.collect(logbundle.Facts(settings, task_id, ctx.server_id, now_s))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s))
    top = f"smsagent-logs-{stamp}"
    name = f"smsagent/{ctx.server_id or 'unregistered'}/{task_id or 'no-task'}/{top}.tar.gz"
    data = await in_daemon_thread(lambda: logbundle.archive(bundle, now_s, top))
    try:
        receipt = await in_daemon_thread(lambda: obsupload.upload(settings, target, name, data))
    except obsupload.UploadError as exc:
        return _failed(ctx, ERROR_UPLOAD_FAILED, str(exc), bucket)
    detail: dict[str, JsonValue] = {
        "bucket": bucket,
        "object": receipt.object_name,
        "size": receipt.size,
        "endpoint": target.endpoint,
    }
    ctx.log.info("log_uploaded", bucket=bucket, object=receipt.object_name, size=receipt.size)
    return HandlerOutcome.success(
        f"the logs were uploaded to bucket {bucket} as {receipt.object_name}", detail=detail
    )


def _failed(ctx: HandlerContext, error_code: str, reason: str, bucket: str) -> HandlerOutcome:
    message = scrub(reason)
    ctx.log.warning("log_upload_failed", error=message, error_code=error_code)
    return HandlerOutcome.failure(error_code, message, detail={"bucket": bucket})


async def _task_region(ctx: HandlerContext, task_id: Optional[str]) -> Optional[str]:
    """The task's region as SMS describes it; None when it cannot be read now."""
    if task_id is None:
        return None
    try:
        task = await ctx.client.show_task(task_id)
    except SmsError as exc:
        ctx.log.info("log_upload_task_unread", error=str(exc))
        return None
    return task.region_id


def stored_task_id(state_dir: Path) -> Optional[str]:
    """The id of the task the state directory holds, for an UPLOAD_LOG that names none."""
    try:
        document = json.loads((state_dir / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    task_id = document.get("task_id") if isinstance(document, dict) else None
    return task_id if isinstance(task_id, str) and task_id else None


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """Run blocking `work` in a daemon thread: a shutdown does not wait for an upload stuck on
    the network (the default executor's threads would hold the process until they end)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        deliver: Callable[[], None]
        try:
            deliver = functools.partial(future.set_result, work())
        except BaseException as exc:  # handed to the waiting coroutine, which raises it
            deliver = functools.partial(future.set_exception, exc)
        # A loop that has closed has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, deliver)

    threading.Thread(target=run, name="smsagent-log-upload", daemon=True).start()
    return await future
