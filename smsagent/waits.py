"""Waiting for an event or a timeout: the one helper every wait of the agent goes through.

Not `asyncio.wait_for`: before Python 3.12 it can swallow a cancellation that arrives just as
the awaited event is set, and a shutdown would then wait on a loop that no longer listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Optional, Protocol


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


async def run_within(awaitable: Awaitable[Any], timeout_s: float) -> bool:
    """Run `awaitable` for at most `timeout_s`; cancel it after that.

    Returns:
        True when it ended in time (its exception, if any, is raised), False when cancelled.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(timeout_s, 0.0))
    except BaseException:
        task.cancel()
        raise
    if done:
        task.result()
        return True
    task.cancel()
    await asyncio.wait({task})
    return False
