"""Commands run outside the agent's sandbox, as the agent runs them in the foreground.

Under systemd they run as transient units; that is tested in a VM with its own systemd
(`tests/system/test_system_agent_vm.py`), where LVM needs it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from smsagent import outside

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _in_the_foreground(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)


async def test_a_command_ends_with_its_status_and_output() -> None:
    done = await outside.run(["sh", "-c", "echo out; echo err >&2; exit 7"], 10, "try")
    assert done == outside.Completed(7, "out\n", "err\n")


async def test_the_environment_is_minimal_plus_what_is_asked() -> None:
    os.environ["SMSAGENT_TEST_SECRET"] = "do-not-pass"
    try:
        done = await outside.run(["env"], 10, "try", env={"LVM_SUPPRESS_FD_WARNINGS": "1"})
    finally:
        del os.environ["SMSAGENT_TEST_SECRET"]
    assert "LVM_SUPPRESS_FD_WARNINGS=1" in done.stdout.splitlines()
    assert "do-not-pass" not in done.stdout


async def test_a_command_that_does_not_end_is_killed_and_named() -> None:
    began = time.monotonic()
    with pytest.raises(outside.OutsideError, match="sleep did not end in 0 s"):
        await outside.run(["sleep", "30"], 0.3, "try")
    assert time.monotonic() - began < 10


async def test_a_missing_program_is_an_error_that_names_it() -> None:
    with pytest.raises(outside.OutsideError, match="no-such-program-here cannot be run"):
        await outside.run(["no-such-program-here"], 5, "try")


async def test_a_detached_command_runs_on_until_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    detached = outside.start_detached(["sh", "-c", f"touch {marker}; exec sleep 60"], "try")
    assert detached.process is not None
    for _ in range(200):
        if marker.exists():
            break
        await asyncio.sleep(0.05)
    assert marker.exists() and detached.process.poll() is None
    assert os.getsid(detached.process.pid) != os.getsid(0)  # a Ctrl-C does not reach it
    await outside.stop_detached(detached)
    assert detached.process.poll() is not None
