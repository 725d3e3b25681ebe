"""Suite-wide hooks and fixtures: no registered test secret may appear in any test's output or
logs; a real `smsagent emulator` process per test, for every directory that talks to one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.secrets import LeakCheck


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LeakCheck(), "smsagent-secret-leak-check")


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """An emulator with the default flags (command delivery `once`, no faults), stopped after.

    A module that needs other flags overrides this fixture, starting its emulator with
    `start_emulator(...)`.
    """
    with EmulatorProcess(tmp_path / "emulator").started() as process:
        yield process


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[EmulatorFactory]:
    """`start_emulator(command_delivery="repeat", seed=1)` starts one; all stop after the test."""
    factory = EmulatorFactory(tmp_path)
    yield factory
    factory.stop_all()
