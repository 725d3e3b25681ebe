"""The running agent polls a healthy emulator at the schedule's rates: the idle interval with no
task, the active interval while a task runs, each within the jitter the schedule allows.

Polls are read from the emulator's request log (the time each command request was answered),
counted over a window that opens with a poll, and compared with the fewest and the most polls
the schedule allows in that window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from smsagent.agent.backoff import JITTER
from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorProcess
from tests.support.fscopy import CopyJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

COMMAND_ROUTE = "GET /v3/sources/{server_id}/command"
IDLE_INTERVAL_S = 2.0
# Above the one-second floor between polls (`MIN_POLL_GAP_S`), which would otherwise set the
# rate instead of the schedule.
ACTIVE_INTERVAL_S = 1.5
IDLE_WINDOW_S = 10.0
ACTIVE_WINDOW_S = 6.0
# What one poll adds to the delay before the next: the request and its answer, the state file
# written after it, a source-state report when the task's state changed, all on a shared machine.
POLL_WORK_S = 0.4
# The emulator stamps answers with the wall clock, the agent times delays on the monotonic one.
CLOCK_TOLERANCE_S = 0.01
# The copy pauses this long after each file: 30 files keep the task active for 15 s or more.
FILE_DELAY_S = 0.5


def poll_bounds(window_s: float, interval_s: float) -> tuple[int, int]:
    """The fewest and the most polls in a window of `window_s` that opens with a poll.

    After each poll the agent waits `interval_s` scaled by a factor in [1 - JITTER, 1 + JITTER].
    So polls are at least the shortest delay apart: at most window/shortest gaps fit after the
    opening poll. And they are at most the longest delay plus the work of one poll apart: at
    least window/longest gaps do.
    """
    shortest_s = interval_s * (1 - JITTER)
    longest_s = interval_s * (1 + JITTER) + POLL_WORK_S
    return math.floor(window_s / longest_s) + 1, math.floor(window_s / shortest_s) + 1


def poll_times(state: dict[str, Any]) -> list[float]:
    """When the emulator answered each command poll, oldest first."""
    return sorted(state["requests"].get(COMMAND_ROUTE, {}).get("at", []))


def polled_after(moment_s: float) -> Callable[[dict[str, Any]], list[float]]:
    """A state predicate: every poll time, once the agent has polled after `moment_s`."""

    def times(state: dict[str, Any]) -> list[float]:
        polls = poll_times(state)
        return polls if polls and polls[-1] > moment_s else []

    return times


def in_window(times: list[float], opens_s: float, length_s: float) -> list[float]:
    return [at for at in times if opens_s <= at <= opens_s + length_s]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


def start_delivered_at(state: dict[str, Any]) -> float:
    """When the emulator handed the START command to the agent (0 while it has not)."""
    for command in state["commands"]:
        if command["command_name"] == "START" and command["delivered_at"] is not None:
            return float(command["delivered_at"])
    return 0.0


@pytest.fixture
def agent(emulator: EmulatorProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    settings = {
        "SMSAGENT_POLL_INTERVAL": str(IDLE_INTERVAL_S),
        "SMSAGENT_ACTIVE_POLL_INTERVAL": str(ACTIVE_INTERVAL_S),
    }
    process = AgentProcess(emulator, tmp_path / "agent", settings=settings).start()
    yield process
    process.stop()


def test_polls_at_the_idle_rate_then_at_the_active_rate_while_a_task_runs(
    emulator: EmulatorProcess, agent: AgentProcess, tmp_path: Path
) -> None:
    """With no task the agent polls every 2 s +-20 %; once START is taken and the task copies,
    every 0.5 s +-20 %: counts within the schedule's bounds, no two polls closer than it allows."""
    source_id: str = agent.wait_for_event("agent_ready")["server_id"]
    idle_opens_s = emulator.wait_for(poll_times)[0]
    polls = emulator.wait_for(
        polled_after(idle_opens_s + IDLE_WINDOW_S),
        timeout_s=IDLE_WINDOW_S + 2 * IDLE_INTERVAL_S + 5.0,
    )
    idle = in_window(polls, idle_opens_s, IDLE_WINDOW_S)

    job = CopyJob.build(tmp_path / "tree", files=30)
    task_id = job.create_task(emulator, source_id, file_delay_s=FILE_DELAY_S)
    emulator.action(task_id, "start")
    delivered_s = emulator.wait_for(start_delivered_at)
    # The poll that took START opens the window: the agent is busy from its answer on.
    active_opens_s = emulator.wait_for(lambda s: in_window(poll_times(s), delivered_s, 60.0))[0]
    polls = emulator.wait_for(
        polled_after(active_opens_s + ACTIVE_WINDOW_S),
        timeout_s=ACTIVE_WINDOW_S + 2 * ACTIVE_INTERVAL_S + 5.0,
    )
    active = in_window(polls, active_opens_s, ACTIVE_WINDOW_S)
    # The window only measures the active rate if the task was still copying when it closed.
    assert not emulator.results(source_id), "the task ended inside the active window"

    idle_low, idle_high = poll_bounds(IDLE_WINDOW_S, IDLE_INTERVAL_S)
    assert idle_low <= len(idle) <= idle_high, idle
    assert min(gaps(idle)) >= IDLE_INTERVAL_S * (1 - JITTER) - CLOCK_TOLERANCE_S, gaps(idle)
    active_low, active_high = poll_bounds(ACTIVE_WINDOW_S, ACTIVE_INTERVAL_S)
    assert active_low <= len(active) <= active_high, active
    assert min(gaps(active)) >= ACTIVE_INTERVAL_S * (1 - JITTER) - CLOCK_TOLERANCE_S, gaps(active)
    assert agent.problems() == []
