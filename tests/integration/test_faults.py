"""The running agent rides out a failing SMS: it never exits, never polls in a tight loop, and
recovers by itself once the faults stop (registers, polls, delivers what it owes, takes START).

How many command requests a fault window may hold follows from the schedule, not from a guess.
The emulator stamps each request when it answers (or resets) it; the agent sends the next poll
only after that answer reached it and after a delay of at least `error_delay_bounds(1, cap)[0]`
(1 s) - the idle (0.8 x 2 s) and active (0.8 x 1.5 s) delays used here are longer, and no
command handler settles inside a window to wake the loop early. Hence:

- schedule bound: `max_requests_in_window(window, cap)` polls, plus one request per resend.
  Two resends exist: aiohttp sends an idempotent request (the command GET) once more when its
  connection drops, so one per reset; and the client sends a request once more with a renewed
  token after a 401, so one per 401.
- latency: while every answer is delayed by `latency_s`, consecutive polls are at least
  1 s + `latency_s` apart, which tightens the bound to `window / (1 + latency) + 1` (+ resends).
- Retry-After only ever lengthens a delay (up to the cap), so it needs no allowance.
- The agent keeps polling: no gap between command requests exceeds the cap plus the latency of
  the two requests a poll makes (an owed result, then the command) and a little slack.

Registration attempts while SMS is down follow the same schedule, and with every request failing
each attempt ends at its first request, so they obey the same bound. The windows are 60 s
(errors, resets, latency, broken bodies; AK/SK), 12 s (an outage at start-up) and 20 s (an
expired token; IAM); the bound scales with the window as `max_requests_in_window` does: 61, 13
and 21 polls at a cap of 8 s, and the 2 s latency tightens the first to 21 (resends aside).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from smsagent.agent.backoff import error_delay_bounds, max_requests_in_window
from tests.support import secrets
from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.fscopy import CopyJob

pytestmark = pytest.mark.slow

COMMAND_ROUTE = "GET /v3/sources/{server_id}/command"
IAM_ROUTE = "POST /v3/auth/tokens"
CAP_S = 8.0
FLOOR_S = error_delay_bounds(1, CAP_S)[0]
SCHEDULE = {
    "SMSAGENT_POLL_INTERVAL": "2",
    "SMSAGENT_ACTIVE_POLL_INTERVAL": "1.5",
    "SMSAGENT_BACKOFF_CAP": str(CAP_S),
}
FAULT_WINDOW_S = 60.0
LATENCY_S = 2.0
FAULTS = {
    "latency_s": LATENCY_S,
    "error_rate": 0.5,
    "error_status": 503,
    "retry_after_s": 3,
    "reset_rate": 0.2,
    "malformed_rate": 0.3,
}
OUTAGE_S = 12.0
EXPIRY_WINDOW_S = 20.0
SLACK_S = 1.5  # a poll's own work and a busy machine's scheduling, on top of the delays
RECOVERY_S = CAP_S + 20.0  # one backoff delay at the cap, then registration or a copy
IAM_USER, IAM_DOMAIN = "migration-operator", "example-account"
IAM_PASSWORD = secrets.new_secret("iam-")


class Window:
    """A span of wall-clock time with the emulator's request log at both ends."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self._emulator = emulator
        self.opens_s = time.time()
        self.before = emulator.state()["requests"]
        self.closes_s = self.opens_s
        self.after: dict[str, Any] = {}

    def close(self) -> None:
        self.after = self._emulator.state()["requests"]
        self.closes_s = time.time()

    @property
    def length_s(self) -> float:
        return self.closes_s - self.opens_s

    def times(self, route: str) -> list[float]:
        """When the requests on `route` inside the window were answered, oldest first."""
        stamps = self.after.get(route, {}).get("at", [])
        return sorted(at for at in stamps if self.opens_s <= at <= self.closes_s)

    def statuses(self, route: str) -> dict[str, int]:
        """How often each status was answered on `route` inside the window (0: reset)."""
        before = self.before.get(route, {}).get("statuses", {})
        after = self.after.get(route, {}).get("statuses", {})
        counts = {status: n - before.get(status, 0) for status, n in after.items()}
        return {status: n for status, n in counts.items() if n > 0}

    def longest_gap_s(self, route: str) -> float:
        """The longest time without a request on `route`, the window's ends included."""
        edges = [self.opens_s, *self.times(route), self.closes_s]
        return max(later - earlier for earlier, later in zip(edges, edges[1:]))


def stay_alive(agent: AgentProcess, until_s: float) -> None:
    """Let the window run to `until_s` (wall clock), failing as soon as the agent exits."""
    while time.time() < until_s:
        assert agent.running, f"the agent exited during the faults: {agent.problems()}"
        time.sleep(min(0.5, max(0.0, until_s - time.time())))


def result_of(command: str, result: str = "success") -> Callable[[dict[str, Any]], Any]:
    """A state predicate: the stored results of `command` with `result`."""
    return lambda state: [
        stored
        for stored in state["command_results"]
        if stored["command_name"] == command and stored["result"] == result
    ]


def polled_since(moment_s: float) -> Callable[[dict[str, Any]], bool]:
    """A state predicate: the agent got an answer to a command poll after `moment_s`."""

    def polled(state: dict[str, Any]) -> bool:
        route = state["requests"].get(COMMAND_ROUTE, {})
        return any(at > moment_s for at in route.get("at", []))

    return polled


def copy_task(emulator: EmulatorProcess, source_id: str, workdir: Path) -> tuple[CopyJob, str]:
    """A small tree to copy and the source's task that copies it."""
    job = CopyJob.build(workdir, files=5)
    return job, job.create_task(emulator, source_id)


def starts_and_finishes(emulator: EmulatorProcess, job: CopyJob, task_id: str) -> None:
    """The console starts the copy task; the agent takes START and its success arrives."""
    emulator.action(task_id, "start")
    emulator.wait_for(result_of("START"), timeout_s=RECOVERY_S)
    assert job.differences() == []


def iam_settings(emulator: EmulatorProcess) -> dict[str, str]:
    """Settings for IAM tokens from the emulator's IAM; the AK/SK given by default are unset."""
    return {
        **SCHEDULE,
        "SMSAGENT_AK": "",
        "SMSAGENT_SK": "",
        "SMSAGENT_IAM_ENDPOINT": emulator.url,
        "SMSAGENT_IAM_USER": IAM_USER,
        "SMSAGENT_IAM_PASSWORD": IAM_PASSWORD,
        "SMSAGENT_IAM_DOMAIN": IAM_DOMAIN,
    }


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agents a test starts; each is stopped after the test however it ended."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


@pytest.mark.timeout(150)
def test_errors_resets_latency_and_broken_bodies_for_a_minute(
    start_emulator: EmulatorFactory, agents: list[AgentProcess], tmp_path: Path
) -> None:
    """A minute of 50 % 503s with Retry-After, resets, 2 s answers and half-sent bodies: the
    agent keeps polling within the schedule's bounds, never exits, and afterwards delivers the
    STOP result it owes and takes a START."""
    emulator = start_emulator(seed=7, redeliver_after=5)
    agent = AgentProcess(emulator, tmp_path / "agent", settings=SCHEDULE).start()
    agents.append(agent)
    source_id: str = agent.wait_for_event("agent_ready")["server_id"]
    emulator.wait_for(polled_since(0.0))
    job, task_id = copy_task(emulator, source_id, tmp_path / "copy")

    window = Window(emulator)
    emulator.set_faults(**FAULTS)
    # A STOP for a task that does not run is answered at once: a result owed during the faults.
    emulator.queue_command(source_id, "STOP", task_id=task_id)
    stay_alive(agent, window.opens_s + FAULT_WINDOW_S)
    emulator.set_faults()
    window.close()

    polls = window.times(COMMAND_ROUTE)
    statuses = window.statuses(COMMAND_ROUTE)
    resends = statuses.get("0", 0)
    # Which faults each poll meets is drawn at random: that some met one is all but certain.
    assert set(statuses) - {"200"} and agent.events("poll_failed"), statuses
    assert len(polls) <= max_requests_in_window(window.length_s, CAP_S) + resends
    latency_bound = math.floor(window.length_s / (FLOOR_S + LATENCY_S)) + 1
    assert len(polls) <= latency_bound + resends, (len(polls), statuses)
    assert window.longest_gap_s(COMMAND_ROUTE) <= CAP_S + 2 * LATENCY_S + SLACK_S, polls

    emulator.wait_for(result_of("STOP"), timeout_s=RECOVERY_S)
    emulator.wait_for(polled_since(time.time()), timeout_s=RECOVERY_S)
    starts_and_finishes(emulator, job, task_id)
    assert [r["command_name"] for r in emulator.results(source_id)] == ["STOP", "START"]
    assert agent.problems() == []
    assert agent.terminate() == 0


@pytest.mark.timeout(120)
def test_registers_after_an_outage_and_renews_an_expired_token(
    start_emulator: EmulatorFactory, agents: list[AgentProcess], tmp_path: Path
) -> None:
    """An IAM-token agent started while SMS answers only 503 registers once it recovers; when
    SMS then refuses its token (and 30 % of calls fail), it fetches a new one and goes on polling
    within the schedule's bounds; afterwards it takes a START."""
    emulator = start_emulator(
        seed=11, iam_user=IAM_USER, iam_password=IAM_PASSWORD, iam_domain=IAM_DOMAIN
    )
    outage = Window(emulator)
    emulator.set_faults(error_rate=1.0, retry_after_s=2)
    agent = AgentProcess(emulator, tmp_path / "agent", settings=iam_settings(emulator)).start()
    agents.append(agent)
    stay_alive(agent, outage.opens_s + OUTAGE_S)
    emulator.set_faults()
    outage.close()

    # Each registration attempt stops at its first request, the token request.
    attempts = outage.times(IAM_ROUTE)
    assert outage.statuses(IAM_ROUTE) == {"503": len(attempts)}
    assert 2 <= len(attempts) <= max_requests_in_window(outage.length_s, CAP_S)
    source_id: str = agent.wait_for_event("agent_ready", timeout_s=RECOVERY_S)["server_id"]
    emulator.wait_for(polled_since(time.time()), timeout_s=RECOVERY_S)

    expiry = Window(emulator)
    emulator.set_faults(expire_tokens=True, error_rate=0.3, retry_after_s=2)
    stay_alive(agent, expiry.opens_s + EXPIRY_WINDOW_S)
    emulator.set_faults()
    expiry.close()

    polls = expiry.times(COMMAND_ROUTE)
    statuses = expiry.statuses(COMMAND_ROUTE)
    # One refusal: the token from before the expiry; every token fetched after it is valid.
    assert statuses.get("401") == 1, statuses
    assert statuses.get("200"), statuses  # polled with a renewed token while expiry was on
    assert expiry.statuses(IAM_ROUTE).get("201"), expiry.statuses(IAM_ROUTE)
    assert len(polls) <= max_requests_in_window(expiry.length_s, CAP_S) + statuses["401"]
    assert expiry.longest_gap_s(COMMAND_ROUTE) <= CAP_S + 2 * SLACK_S, polls

    starts_and_finishes(emulator, *copy_task(emulator, source_id, tmp_path / "copy"))
    assert agent.problems() == []
    assert agent.terminate() == 0
