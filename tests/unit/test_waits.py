"""The one wait helper: an event or a timeout (`wait_any`), an operation or a timeout
(`within`); neither swallows the caller's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from smsagent.agent.work import CancelReason, CancelToken
from smsagent.waits import wait_any, within


async def test_wait_any_returns_true_for_the_first_event_false_on_the_timeout() -> None:
    event, token = asyncio.Event(), CancelToken()
    assert not await wait_any(event, token, timeout_s=0.01)
    asyncio.get_running_loop().call_later(0.01, token.cancel, CancelReason.command)
    assert await wait_any(event, token, timeout_s=10)
    event.set()
    assert await wait_any(event, timeout_s=0)


async def test_within_gives_the_result_or_raises_the_timeout() -> None:
    assert await within(asyncio.sleep(0, result="done"), 5) == "done"
    with pytest.raises(asyncio.TimeoutError):
        await within(asyncio.sleep(10), 0.01)


@pytest.mark.parametrize("helper", ["wait_any", "within"])
async def test_a_cancel_of_the_caller_is_never_swallowed(helper: str) -> None:
    """The caller is cancelled just as what it waits for completes: it still ends cancelled
    (what `asyncio.wait_for` before 3.12 could lose)."""
    for _ in range(50):
        event = asyncio.Event()
        if helper == "wait_any":
            waiter = asyncio.ensure_future(wait_any(event, timeout_s=10))
        else:
            waiter = asyncio.ensure_future(within(event.wait(), 10))
        await asyncio.sleep(0)
        event.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
