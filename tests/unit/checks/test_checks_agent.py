"""`smsagent check` and `smsagent status` show what the agent reports of itself in
`health.json`: a fault while it runs is an ERROR, the fault its last run ended with a WARN."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from smsagent.agent.health import HEALTH_FILE, HealthFile
from smsagent.api.enums import CheckResult
from smsagent.checks.install import AGENT_FAULT, agent_check
from smsagent.status import collect, render

FULL = "state directory /var/lib/smsagent: No space left on device"


def _health(state_dir: Path) -> HealthFile:
    state_dir.mkdir(parents=True, exist_ok=True)
    health = HealthFile(state_dir)
    health.open()
    return health


def test_a_running_agents_fault_is_an_error(tmp_path: Path) -> None:
    health = _health(tmp_path)
    health.set_fault(FULL)
    check = agent_check(tmp_path)
    assert check.result is CheckResult.ERROR and check.error_code == AGENT_FAULT
    assert FULL in check.reason
    report = collect(tmp_path)
    assert report["fault"] == FULL
    assert FULL in render(report, now_s=report["fault_since"] + 5)
    health.clear_fault()
    assert agent_check(tmp_path).result is CheckResult.OK
    assert collect(tmp_path)["fault"] is None


def test_the_fault_a_stopped_agent_ended_with_is_a_warning(tmp_path: Path) -> None:
    health = _health(tmp_path)
    health.set_fault("command_runner crashed: RuntimeError: boom")
    health.close()
    check = agent_check(tmp_path)
    assert check.result is CheckResult.WARN and "ended with" in check.reason


def test_a_fault_of_a_process_that_is_gone_is_not_called_running(tmp_path: Path) -> None:
    """A killed agent (kill -9) leaves its pid behind; a pid that no longer runs is not it."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    health = _health(tmp_path)
    health.set_fault(FULL)
    left = json.loads((tmp_path / HEALTH_FILE).read_bytes())
    (tmp_path / HEALTH_FILE).write_text(json.dumps({**left, "pid": int(gone.stdout)}))
    check = agent_check(tmp_path)
    assert check.result is CheckResult.WARN and FULL in check.reason


def test_no_health_file_is_fine(tmp_path: Path) -> None:
    assert agent_check(tmp_path).result is CheckResult.OK
    assert collect(tmp_path)["fault"] is None
