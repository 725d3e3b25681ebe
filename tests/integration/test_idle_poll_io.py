"""An idle agent's polls read and write no file: the task record and the owed results are held
in memory by the ledger, and nothing else is looked up per poll.

The agent runs in a child interpreter with an audit hook that records every `open` (Python's
`open`, `os.open`, `io.open`: each raises the `open` audit event) from its second poll on; the
first poll may write the connection record, later ones are all alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from tests.support.agent import FAST_SETTINGS, child_environment
from tests.support.emulator import EmulatorProcess

POLLS: Final = 6

PROBE: Final = """
import asyncio, json, sys

opens = []
armed = False

def audit(event, args):
    if armed and event == "open":
        opens.append(str(args[0]))

sys.addaudithook(audit)

from smsagent.agent import poller
from smsagent.config import load_settings
from smsagent.log import configure
from smsagent.service import Service

original = poller.Poller.poll_once
polls = 0

async def counted(self):
    global armed, polls
    polls += 1
    armed = polls >= 2
    try:
        return await original(self)
    finally:
        armed = False

poller.Poller.poll_once = counted
settings = load_settings(None)
configure(settings.log_format, settings.log_level)
asyncio.run(Service(settings, max_polls=POLLS).serve())
print(json.dumps({"polls": polls, "opens": opens}))
"""


@pytest.mark.timeout(90)
def test_idle_polls_open_no_file(tmp_path: Path, emulator: EmulatorProcess) -> None:
    settings = {
        **FAST_SETTINGS,
        **emulator.agent_env(),
        "SMSAGENT_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-c", f"POLLS = {POLLS}\n{PROBE}"],
        env=child_environment(settings, python={}),
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["polls"] == POLLS
    assert found["opens"] == [], sorted(set(found["opens"]))
