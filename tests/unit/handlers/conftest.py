"""Fixtures of the handler tests: a state directory, settings, the installed handlers, and a
runner that starts a handler's work in a real work slot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable, Optional

import pytest

from smsagent.agent.handlers import (
    CommandEnvelope,
    Handler,
    HandlerOutcome,
    HandlerRegistry,
    invoke,
)
from smsagent.agent.machine import Action
from smsagent.agent.store import TASK, Store, TaskRecord
from smsagent.agent.work import WorkSlot
from smsagent.api.enums import CommandName
from smsagent.api.models import Task
from smsagent.config import Settings
from tests.support.agentcore import ProgressLog, agent_settings, handler_context


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return agent_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> Store:
    opened = Store(settings.state_dir)
    opened.open()
    return opened


@pytest.fixture(scope="session")
def registry() -> HandlerRegistry:
    """The handlers installed through entry points: the built-ins and the FSCOPY_TEST plugin."""
    return HandlerRegistry.load()


class Runner:
    """Starts handlers the way the poller does: work in the slot, commands as their own calls."""

    def __init__(self, store: Store, settings: Settings, registry: HandlerRegistry) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.slot: WorkSlot[HandlerOutcome] = WorkSlot()
        self.progress = ProgressLog()

    def remember(self, record: TaskRecord) -> None:
        self.store.save(TASK, record)

    def start_work(
        self, envelope: CommandEnvelope, handler: Optional[Handler] = None
    ) -> asyncio.Task[HandlerOutcome]:
        chosen = handler or self.registry.resolve(envelope)
        assert envelope.task_id is not None
        return self.slot.start(
            envelope.task_id,
            lambda token: invoke(
                chosen,
                handler_context(
                    self.store,
                    self.settings,
                    progress=self.progress,
                    cancel=token,
                    work=self.slot,
                    task_id=envelope.task_id,
                ),
                envelope,
            ),
        )

    async def command(self, envelope: CommandEnvelope) -> HandlerOutcome:
        ctx = handler_context(
            self.store,
            self.settings,
            progress=self.progress,
            work=self.slot,
            task_id=envelope.task_id,
        )
        return await invoke(self.registry.resolve(envelope), ctx, envelope)


@pytest.fixture
def runner(store: Store, settings: Settings, registry: HandlerRegistry) -> Runner:
    return Runner(store, settings, registry)


def envelope(
    command: CommandName,
    action: Action,
    task_id: str = "t1",
    task: Optional[Task] = None,
    sequence: int = 1,
) -> CommandEnvelope:
    """A command as the poller would hand it over, for an FSCOPY_TEST task."""
    return CommandEnvelope(command, action, sequence, task_id, "FSCOPY_TEST", task)


EnvelopeFactory = Callable[..., CommandEnvelope]


@pytest.fixture
def make_envelope() -> EnvelopeFactory:
    return envelope
