"""`smsagent status` as an operator runs it, beside a real agent against the emulator: it says
whether the agent runs from the lock the agent holds, and shows the last good poll's time once
the agent stopped; it never calls the connection ok when no agent runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import pytest

from tests.support.agent import AgentProcess, wait_for_polls
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.timeout(90)

CLI_TIMEOUT_S: Final = 30.0


def status(state_dir: Path) -> tuple[int, dict[str, str]]:
    """The exit code and the table's rows by name."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
    done = subprocess.run(
        [sys.executable, "-m", "smsagent", "status", "--state-dir", str(state_dir)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    rows = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition("  ")
        rows[name] = value.strip()
    return done.returncode, rows


def recorded_poll(state_dir: Path) -> str:
    """The last good poll of `connection.json`, as `status` prints times."""
    stamp = json.loads((state_dir / "connection.json").read_text())["last_ok_at"]
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_running_then_stopped(emulator: EmulatorProcess, tmp_path: Path) -> None:
    """While the agent polls, status says it runs (with its pid); after SIGTERM, that it does
    not, when it stopped, and the time of its last good poll."""
    agent = AgentProcess(emulator, tmp_path / "agent").start()
    try:
        wait_for_polls(emulator, 2, timeout_s=30.0)
        running_code, running = status(agent.state_dir)
        pid = agent.pid
        assert agent.terminate() == 0
    finally:
        agent.stop()
    stopped_code, stopped = status(agent.state_dir)

    assert running_code == 0
    assert running["agent"].startswith(f"running (pid {pid}), started ")
    assert running["connection"] == "ok"
    assert stopped_code == 0
    assert stopped["agent"].startswith("not running; the last one stopped ")
    assert stopped["connection"] == "none: no agent runs"
    assert stopped["last good poll"].startswith(recorded_poll(agent.state_dir))
    assert stopped["last good poll"].endswith(" s ago)")


def test_killed_agent_is_not_running(emulator: EmulatorProcess, tmp_path: Path) -> None:
    """An agent killed with SIGKILL leaves its pid in health.json; status still says no agent
    runs, and that the last one did not stop cleanly."""
    agent = AgentProcess(emulator, tmp_path / "agent").start()
    try:
        wait_for_polls(emulator, 2, timeout_s=30.0)
        agent.kill9()
    finally:
        agent.stop()
    code, rows = status(agent.state_dir)

    assert code == 0
    assert rows["agent"] == "not running; the last one ended without stopping (killed or crashed)"
    assert rows["connection"] == "none: no agent runs"
    assert rows["last good poll"] != "never"
