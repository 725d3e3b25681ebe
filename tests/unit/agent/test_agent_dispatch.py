"""The dispatcher cannot die silently: a failure of its own machinery, outside any handler,
reaches the crash handler (which ends the agent with status 1) instead of leaving a live
process that no longer acts on commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional

import pytest

from smsagent.agent.dispatch import AgentParts, Dispatcher
from smsagent.agent.handler_api import CommandEnvelope, HandlerOutcome
from smsagent.agent.machine import Action
from smsagent.agent.registry import HandlerRegistry
from smsagent.api.enums import CommandName
from tests.support.agentcore import agent_settings, idle_client


class SettleFails:
    """A ledger whose settle fails with an error no retry cures: a bug of the agent's own,
    which no real input produces on purpose, hence this stand-in."""

    def record_of(self, task_id: Optional[str]) -> None:
        return None

    async def settle(self, envelope: CommandEnvelope, outcome: HandlerOutcome) -> None:
        raise RuntimeError("the ledger is broken")

    async def update(self, task_id: Optional[str], change: Any) -> None:
        return None

    async def forget(self, task_id: Optional[str]) -> bool:
        return False


@pytest.mark.timeout(30)
async def test_a_runner_that_fails_is_reported_not_lost(tmp_path: Path) -> None:
    settings = agent_settings(tmp_path)
    broken: Any = SettleFails()
    parts = AgentParts(idle_client(settings), broken, HandlerRegistry.load(), settings)
    crashes: list[tuple[str, BaseException]] = []
    crashed = asyncio.Event()

    def on_crash(name: str, exc: BaseException) -> None:
        crashes.append((name, exc))
        crashed.set()

    dispatcher = Dispatcher(parts, lambda: "server-1", on_crash)
    await dispatcher.open()
    dispatcher.dispatch(CommandEnvelope(CommandName.STOP, Action.cancel_task, 1, "t1"))
    await asyncio.wait_for(crashed.wait(), 20)
    [(name, exc)] = crashes
    assert name == "command_runner"
    assert isinstance(exc, RuntimeError) and "broken" in str(exc)
    await dispatcher.close(1.0)
