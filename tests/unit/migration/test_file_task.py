"""The MIGRATE_FILE handler as a plugin: found through its entry point, its addressing rules, and
the failures it answers before any SMS call (the work itself runs in tests/e2e)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from smsagent.agent.handler_api import CommandEnvelope
from smsagent.agent.machine import Action, State
from smsagent.agent.registry import HandlerRegistry
from smsagent.agent.store import Store, TaskRecord
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.models import Task
from smsagent.migration.file_task import MigrateFileHandler
from smsagent.migration.migrate import destination_root, target_address
from smsagent.migration.options import ERROR_SETTING, TASK_TYPE
from smsagent.migration.settings import SettingError
from smsagent.target.session import store_private_key
from smsagent.taskfiles import block_dir
from tests.support.agentcore import Runner, agent_settings


def task(**fields: Any) -> Task:
    return Task(id="t1", type=TASK_TYPE, **fields)


class TestPlugin:
    def test_the_entry_point_serves_migrate_file(self) -> None:
        """The handler loads like any plugin and serves its task type, no command by name."""
        registry = HandlerRegistry.load()
        handler = registry.for_task_type(TASK_TYPE)
        assert isinstance(handler, MigrateFileHandler)
        envelope = CommandEnvelope(CommandName.START, Action.start_task, 1, "t1", TASK_TYPE)
        assert registry.resolve(envelope) is handler
        assert MigrateFileHandler.commands == frozenset()


class TestAddressing:
    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({"migration_ip": "10.0.0.5", "target_server": {"ip": "10.9.9.9"}}, "10.0.0.5"),
            ({"migration_ip": " ", "target_server": {"ip": "10.9.9.9"}}, "10.9.9.9"),
            ({"target_server": {"ip": " 10.9.9.9 "}}, "10.9.9.9"),
            ({}, None),
        ],
    )
    def test_target_address(self, fields: dict[str, Any], expected: str) -> None:
        """`migration_ip` first, else the target server's `ip`."""
        assert target_address(task(**fields)) == expected

    def test_destination_is_never_the_targets_root(self) -> None:
        """The target root is normalized; `/` and relative paths are refused by name."""
        assert destination_root("/mnt/smsroot/") == "/mnt/smsroot"
        for bad in ("/", "//", "/mnt/..", "mnt/smsroot"):
            with pytest.raises(SettingError, match="SMSAGENT_TARGET_ROOT"):
                destination_root(bad)


class TestEarlyFailures:
    async def test_target_root_slash_fails_the_start(self, tmp_path: Path) -> None:
        """START with the target root `/` fails, naming the setting, and the task is failed."""
        settings = agent_settings(tmp_path, target_root=Path("/"))
        store = Store(settings.state_dir)
        store.open()
        runner = Runner(store, settings, HandlerRegistry.load())
        envelope = CommandEnvelope(
            CommandName.START, Action.start_task, 1, "t1", TASK_TYPE, task(migration_ip="10.0.0.5")
        )
        outcome = await runner.start_work(envelope)
        assert outcome.result is CommandResult.fail
        assert outcome.error_code == ERROR_SETTING
        assert outcome.next_state is State.failed
        assert "SMSAGENT_TARGET_ROOT" in outcome.message

    async def test_drill_needs_a_registered_server(self, tmp_path: Path) -> None:
        """PREMIGRATE goes to the drill, which needs this server's SMS id."""
        settings = agent_settings(tmp_path)
        store = Store(settings.state_dir)
        store.open()
        runner = Runner(store, settings, HandlerRegistry.load())
        envelope = CommandEnvelope(
            CommandName.PREMIGRATE, Action.run_premigrate, 1, "t1", TASK_TYPE, task()
        )
        outcome = await runner.start_work(envelope)
        assert outcome.result is CommandResult.fail
        assert outcome.error_code == "SMSAGENT.NOT_REGISTERED"


class TestOtherTasksFiles:
    @pytest.mark.parametrize("held", ["t1", "other"])
    async def test_a_held_tasks_command_removes_the_files_of_the_others(
        self, tmp_path: Path, held: str
    ) -> None:
        """A command of the task the agent holds removes every other task's key and files (a
        deleted or replaced task's); a command of a task the agent does not hold removes none."""
        settings = agent_settings(tmp_path, target_root=Path("/"))
        store = Store(settings.state_dir)
        store.open()
        runner = Runner(store, settings, HandlerRegistry.load())
        for task_id in ("t1", "old", "other"):
            store_private_key(settings.state_dir, task_id, "-----BEGIN OPENSSH PRIVATE KEY-----\n")
            block_dir(settings.state_dir, task_id).mkdir(parents=True)
        runner.remember(TaskRecord.new(held, TASK_TYPE, time.time()))
        envelope = CommandEnvelope(
            CommandName.START, Action.start_task, 1, "t1", TASK_TYPE, task(migration_ip="10.0.0.5")
        )

        outcome = await runner.start_work(envelope)

        assert outcome.error_code == ERROR_SETTING  # the target root `/`, after the clean-up
        keys = sorted(path.name for path in (settings.state_dir / "keys").iterdir())
        blocks = sorted(path.name for path in (settings.state_dir / "block").iterdir())
        if held == "t1":
            assert (keys, blocks) == (["t1.key"], ["t1"])
        else:
            assert (keys, blocks) == (["old.key", "other.key", "t1.key"], ["old", "other", "t1"])
