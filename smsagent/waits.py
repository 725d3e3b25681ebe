"""Waiting with a time limit: for an event (`wait_any`) or for an operation (`within`). Every
wait of the agent goes through one of the two.

Not `asyncio.wait_for`: before Python 3.12 it can swallow a cancellation that arrives just as
the awaited event is set or the operation ends, and a shutdown would then wait on a loop that
no longer listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Optional, Protocol, TypeVar

T = TypeVar("T")


class Waitable(Protocol):
    """Anything with an `async wait()` that returns once it happened (`asyncio.Event`, a
    cancel token)."""

    def wait(self) -> Awaitable[Any]:
        """Return once it happened."""


async def wait_any(*waitables: Waitable, timeout_s: Optional[float]) -> bool:
    """Wait until one of `waitables` happened or `timeout_s` passed (None: no limit).

    Returns:
        True when one happened, False on the timeout.
    """
    if any(isinstance(w, asyncio.Event) and w.is_set() for w in waitables):
        return True
    waiters = [asyncio.ensure_future(w.wait()) for w in waitables]
    timeout = None if timeout_s is None else max(timeout_s, 0.0)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """The result of `awaitable` if it ends within `timeout_s`; else it is cancelled and
    `asyncio.TimeoutError` raised. A cancellation of the caller cancels it too, and is never
    swallowed.

    Raises:
        asyncio.TimeoutError: the time was up first.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout_s, 0.0))
    except BaseException:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    raise asyncio.TimeoutError
