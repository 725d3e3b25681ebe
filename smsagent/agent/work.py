"""Cancellation of migration work, and the slot that runs one piece of work at a time.

Cancellation is data: a STOP (or a TASK_* notice) cancels with `CancelReason.command`, and the
task ends `stopped` with a result owed; agent shutdown cancels with `CancelReason.shutdown`, and
the stage stays resumable with nothing sent. Work notices either at its checkpoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from enum import Enum
from typing import Callable, Final, Generic, Optional, Protocol, TypeVar

ResultT = TypeVar("ResultT")


class CancelReason(str, Enum):
    """Why work is asked to stop."""

    command = "command"
    shutdown = "shutdown"


class WorkCancelled(Exception):
    """Raised at a checkpoint of work that was asked to stop."""

    def __init__(self, reason: CancelReason) -> None:
        self.reason = reason
        super().__init__(f"stopped by {reason.value}")


class StopResult(str, Enum):
    """How a request to stop work ended."""

    idle = "idle"
    stopped = "stopped"
    killed = "killed"


class Flag:
    """A flag that can be waited for. Its event is made on the first wait, so construction
    touches no event loop (on Python 3.9 an event binds to the loop current when it is made)."""

    def __init__(self) -> None:
        self._raised = False
        self._event: Optional[asyncio.Event] = None

    @property
    def raised(self) -> bool:
        """Whether the flag is up."""
        return self._raised

    def raise_flag(self) -> None:
        """Put the flag up and wake its waiters."""
        self._raised = True
        if self._event is not None:
            self._event.set()

    def lower(self) -> bool:
        """Take the flag down; whether it was up."""
        was_raised, self._raised = self._raised, False
        if self._event is not None:
            self._event.clear()
        return was_raised

    async def wait(self) -> None:
        """Return once the flag is up."""
        if self._raised:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


class CancelToken:
    """Tells work that it should stop, and why; and whether to skip the stage it is in.

    The first reason given wins. Construction touches no event loop.
    """

    def __init__(self) -> None:
        self._reason: Optional[CancelReason] = None
        self._stop = Flag()
        self.skip_requests: Final = Flag()
        """Up when a SKIP asked the work to skip its stage; a skippable stage waits on it."""

    @property
    def reason(self) -> Optional[CancelReason]:
        """Why work should stop, or None while it may go on."""
        return self._reason

    @property
    def cancelled(self) -> bool:
        """Whether work should stop."""
        return self._reason is not None

    def cancel(self, reason: CancelReason) -> None:
        """Ask the work to stop at its next checkpoint."""
        if self._reason is None:
            self._reason = reason
        self._stop.raise_flag()

    def raise_if_cancelled(self) -> None:
        """A checkpoint: raise `WorkCancelled` if the work should stop."""
        if self._reason is not None:
            raise WorkCancelled(self._reason)

    async def wait(self) -> CancelReason:
        """Return once the work should stop, with the reason."""
        await self._stop.wait()
        assert self._reason is not None
        return self._reason

    def request_skip(self) -> None:
        """Ask the work to skip the stage it is in, if that stage may be skipped."""
        self.skip_requests.raise_flag()

    def take_skip(self) -> bool:
        """Whether a skip was requested since the last call (a skippable stage asks this)."""
        return self.skip_requests.lower()


class WorkControl(Protocol):
    """What command handlers may do to the work in progress."""

    @property
    def task_id(self) -> Optional[str]:
        """The task whose work runs, or None."""

    async def stop(self, reason: CancelReason, timeout_s: float) -> StopResult:
        """Ask the work to stop and wait until it ended (or was killed after `timeout_s`)."""

    def request_skip(self) -> bool:
        """Ask the work to skip its current stage; False when no work runs."""


class WorkSlot(Generic[ResultT]):
    """Runs at most one piece of migration work as its own asyncio task.

    The poller starts work here and keeps the returned task to reap its result; command
    handlers stop it through the `WorkControl` methods.
    """

    def __init__(self) -> None:
        self._task: Optional[asyncio.Task[ResultT]] = None
        self._token: Optional[CancelToken] = None
        self._task_id: Optional[str] = None

    @property
    def task_id(self) -> Optional[str]:
        """The task whose work runs, or None."""
        return self._task_id if self.busy else None

    @property
    def busy(self) -> bool:
        """Whether work runs."""
        return self._task is not None and not self._task.done()

    @property
    def token(self) -> Optional[CancelToken]:
        """The running work's token."""
        return self._token if self.busy else None

    def start(
        self,
        task_id: str,
        work: Callable[[CancelToken], Coroutine[object, object, ResultT]],
        name: Optional[str] = None,
    ) -> asyncio.Task[ResultT]:
        """Start `work(token)` as a task; must be called with a running loop and a free slot.

        Raises:
            RuntimeError: work is already running.
        """
        if self.busy:
            raise RuntimeError(f"work for task {self._task_id} is already running")
        token = CancelToken()
        task = asyncio.ensure_future(work(token))
        if name:
            task.set_name(name)
        self._task, self._token, self._task_id = task, token, task_id
        return task

    async def stop(self, reason: CancelReason, timeout_s: float) -> StopResult:
        """Ask the work to stop; after `timeout_s` cancel its task. Returns how it ended."""
        task, token = self._task, self._token
        if task is None or token is None or task.done():
            return StopResult.idle
        token.cancel(reason)
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if done:
            return StopResult.stopped
        task.cancel()
        # Work that swallows the cancellation is beyond help; do not wait for it forever.
        await asyncio.wait({task}, timeout=timeout_s)
        return StopResult.killed

    def request_skip(self) -> bool:
        """Ask the running work to skip its current stage; False when nothing runs."""
        token = self.token
        if token is None:
            return False
        token.request_skip()
        return True
