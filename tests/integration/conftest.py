"""Fixtures of the whole-agent tests: a real `smsagent run` child against the test's emulator
(the emulator fixtures themselves are suite-wide, in `tests/conftest.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorProcess


@pytest.fixture
def agent(emulator: EmulatorProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent with `FAST_SETTINGS` started in `tmp_path / "agent"` against the `emulator`
    the test uses (a module's own `emulator` fixture, when it has one); killed after."""
    process = AgentProcess(emulator, tmp_path / "agent").start()
    yield process
    process.stop()
