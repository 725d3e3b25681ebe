"""The whole agent (`smsagent run`) driven by a scripted console through the emulator: start,
stop, start again, finish; TASK_HAS_FINISHED; a task type no handler serves.

Each test reads what the server received (command results and source states, in order) and what
the agent did (its JSON log, the files it wrote), in both command delivery modes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.agent import (
    AgentProcess,
    Event,
    copy_states,
    result_pairs,
    wait_for_polls,
)
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.fscopy import CopyJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FILE_DELAY_S = 0.1
MODES = ("once", "repeat")


@pytest.fixture(params=MODES)
def emulator(request: pytest.FixtureRequest, start_emulator: EmulatorFactory) -> EmulatorProcess:
    """An emulator in each command delivery mode (`once` offers a command again after 3 s)."""
    mode: str = request.param
    return start_emulator(command_delivery=mode, redeliver_after=3)


@pytest.fixture
def source_id(agent: AgentProcess) -> str:
    server_id: str = agent.wait_for_event("agent_ready")["server_id"]
    return server_id


@pytest.fixture
def job(tmp_path: Path) -> CopyJob:
    return CopyJob.build(tmp_path / "tree", files=40)


def result_for(command: str, result: str = "success") -> Callable[[dict[str, Any]], Any]:
    """An emulator-state predicate: a stored result of `command` arrived."""
    return lambda state: [
        r
        for r in state["command_results"]
        if r["command_name"] == command and r["result"] == result
    ]


def decided(agent: AgentProcess) -> list[tuple[str, str]]:
    return [(e["command"], e["action"]) for e in agent.events("command_decided")]


def copied_paths(agent: AgentProcess) -> Counter[str]:
    return Counter(event["path"] for event in agent.events("fscopy_file_copied"))


def of_command(command: str) -> Callable[[Event], bool]:
    return lambda event: event.get("command") == command


class TestStartStopStartFinish:
    def test_console_script(
        self, emulator: EmulatorProcess, agent: AgentProcess, source_id: str, job: CopyJob
    ) -> None:
        """START copies, a repeated START is a no-op, STOP stops mid-way, START resumes where it
        stopped and finishes: the server gets one result per command and the source states in
        order, and every file is written once."""
        task_id = job.create_task(emulator, source_id, file_delay_s=FILE_DELAY_S)
        emulator.action(task_id, "start")
        agent.wait_for_count("fscopy_file_copied", 5)

        emulator.action(task_id, "start")  # the console presses start again while it runs
        wait_for_polls(emulator, 3)
        agent.wait_for_count("fscopy_file_copied", 10)
        emulator.action(task_id, "stop")
        agent.wait_for_event("command_settled", of_command("STOP"))
        emulator.wait_for(result_for("STOP"))
        # The console shows the source stopped before the operator starts it again.
        emulator.wait_for(lambda s: copy_states(s, source_id)[-1:] == ["stopped"])
        before_resume = job.target_inodes()
        assert 0 < len(before_resume) < len(job.files)

        emulator.action(task_id, "start")
        emulator.wait_for(result_for("START"), timeout_s=30)
        emulator.wait_for(lambda s: "finished" in copy_states(s, source_id))

        assert result_pairs(emulator.state(), source_id) == [
            ("STOP", "success"),
            ("START", "success"),
        ]
        stored = emulator.results(source_id)
        assert [r["result_detail"]["state"] for r in stored] == ["stopped", "finished"]
        assert len({r["result_detail"]["result_key"] for r in stored}) == 2
        assert copy_states(emulator.state(), source_id) == [
            "replicate",
            "stopping",
            "stopped",
            "replicate",
            "finished",
        ]
        assert decided(agent) == [
            ("START", "start_task"),
            ("STOP", "cancel_task"),
            ("START", "resume_task"),
        ]
        started = agent.events("fscopy_started")
        assert [e["resume_from"] != "" for e in started] == [False, True]
        assert set(copied_paths(agent).values()) == {1}
        assert set(copied_paths(agent)) == job.written_entries
        after = job.target_inodes()
        assert {path: after[path] for path in before_resume} == before_resume
        assert job.differences() == []
        assert emulator.state()["tasks"][0]["state"] == "MIGRATE_SUCCESS"
        assert agent.problems() == []


class TestTaskHasFinished:
    def test_finish_while_copying(
        self, emulator: EmulatorProcess, agent: AgentProcess, source_id: str, job: CopyJob
    ) -> None:
        """TASK_HAS_FINISHED while the copy runs stops it and the task ends `finished` without a
        result; a START after that answers success without copying again."""
        task_id = job.create_task(emulator, source_id, file_delay_s=FILE_DELAY_S)
        emulator.action(task_id, "start")
        agent.wait_for_count("fscopy_file_copied", 5)
        emulator.queue_command(source_id, "TASK_HAS_FINISHED", task_id=task_id)
        agent.wait_for_event("command_settled", of_command("TASK_HAS_FINISHED"))
        emulator.wait_for(lambda s: "finished" in copy_states(s, source_id))
        copied = sum(copied_paths(agent).values())

        emulator.action(task_id, "start")
        emulator.wait_for(result_for("START"))

        assert result_pairs(emulator.state(), source_id) == [("START", "success")]
        detail = emulator.results(source_id)[0]["result_detail"]
        assert detail["state"] == "finished"
        assert detail["message"] == "the task has already finished"
        assert copy_states(emulator.state(), source_id) == ["replicate", "stopping", "finished"]
        assert len(agent.events("fscopy_started")) == 1
        assert sum(copied_paths(agent).values()) == copied < len(job.written_entries)
        assert agent.problems() == []

    def test_finish_after_the_copy(
        self, emulator: EmulatorProcess, agent: AgentProcess, source_id: str, job: CopyJob
    ) -> None:
        """TASK_HAS_FINISHED for a task that finished here changes nothing and answers nothing."""
        task_id = job.create_task(emulator, source_id)
        emulator.action(task_id, "start")
        emulator.wait_for(result_for("START"))
        emulator.queue_command(source_id, "TASK_HAS_FINISHED", task_id=task_id)
        emulator.wait_for(
            lambda s: any(
                c["command_name"] == "TASK_HAS_FINISHED" and c["delivery_count"]
                for c in s["commands"]
            )
        )
        wait_for_polls(emulator, 2)

        assert result_pairs(emulator.state(), source_id) == [("START", "success")]
        assert decided(agent) == [("START", "start_task")]
        assert copy_states(emulator.state(), source_id) == ["replicate", "finished"]
        assert job.differences() == []
        assert agent.problems() == []


class TestTaskTypeWithoutHandler:
    def test_a_type_no_handler_serves_fails_naming_the_type(
        self, emulator: EmulatorProcess, agent: AgentProcess, source_id: str
    ) -> None:
        """START of a task whose type no installed handler serves answers `fail` naming the
        type; the agent keeps polling."""
        task_id = emulator.create_task(source_id)
        emulator.patch_task(task_id, type="MIGRATE_OTHER")
        emulator.action(task_id, "start")
        emulator.wait_for(result_for("START", "fail"))
        emulator.wait_for(lambda s: "error" in copy_states(s, source_id))
        wait_for_polls(emulator, 2)

        assert result_pairs(emulator.state(), source_id) == [("START", "fail")]
        detail = emulator.results(source_id)[0]["result_detail"]
        assert detail["error_code"] == "SMSAGENT.NO_HANDLER"
        assert "MIGRATE_OTHER" in detail["message"]
        assert detail["state"] == "failed"
        assert copy_states(emulator.state(), source_id) == ["replicate", "error"]
        assert emulator.state()["tasks"][0]["state"] == "MIGRATE_FAIL"
        assert agent.running
        assert agent.problems() == []
