"""The outbox against a real `smsagent emulator` over HTTP, with injected 503s."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from pydantic import SecretStr

from smsagent.agent.machine import State
from smsagent.agent.outbox import RESULT_KEY_FIELD, Outbox, ResultKey, result_body
from smsagent.agent.store import Store
from smsagent.api.auth import TokenCredentials
from smsagent.api.client import SmsClient
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.models import CommandBody
from tests.support.emulator import EmulatorFactory, EmulatorProcess


@pytest.fixture
def emulator(start_emulator: EmulatorFactory) -> EmulatorProcess:
    """An emulator whose first two command results are answered 503."""
    return start_emulator(error_rate=1.0, max_faults=2, fault_path="command_result", seed=1)


@pytest.mark.timeout(60)
async def test_results_reach_the_server_once_each_in_order(
    tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """Three results survive two 503s and arrive exactly once each, oldest first."""
    source_id = await asyncio.to_thread(emulator.register_source)
    store = Store(tmp_path / "state")
    store.open()
    outbox = Outbox(store, backoff_cap_s=1.0, rng=random.Random(3))
    outbox.open()
    commands = [CommandName.START, CommandName.STOP, CommandName.START]
    for sequence, command in enumerate(commands, start=1):
        body = result_body(command, CommandResult.success, task_id="t1", state=State.stopped)
        await outbox.enqueue(ResultKey("t1", command, sequence), body)
    credentials = TokenCredentials(SecretStr(emulator.token))
    async with SmsClient(emulator.url, credentials) as client:

        async def send(body: CommandBody) -> None:
            await client.update_command_result(source_id, body)

        for _ in range(10):
            report = await outbox.deliver(send)
            if report.retry_in_s is None:
                break
            await asyncio.sleep(report.retry_in_s)
    assert outbox.pending() == []
    state = await asyncio.to_thread(emulator.state)
    keys = [r["result_detail"][RESULT_KEY_FIELD] for r in state["command_results"]]
    assert keys == ["t1/START/1", "t1/STOP/2", "t1/START/3"]
    assert state["faults_injected"] == 2
