"""Signals to the whole agent: SIGTERM while a handler copies ends the agent cleanly and quickly,
and the next start resumes the copy where it was."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.fscopy import CopyJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FILES = 40
FILE_DELAY_S = 0.1
CLEAN_EXIT_S = 5.0


@pytest.fixture
def emulator(start_emulator: EmulatorFactory) -> EmulatorProcess:
    # Each command is offered once: the resumed work must not depend on START coming again.
    return start_emulator(command_delivery="once", redeliver_after=3600)


def test_sigterm_during_a_copy_exits_0_and_the_next_start_resumes(
    emulator: EmulatorProcess, agent: AgentProcess, tmp_path: Path
) -> None:
    """SIGTERM while the copy runs: exit 0 within 5 s with nothing sent for the unfinished
    command; the next start resumes the copy (task_resumed), skips the files already copied,
    and answers START once."""
    source_id = agent.wait_for_event("agent_ready")["server_id"]
    job = CopyJob.build(tmp_path / "tree", files=FILES)
    task_id = job.create_task(emulator, source_id, file_delay_s=FILE_DELAY_S)
    emulator.action(task_id, "start")
    agent.wait_for_count("fscopy_file_copied", 10)

    signalled_at = time.monotonic()
    code = agent.terminate(timeout_s=CLEAN_EXIT_S + 10)
    took_s = time.monotonic() - signalled_at
    assert code == 0
    assert took_s < CLEAN_EXIT_S
    assert [e["signal"] for e in agent.events("signal_received")] == ["SIGTERM"]
    assert [e["how"] for e in agent.events("work_ended")] == ["stopped"]
    assert agent.events("agent_stopped")
    assert emulator.results(source_id) == []
    copied_before = job.target_inodes()
    assert 0 < len(copied_before) < len(job.files)

    agent.restart()
    resumed = agent.wait_for_event("task_resumed")
    assert (resumed["task_id"], resumed["state"]) == (task_id, "running")
    emulator.wait_for(lambda s: s["command_results"], timeout_s=30)
    emulator.wait_for(lambda s: [c["copystate"] for c in s["changestates"]][-1:] == ["finished"])

    stored = emulator.results(source_id)
    assert [(r["command_name"], r["result"]) for r in stored] == [("START", "success")]
    assert stored[0]["result_detail"]["state"] == "finished"
    assert [e["resume_from"] != "" for e in agent.events("fscopy_started")] == [False, True]
    copied = Counter(e["path"] for e in agent.events("fscopy_file_copied"))
    assert set(copied) == job.written_entries
    assert set(copied.values()) == {1}
    after = job.target_inodes()
    assert {path: after[path] for path in copied_before} == copied_before
    assert job.differences() == []
    assert agent.problems() == []


def test_sigterm_when_idle_exits_0_at_once(agent: AgentProcess) -> None:
    """An idle agent stops at SIGTERM without waiting out its poll interval."""
    agent.wait_for_event("agent_ready")
    signalled_at = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - signalled_at < CLEAN_EXIT_S
    assert [e["how"] for e in agent.events("work_ended")] == ["idle"]
    assert agent.problems() == []
