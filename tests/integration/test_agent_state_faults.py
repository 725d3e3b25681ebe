"""The whole agent when its state directory fails: read-only from the start, or full mid-way.

Each state directory is a small tmpfs of its own, mounted for the test (root only): read-only,
so that no write can succeed, or 2 MiB, so that a filler file can take its last free block
without touching any other file system.

A read-only directory is refused before anything is sent to SMS: `smsagent run` exits 3 with one
sentence, and `smsagent check` shows the same problem as its `state_dir` ERROR. A directory that
fills up while a STOP winds down is waited out: the agent stays up, says what is wrong in the
log and in `smsagent status`, and once space is back it settles the STOP exactly once.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Final, Optional

import pytest

from tests.support.agent import (
    FAST_SETTINGS,
    RAW_EVENT,
    AgentProcess,
    child_environment,
    copy_states,
    wait_for_polls,
)
from tests.support.emulator import EmulatorFactory, EmulatorProcess
from tests.support.fscopy import CopyJob
from tests.support.mounts import tmpfs

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

EXIT_STARTUP: Final = 3
CANNOT_START: Final = "smsagent: cannot start:"
CLI_TIMEOUT_S: Final = 60.0
# Refusing a state directory takes an interpreter start and one probe write, no network.
REFUSAL_S: Final = 10.0
STATE_FS_SIZE: Final = "2m"
FILL_CHUNK_BYTES: Final = 64 * 1024
FILES: Final = 40
FILE_DELAY_S: Final = 0.2
FILES_BEFORE_STOP: Final = 8
# Long enough to fill the disk while the stop is under way, before its result is owed.
STOP_WIND_DOWN_S: Final = 4.0
STATUS_TIMEOUT_S: Final = 15.0
SETTLE_TIMEOUT_S: Final = 40.0


@pytest.fixture
def emulator(start_emulator: EmulatorFactory) -> EmulatorProcess:
    # Each command is offered once: what the agent owes across the disk fault, it must settle
    # on its own, not because SMS asked again.
    return start_emulator(command_delivery="once", redeliver_after=3600)


@pytest.fixture
def read_only_state_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty state directory (mode 0700, owned by root) on a read-only file system."""
    with tmpfs(tmp_path / "state", "ro,size=1m,mode=0700") as state_dir:
        yield state_dir


@pytest.fixture
def small_state_agent(emulator: EmulatorProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    """A running agent whose state directory is a 2 MiB file system of its own; the agent is
    killed before the file system is unmounted."""
    agent = AgentProcess(emulator, tmp_path / "agent")
    with tmpfs(agent.state_dir, f"size={STATE_FS_SIZE},mode=0700"):
        try:
            yield agent.start()
        finally:
            agent.stop()


# --- helpers ---


def env_file_for(path: Path, emulator: EmulatorProcess, state_dir: Path, source: Path) -> Path:
    """An env file (0600) with the test agent's settings against `emulator`, keeping its state
    in `state_dir`; `run` and `check` both read their settings from it alone."""
    source.mkdir(exist_ok=True)
    lines = {
        **FAST_SETTINGS,
        **emulator.agent_env(),
        "SMSAGENT_STATE_DIR": str(state_dir),
        "SMSAGENT_SOURCE_ROOT": str(source),
        "SMSAGENT_TARGET_LAYOUT": "premounted",
    }
    path.write_text("".join(f"{name}={value}\n" for name, value in lines.items()))
    path.chmod(0o600)
    return path


def smsagent(*args: str) -> subprocess.CompletedProcess[str]:
    """`smsagent ARGS` as an operator runs it: settings only from the command line and the env
    file it names (no `SMSAGENT_*` variable of this process)."""
    return subprocess.run(
        [sys.executable, "-m", "smsagent", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_environment({}),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def status_report(state_dir: Path) -> dict[str, Any]:
    """What `smsagent status --json` shows for `state_dir`."""
    done = smsagent("status", "--json", "--state-dir", str(state_dir))
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def wait_for_status(
    state_dir: Path, predicate: Callable[[Mapping[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """`status --json` of `state_dir` once `predicate` holds for it.

    Raises:
        AssertionError: it did not within `timeout_s`; the message shows the last report.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        report = status_report(state_dir)
        if predicate(report):
            return report
        if time.monotonic() >= deadline:
            raise AssertionError(f"status not reached in {timeout_s} s: {report}")
        time.sleep(0.2)


def fault_of(report: Mapping[str, Any]) -> Optional[str]:
    """The report's `fault` (None when there is none).

    Raises:
        AssertionError: the report has no `fault` field at all.
    """
    assert "fault" in report, f"`status --json` has no `fault` field: {sorted(report)}"
    fault = report["fault"]
    assert fault is None or isinstance(fault, str), fault
    return fault


def fill(directory: Path) -> Path:
    """Write a file in `directory` until its file system has no free block left; returns it.

    Plain writes of this process: the agent is another process, so nothing it runs waits on
    this, and the test's own threads (the agent's log reader) never touch this file system.
    """
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    chunk = b"\0" * FILL_CHUNK_BYTES
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return filler


def results_of(state: Mapping[str, Any], source_id: str, command: str) -> list[dict[str, Any]]:
    """The stored results of `command` for the source, oldest first, from a state dump."""
    return [
        r
        for r in state["command_results"]
        if r["source_id"] == source_id and r["command_name"] == command
    ]


# --- a read-only state directory ---


def test_a_read_only_state_dir_is_refused_before_registering(
    emulator: EmulatorProcess, read_only_state_dir: Path, tmp_path: Path
) -> None:
    """`smsagent run` exits 3 within seconds with one `cannot start` line that names the state
    directory and says it is read-only, no traceback, and SMS never hears of the source;
    `smsagent check` with the same settings fails with its `state_dir` check ERROR."""
    env_file = env_file_for(
        tmp_path / "smsagent.env", emulator, read_only_state_dir, tmp_path / "source"
    )

    began = time.monotonic()
    run = smsagent("run", "--env-file", str(env_file))
    took_s = time.monotonic() - began

    assert run.returncode == EXIT_STARTUP, run.stderr
    assert took_s < REFUSAL_S
    refusals = [line for line in run.stderr.splitlines() if line.startswith(CANNOT_START)]
    assert len(refusals) == 1, run.stderr
    assert str(read_only_state_dir) in refusals[0]
    assert "read-only" in refusals[0].lower()
    assert "Traceback" not in run.stderr + run.stdout
    state = emulator.state()
    assert "POST /v3/sources" not in state["requests"]
    assert state["sources"] == []

    check = smsagent("check", "--json", "--env-file", str(env_file))
    assert check.returncode != 0
    [state_dir_check] = [c for c in json.loads(check.stdout)["checks"] if c["name"] == "state_dir"]
    assert state_dir_check["result"] == "ERROR", state_dir_check
    assert "read-only" in state_dir_check["reason"].lower(), state_dir_check


# --- a state directory that fills up ---


@pytest.mark.slow
def test_a_full_state_dir_during_a_stop_is_waited_out(
    emulator: EmulatorProcess, small_state_agent: AgentProcess, tmp_path: Path
) -> None:
    """The state directory fills up while a STOP winds down: the agent logs `state_write_failed`,
    stays up, and `status` shows a fault that names the state directory and the lack of space.
    Once space is back it logs `state_write_recovered`, the STOP's success reaches SMS once,
    the task is stopped, the fault is gone; a later START resumes and finishes the copy."""
    agent = small_state_agent
    state_dir = agent.state_dir
    source_id: str = agent.wait_for_event("agent_ready")["server_id"]
    job = CopyJob.build(tmp_path / "tree", files=FILES)
    task_id = job.create_task(
        emulator, source_id, file_delay_s=FILE_DELAY_S, stop_delay_s=STOP_WIND_DOWN_S
    )
    emulator.action(task_id, "start")
    agent.wait_for_count("fscopy_file_copied", FILES_BEFORE_STOP)

    emulator.action(task_id, "stop")
    agent.wait_for_event("command_decided", lambda event: event["command"] == "STOP")
    # The decision is saved before the work is told to stop; once the copy winds down, only
    # the settle of the stop (and the copy's last progress) is left to write.
    agent.wait_for_event("fscopy_stopping")
    filler = fill(state_dir)

    agent.wait_for_event("state_write_failed", timeout_s=SETTLE_TIMEOUT_S)
    assert agent.running
    full = wait_for_status(state_dir, lambda report: fault_of(report) is not None, STATUS_TIMEOUT_S)
    fault = fault_of(full)
    assert fault is not None
    assert str(state_dir) in fault or "state dir" in fault.lower(), fault
    assert "no space" in fault.lower() or "full" in fault.lower(), fault
    assert results_of(emulator.state(), source_id, "STOP") == []

    filler.unlink()
    agent.wait_for_event("state_write_recovered", timeout_s=SETTLE_TIMEOUT_S)
    emulator.wait_for(
        lambda s: copy_states(s, source_id)[-1:] == ["stopped"], timeout_s=SETTLE_TIMEOUT_S
    )
    emulator.wait_for(lambda s: results_of(s, source_id, "STOP"), timeout_s=SETTLE_TIMEOUT_S)
    # A resent result would arrive with the next polls.
    wait_for_polls(emulator, 3)
    stops = results_of(emulator.state(), source_id, "STOP")
    assert [r["result"] for r in stops] == ["success"]
    assert len({r["result_detail"]["result_key"] for r in stops}) == 1
    stopped = wait_for_status(state_dir, lambda report: fault_of(report) is None, STATUS_TIMEOUT_S)
    assert stopped["task"]["state"] == "stopped"
    complete_at_stop = job.target_inodes()

    emulator.action(task_id, "start")
    emulator.wait_for(
        lambda s: copy_states(s, source_id)[-1:] == ["finished"], timeout_s=SETTLE_TIMEOUT_S
    )
    emulator.wait_for(lambda s: results_of(s, source_id, "START"), timeout_s=SETTLE_TIMEOUT_S)
    wait_for_polls(emulator, 3)

    stored = emulator.results(source_id)
    assert [(r["command_name"], r["result"]) for r in stored] == [
        ("STOP", "success"),
        ("START", "success"),
    ]
    keys = [r["result_detail"]["result_key"] for r in stored]
    assert len(set(keys)) == len(keys)
    assert stored[-1]["result_detail"]["state"] == "finished"
    assert [event["resume_from"] != "" for event in agent.events("fscopy_started")] == [
        False,
        True,
    ]
    assert job.differences() == []
    after = job.target_inodes()
    assert {path: after[path] for path in complete_at_stop} == complete_at_stop
    copied = Counter(event["path"] for event in agent.events("fscopy_file_copied"))
    assert set(copied.values()) == {1}
    assert agent.events(RAW_EVENT) == []
