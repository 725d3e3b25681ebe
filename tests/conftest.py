"""Suite-wide hooks: no registered test secret may appear in any test's output or logs."""

from __future__ import annotations

import pytest

from tests.support.secrets import LeakCheck


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LeakCheck(), "smsagent-secret-leak-check")
