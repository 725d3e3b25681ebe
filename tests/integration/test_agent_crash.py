"""Crash safety of the whole agent: `kill -9` at each point of handling a command, then a restart.

Each test arms a SIGKILL on one line of the agent's JSON log (the kill lands right after that
line is written), lets the console drive a FSCOPY_TEST task, restarts the agent from the same
state directory, and checks what a server and an operator would notice: every command's result
is stored exactly once (one per result key, none missing), the task ends where the console
expects, the target equals the source, no file that was complete at the kill was written again,
and no file was copied twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tests.support.agent import AgentProcess, Event, copy_states, wait_for_polls
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.fscopy import CopyJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FILES = 40
FILE_DELAY_S = 0.1
FILES_BEFORE_STOP = 8
IN_FLIGHT_LATENCY_S = 3.0
SETTLE_TIMEOUT_S = 40.0
KILLED = -9


@dataclass(frozen=True)
class KillPoint:
    """Where to kill: right after the first log line named `event` that passes `predicate`.

    Attributes:
        flow: `copy` (START until finished) or `stop` (START, STOP mid-way, START again).
        latency_s: answer command results this late while the kill is armed (a POST in flight).
        again: after the first restart, kill once more right after this event.
        result_owed: the START result was in the outbox at the kill, so the copy must not run
            again after the restart.
        redelivered: the kill may land before the command is persisted; only the server
            offering it again (after 1 s without a result) can bring it back. Everywhere else
            the server offers each command once, so the agent must finish on its own.
    """

    event: str
    predicate: Optional[Callable[[Event], bool]] = None
    flow: str = "copy"
    latency_s: float = 0.0
    again: Optional[str] = None
    result_owed: bool = False
    redelivered: bool = False


def field(name: str, value: Any) -> Callable[[Event], bool]:
    return lambda event: event.get(name) == value


MIDDLE_FILE = sorted(CopyJob.names(FILES))[FILES // 2]

POINTS = {
    # Before the decision is persisted: the line is written just before task.json.
    "decided": KillPoint("command_decided", field("command", "START"), redelivered=True),
    # After it is persisted and the work has started: the source state went out.
    "decision_saved": KillPoint("copy_state_sent", field("copystate", "replicate")),
    "copy_start": KillPoint("fscopy_started"),
    "copy_middle": KillPoint("fscopy_file_copied", field("path", MIDDLE_FILE)),
    # The copy has ended; its result is not queued yet.
    "copy_end": KillPoint("fscopy_done"),
    # The result is in the outbox; the state it settles in is not saved yet.
    "result_queued": KillPoint(
        "result_queued", lambda e: "/START/" in e["result_key"], result_owed=True
    ),
    "settled": KillPoint("command_settled", field("command", "START"), result_owed=True),
    "sending": KillPoint(
        "result_sending",
        field("command", "START"),
        latency_s=IN_FLIGHT_LATENCY_S,
        result_owed=True,
    ),
    # The server stored the result; the outbox has not recorded the delivery.
    "sent": KillPoint("result_sent", field("command", "START"), result_owed=True),
    "delivered": KillPoint(
        "result_delivered", lambda e: "/START/" in e["result_key"], result_owed=True
    ),
    "stop_decided": KillPoint(
        "command_decided", field("command", "STOP"), flow="stop", redelivered=True
    ),
    # The copy stopped; the STOP handler has not answered yet.
    "stop_work_ended": KillPoint(
        "command_settled", lambda e: e["command"] == "START" and e["result"] is None, "stop"
    ),
    "stop_result_queued": KillPoint(
        "result_queued", lambda e: "/STOP/" in e["result_key"], flow="stop"
    ),
    "resume": KillPoint("fscopy_file_copied", field("path", MIDDLE_FILE), again="task_resumed"),
}


class Scenario:
    """One emulator, one agent, one FSCOPY_TEST task, and the checks after the crash."""

    def __init__(self, emulator: EmulatorProcess, agent: AgentProcess, job: CopyJob) -> None:
        self.emulator = emulator
        self.agent = agent
        self.job = job
        self.source_id: str = agent.wait_for_event("agent_ready")["server_id"]
        self.task_id = job.create_task(emulator, self.source_id, file_delay_s=FILE_DELAY_S)

    def crash(self, point: KillPoint) -> dict[str, int]:
        """Run the flow up to the kill; returns the inodes of the files complete at the kill."""
        if point.latency_s:
            self.emulator.set_faults(latency_s=point.latency_s, path_pattern="/command_result$")
        if point.flow == "stop":
            self.emulator.action(self.task_id, "start")
            self.agent.wait_for_count("fscopy_file_copied", FILES_BEFORE_STOP)
        self.agent.kill_on(point.event, point.predicate)
        self.emulator.action(self.task_id, "stop" if point.flow == "stop" else "start")
        assert self.agent.wait_exit(SETTLE_TIMEOUT_S) == KILLED
        assert self.agent.killed_at() is not None
        self.emulator.set_faults()
        return self.job.target_inodes()

    def crash_again(self, event: str) -> None:
        """Restart and kill right after `event` of the new run."""
        self.agent.kill_on(event)
        self.agent.restart()
        assert self.agent.wait_exit(SETTLE_TIMEOUT_S) == KILLED
        assert self.agent.killed_at() is not None

    def recover(self, point: KillPoint) -> None:
        """Restart and let the console finish what it started."""
        self.agent.restart()
        if point.flow == "stop":
            self.wait_for_result("STOP")
            self.emulator.wait_for(lambda s: copy_states(s, self.source_id)[-1:] == ["stopped"])
            self.emulator.action(self.task_id, "start")
        self.wait_for_result("START")
        self.emulator.wait_for(
            lambda s: copy_states(s, self.source_id)[-1:] == ["finished"],
            timeout_s=SETTLE_TIMEOUT_S,
        )
        self.agent.wait_for_event("agent_ready")
        self.wait_outbox_empty()
        wait_for_polls(self.emulator, 3)

    def wait_for_result(self, command: str) -> None:
        self.emulator.wait_for(
            lambda s: any(r["command_name"] == command for r in s["command_results"]),
            timeout_s=SETTLE_TIMEOUT_S,
        )

    def wait_outbox_empty(self) -> None:
        outbox = self.agent.state_dir / "outbox"

        def empty(_: dict[str, Any]) -> bool:
            return not [p for p in outbox.glob("*.json") if p.name != "delivered.json"]

        self.emulator.wait_for(empty, timeout_s=SETTLE_TIMEOUT_S)

    def stored_results(self) -> list[dict[str, Any]]:
        return self.emulator.results(self.source_id)

    def files_copied(self) -> Counter[str]:
        """How often each regular file was written, over every run."""
        copied = Counter(event["path"] for event in self.agent.events("fscopy_file_copied"))
        return Counter({path: copied[path] for path in self.job.files if copied[path]})


@pytest.fixture(params=list(POINTS.values()), ids=list(POINTS))
def point(request: pytest.FixtureRequest) -> KillPoint:
    chosen: KillPoint = request.param
    return chosen


@pytest.fixture
def scenario(
    start_emulator: EmulatorFactory, tmp_path: Path, point: KillPoint
) -> Iterator[Scenario]:
    redeliver_after_s = 1 if point.redelivered else 3600
    emulator = start_emulator(command_delivery="once", redeliver_after=redeliver_after_s)
    agent = AgentProcess(emulator, tmp_path / "agent").start()
    try:
        yield Scenario(emulator, agent, CopyJob.build(tmp_path / "tree", files=FILES))
    finally:
        agent.stop()


def test_kill_and_restart(scenario: Scenario, point: KillPoint) -> None:
    """After `kill -9` at the point and a restart, each result reaches the server once, the
    task ends finished, and the copy is whole with no file written twice."""
    complete_at_kill = scenario.crash(point)
    if point.again:
        scenario.crash_again(point.again)
    scenario.recover(point)

    stored = scenario.stored_results()
    expected = [("STOP", "success")] if point.flow == "stop" else []
    expected.append(("START", "success"))
    assert [(r["command_name"], r["result"]) for r in stored] == expected
    keys = [r["result_detail"]["result_key"] for r in stored]
    assert len(set(keys)) == len(keys)
    assert stored[-1]["result_detail"]["state"] == "finished"
    assert scenario.emulator.state()["tasks"][0]["state"] == "MIGRATE_SUCCESS"

    assert scenario.job.differences() == []
    after = scenario.job.target_inodes()
    assert {path: after[path] for path in complete_at_kill} == complete_at_kill
    assert set(scenario.files_copied().values()) <= {1}
    copies = scenario.agent.events("fscopy_started")
    assert {event["stage"] for event in copies} == {"MIGRATE_LINUX_FILE"}
    assert len(scenario.agent.events("fscopy_done")) == 1
    if point.result_owed:
        assert scenario.agent.events("fscopy_started", run=1) == []
    assert all(event["event"] != "_raw" for event in scenario.agent.events())


STOP_WIND_DOWN_S = 4.0


def test_start_answered_while_stopping_then_kill(
    start_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A START answered (fail) while a STOP winds down, then `kill -9`: after the restart the
    STOP still gets its success and the START its failure, each once, and the task goes on."""
    emulator = start_emulator(command_delivery="once", redeliver_after=3600)
    agent = AgentProcess(emulator, tmp_path / "agent").start()
    try:
        job = CopyJob.build(tmp_path / "tree", files=FILES)
        source_id = agent.wait_for_event("agent_ready")["server_id"]
        task_id = job.create_task(
            emulator, source_id, file_delay_s=FILE_DELAY_S, stop_delay_s=STOP_WIND_DOWN_S
        )
        emulator.action(task_id, "start")
        agent.wait_for_count("fscopy_file_copied", FILES_BEFORE_STOP)
        emulator.action(task_id, "stop")
        agent.wait_for_event("fscopy_stopping")
        agent.kill_on("result_queued", lambda event: "/START/" in event["result_key"])
        emulator.queue_command(source_id, "START", task_id=task_id)
        assert agent.wait_exit(SETTLE_TIMEOUT_S) == KILLED

        agent.restart()
        emulator.wait_for(
            lambda s: {r["command_name"] for r in s["command_results"]} == {"START", "STOP"},
            timeout_s=SETTLE_TIMEOUT_S,
        )
        emulator.wait_for(lambda s: copy_states(s, source_id)[-1:] == ["stopped"])
        emulator.action(task_id, "start")
        emulator.wait_for(
            lambda s: copy_states(s, source_id)[-1:] == ["finished"], timeout_s=SETTLE_TIMEOUT_S
        )
        agent.wait_for_event("command_settled", lambda e: e["result"] == "success")
        wait_for_polls(emulator, 3)

        stored = emulator.results(source_id)
        pairs = [(r["command_name"], r["result"]) for r in stored]
        assert sorted(pairs[:2]) == [("START", "fail"), ("STOP", "success")]
        assert pairs[2:] == [("START", "success")]
        assert stored[-1]["result_detail"]["state"] == "finished"
        keys = [r["result_detail"]["result_key"] for r in stored]
        assert len(set(keys)) == len(keys)
        assert job.differences() == []
    finally:
        agent.stop()
