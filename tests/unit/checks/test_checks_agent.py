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
# An agent's health file in a process of its own, which the test kills like an agent.
HOLDER = """
import sys, time
from pathlib import Path
from smsagent.agent.health import HealthFile
health = HealthFile(Path(sys.argv[1]))
health.open()
health.set_fault(sys.argv[2])
print("ready", flush=True)
time.sleep(60)
"""


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
    """A killed agent (kill -9) leaves its pid and fault behind; the lock it held went with it,
    so the fault is its last run's (WARN), and `status` says no agent runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), FULL],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        while_running = agent_check(tmp_path)
        running_report = collect(tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    check = agent_check(tmp_path)
    report = collect(tmp_path)

    assert while_running.result is CheckResult.ERROR and f"pid {holder.pid}" in while_running.reason
    assert running_report["agent_running"] is True
    assert check.result is CheckResult.WARN and FULL in check.reason
    assert json.loads((tmp_path / HEALTH_FILE).read_bytes())["pid"] == holder.pid
    assert report["agent_running"] is False and report["agent_pid"] is None
    assert "ended without stopping" in render(report, now_s=report["agent_started_at"] + 1)


def test_no_health_file_is_fine(tmp_path: Path) -> None:
    assert agent_check(tmp_path).result is CheckResult.OK
    assert collect(tmp_path)["fault"] is None
