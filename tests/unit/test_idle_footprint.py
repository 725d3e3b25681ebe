"""What an agent waiting for work holds: the handlers are loaded, their heavy halves are not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Imported only once a task's work starts (the movers, the drill, the verification, the block
# copy) or a log upload is asked for (the bundle, the OBS client).
WORK_ONLY_MODULES = (
    "smsagent.migration.migrate",
    "smsagent.migration.pipeline",
    "smsagent.migration.plan",
    "smsagent.migration.rsync",
    "smsagent.migration.consistency",
    "smsagent.checks.premigrate",
    "smsagent.checks.drill",
    "smsagent.commands.logbundle",
    "smsagent.commands.obsupload",
    "minio",
    "statistics",
    "smsagent.migration.block.work",
    "smsagent.migration.block.engine",
    "zstandard",
    "xxhash",
)

PROBE = """
import json, sys
from smsagent.agent.registry import HandlerRegistry
from smsagent.sdnotify import Notifier
import smsagent.service
registry = HandlerRegistry.load()
Notifier({})
print(json.dumps({
    "task_types": sorted(registry.task_types),
    "loaded": sorted(m for m in sys.modules if m in MODULES or m.split(".")[0] == "systemd"),
}))
"""


@pytest.mark.timeout(60)
def test_idle_agent_loads_handlers_without_their_work() -> None:
    program = f"MODULES = {WORK_ONLY_MODULES!r}\n{PROBE}"
    answer = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=50, check=True
    )
    found = json.loads(answer.stdout)
    assert "MIGRATE_FILE" in found["task_types"]
    assert found["loaded"] == []
