"""Fixtures of the handler tests: a state directory, settings, the installed handlers, and a
runner that starts handlers the way the poller does."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsagent.agent.registry import HandlerRegistry
from smsagent.agent.store import Store
from smsagent.config import Settings
from tests.support.agentcore import Runner, agent_settings


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


@pytest.fixture
def runner(store: Store, settings: Settings, registry: HandlerRegistry) -> Runner:
    return Runner(store, settings, registry)
