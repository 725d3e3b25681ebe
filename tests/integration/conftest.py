"""Fixtures: a real `smsagent emulator` process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulator import EmulatorFactory, EmulatorProcess


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator with the default flags (command delivery `once`, no faults), stopped after."""
    with EmulatorProcess(tmp_path / "emulator").started() as process:
        yield process


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[EmulatorFactory]:
    """`start_emulator(command_delivery="repeat", seed=1)` starts one; all stop after the test."""
    factory = EmulatorFactory(tmp_path)
    yield factory
    factory.stop_all()
