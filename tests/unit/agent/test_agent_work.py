"""Cancellation tokens and the work slot: stop by command vs shutdown, skip, bounded stops."""

from __future__ import annotations

import asyncio

import pytest

from smsagent.agent.work import CancelReason, CancelToken, StopResult, WorkCancelled, WorkSlot


class TestCancelToken:
    def test_first_reason_wins(self) -> None:
        """A shutdown after a STOP does not turn the stop into an interruption."""
        token = CancelToken()
        assert not token.cancelled and token.reason is None
        token.raise_if_cancelled()
        token.cancel(CancelReason.command)
        token.cancel(CancelReason.shutdown)
        assert token.reason is CancelReason.command
        with pytest.raises(WorkCancelled) as caught:
            token.raise_if_cancelled()
        assert caught.value.reason is CancelReason.command

    async def test_wait_returns_the_reason(self) -> None:
        """A waiter wakes with the reason when another task cancels."""
        token = CancelToken()
        waiter = asyncio.ensure_future(token.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        token.cancel(CancelReason.shutdown)
        assert await asyncio.wait_for(waiter, 5) is CancelReason.shutdown
        assert await token.wait() is CancelReason.shutdown

    def test_skip_is_taken_once(self) -> None:
        """A skip request is seen by the first stage that asks, and only by it."""
        token = CancelToken()
        assert not token.take_skip()
        token.request_skip()
        assert token.take_skip()
        assert not token.take_skip()


async def _cooperative(token: CancelToken, started: asyncio.Event) -> str:
    started.set()
    reason = await token.wait()
    return f"ended by {reason.value}"


class TestWorkSlot:
    async def test_stop_by_command(self) -> None:
        """Stopping cooperative work returns once it ended, and it saw the command reason."""
        slot: WorkSlot[str] = WorkSlot()
        started = asyncio.Event()
        task = slot.start("t1", lambda token: _cooperative(token, started))
        await started.wait()
        assert slot.busy and slot.task_id == "t1"
        assert await slot.stop(CancelReason.command, 5.0) is StopResult.stopped
        assert task.result() == "ended by command"
        assert not slot.busy and slot.task_id is None

    async def test_one_work_at_a_time(self) -> None:
        """Starting work while work runs is refused."""
        slot: WorkSlot[str] = WorkSlot()
        started = asyncio.Event()
        slot.start("t1", lambda token: _cooperative(token, started))
        with pytest.raises(RuntimeError, match="t1"):
            slot.start("t2", lambda token: _cooperative(token, asyncio.Event()))
        await slot.stop(CancelReason.shutdown, 5.0)

    async def test_stop_with_nothing_running(self) -> None:
        """Stopping an empty slot says so at once."""
        assert await WorkSlot[str]().stop(CancelReason.command, 5.0) is StopResult.idle

    async def test_work_that_ignores_the_token_is_cancelled(self) -> None:
        """Work that never reaches a checkpoint is cancelled after the timeout."""
        slot: WorkSlot[None] = WorkSlot()
        never = asyncio.Event()

        async def stubborn(token: CancelToken) -> None:
            await never.wait()

        task = slot.start("t1", stubborn)
        assert await slot.stop(CancelReason.command, 0.2) is StopResult.killed
        assert task.cancelled()

    async def test_skip_reaches_the_running_work(self) -> None:
        """A skip request goes to the running work's token; with nothing running it is refused."""
        slot: WorkSlot[str] = WorkSlot()
        assert not slot.request_skip()
        started = asyncio.Event()
        slot.start("t1", lambda token: _cooperative(token, started))
        await started.wait()
        assert slot.request_skip()
        token = slot.token
        assert token is not None and token.take_skip()
        await slot.stop(CancelReason.shutdown, 5.0)
