"""A storm of SIGHUPs to the whole agent: an operator (or a config tool run in a loop) asking
for reloads faster than the agent can carry them out must not kill it.

Each SIGHUP asks for a reload; one that arrives while a reload is under way must be taken as a
request too, never fall through to the default action of SIGHUP (the end of the process).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Optional

import pytest

from tests.support.agent import AgentProcess, wait_for_polls
from tests.support.emulator import EmulatorProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SIGHUPS = 100
SIGHUP_SPACING_S = 0.02
RELOADED_TIMEOUT_S = 30.0
POLLS_AFTER_STORM = 3
POLLS_TIMEOUT_S = 20.0


def send_sighups(agent: AgentProcess, count: int, spacing_s: float) -> int:
    """Send `count` SIGHUPs `spacing_s` apart, the last one after the others; returns how many
    were sent (fewer when the process disappeared on the way).

    The process is not reaped here: a dead agent stays a zombie that takes signals without an
    error, so a death mid-storm is seen afterwards, with its exit code.
    """
    pid = agent.pid
    assert pid is not None
    for sent in range(count):
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return sent
        time.sleep(spacing_s)
    return count


def exit_code_if_dead(agent: AgentProcess) -> Optional[int]:
    """None while the agent runs; its exit code once it ended (then its log is read to the end)."""
    return None if agent.running else agent.wait_exit()


def describe_exit(code: int) -> str:
    """`exit 3`, or `killed by SIGHUP` for a death by signal (a shell shows that as 129)."""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def test_a_storm_of_sighups_reloads_and_keeps_the_agent_polling(
    emulator: EmulatorProcess, agent: AgentProcess
) -> None:
    """100 SIGHUPs 20 ms apart: the agent is still running after them, logs `settings_reloaded`
    for a SIGHUP of the storm's end, goes on polling the server, and exits 0 at SIGTERM."""
    agent.wait_for_event("agent_ready")
    wait_for_polls(emulator, 1)

    sent = send_sighups(agent, SIGHUPS - 1, SIGHUP_SPACING_S)
    # Counted just before the last SIGHUP: the reload waited for below comes at the end of the
    # storm, not from its first signals.
    reloads_before_last = len(agent.events("settings_reloaded"))
    sent += send_sighups(agent, 1, 0.0)

    code = exit_code_if_dead(agent)
    if code is not None:
        tail = [event.get("event") for event in agent.events()[-20:]]
        pytest.fail(
            f"the agent ended ({describe_exit(code)}) during the SIGHUP storm, {sent} of "
            f"{SIGHUPS} sent; last events: {tail}"
        )
    agent.wait_for_count("settings_reloaded", reloads_before_last + 1, timeout_s=RELOADED_TIMEOUT_S)
    wait_for_polls(emulator, POLLS_AFTER_STORM, timeout_s=POLLS_TIMEOUT_S)
    assert agent.running

    assert agent.terminate() == 0
    assert agent.events("agent_stopped")
    tracebacks = [event for event in agent.events() if "Traceback" in str(event)]
    assert tracebacks == []
