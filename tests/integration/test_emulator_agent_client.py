"""The agent's own `SmsClient` against a running emulator: the wire shapes agree both ways, and
the emulator's errors and faults reach the agent as the error classes it acts on."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from smsagent.api.auth import AkSkCredentials, TokenCredentials
from smsagent.api.client import SmsClient
from smsagent.api.enums import (
    CommandName,
    CommandResult,
    ConfigKey,
    CopyState,
    MigrationCycle,
    OsType,
    SubtaskName,
)
from smsagent.api.errors import (
    AuthError,
    ErrorAction,
    MalformedResponse,
    NotFoundError,
    ServerError,
    TransportError,
)
from smsagent.api.models import (
    CommandBody,
    ConfigBody,
    ConfigurationRequestBody,
    PostSourceServerBody,
    PutCopyStateReq,
    SpeedLimit,
    SpeedLimitWindow,
    UpdateTaskSpeedReq,
)
from tests.support.emulator import EmulatorProcess

REGISTRATION = PostSourceServerBody(
    name="agent-client", ip="192.0.2.20", os_type=OsType.LINUX, os_version="Debian 12",
    agent_version="0.1.0",
)  # fmt: skip


def signed_client(emulator: EmulatorProcess) -> SmsClient:
    return SmsClient(emulator.url, AkSkCredentials(emulator.ak, SecretStr(emulator.sk)))


async def test_agent_flow(emulator: EmulatorProcess) -> None:
    """Register, poll START, read settings, report progress, state and result: all parse."""
    async with signed_client(emulator) as client:
        source_id = (await client.register_server(REGISTRATION)).id
        assert (await client.show_command(source_id)).command_name is None
        task_id = await asyncio.to_thread(emulator.create_task, source_id)
        await asyncio.to_thread(emulator.set_cert_key, task_id, private_key="PEM")
        await asyncio.to_thread(emulator.action, task_id, "start")

        command = await client.show_command(source_id)
        assert command.command_name == "START"
        assert command.command_param is not None and command.command_param.task_id == task_id
        assert (await client.show_cert_key(task_id)).private_key == "PEM"
        window = SpeedLimitWindow(start="00:00", end="23:59", speed=100)
        await client.update_speed(task_id, SpeedLimit(speed_limit=[window]))
        assert (await client.shows_speed_limits(task_id)).speed_limit == [window]
        setting = ConfigBody(config_key=ConfigKey.NUM_PROCESS_MIGRATE, config_value="2")
        body = ConfigurationRequestBody(configurations=[setting])
        await client.upload_special_configuration_setting(task_id, body)
        shown = await client.show_config_setting(task_id)
        assert shown.configurations == [{"config_key": "NUM_PROCESS_MIGRATE", "config_value": "2"}]

        progress = UpdateTaskSpeedReq(
            subtask_name=SubtaskName.MIGRATE_LINUX_FILE, progress=100, replicatesize=5,
            totalsize=5, process_trace="done",
        )  # fmt: skip
        await client.update_task_speed(task_id, progress)
        state = PutCopyStateReq(
            copystate=CopyState.finished, migrationcycle=MigrationCycle.cutovered
        )
        await client.update_copy_state(source_id, state)
        result = CommandBody(
            command_name=CommandName.START,
            result=CommandResult.success,
            result_detail={"stage": "done"},
        )
        await client.update_command_result(source_id, result)

        task = await client.show_task(task_id)
        assert task.state == "MIGRATE_SUCCESS"
        assert task.sub_tasks is not None and task.sub_tasks[0].progress == 100
        assert task.source_server is not None and task.source_server.state == "finished"
        server = await client.show_server(source_id)
        assert server.current_task is not None and server.current_task.state == "MIGRATE_SUCCESS"


async def test_errors_reach_the_agent_with_their_actions(emulator: EmulatorProcess) -> None:
    """A deleted source means re-register, an unknown task is fatal, a bad key re-authenticates."""
    async with signed_client(emulator) as client:
        source_id = (await client.register_server(REGISTRATION)).id
        assert emulator.request("DELETE", f"/v3/sources/{source_id}").status == 200
        with pytest.raises(NotFoundError) as gone:
            await client.show_command(source_id)
        assert (gone.value.error_code, gone.value.action) == ("SMS.7701", ErrorAction.reregister)
        with pytest.raises(NotFoundError) as unknown:
            await client.show_task("f" * 32)
        assert (unknown.value.error_code, unknown.value.action) == ("SMS.7703", ErrorAction.fatal)

    wrong = SmsClient(emulator.url, AkSkCredentials(emulator.ak, SecretStr("wrong-secret")))
    async with wrong as client:
        with pytest.raises(AuthError) as refused:
            await client.show_config()
        assert refused.value.error_code == "APIGW.0301"
        assert refused.value.server_date is not None


async def test_faults_reach_the_agent_as_retryable_errors(emulator: EmulatorProcess) -> None:
    """503 with Retry-After, a reset and a malformed body are each `retry` for the agent."""
    async with signed_client(emulator) as client:
        await asyncio.to_thread(emulator.set_faults, error_rate=1.0, retry_after_s=4, max_faults=1)
        with pytest.raises(ServerError) as unavailable:
            await client.show_config()
        assert (unavailable.value.status, unavailable.value.retry_after_s) == (503, 4)

        # Every connection is reset: aiohttp retries an idempotent call once on a fresh one.
        await asyncio.to_thread(emulator.set_faults, reset_rate=1.0)
        with pytest.raises(TransportError) as reset:
            await client.show_config()
        assert reset.value.action is ErrorAction.retry

        await asyncio.to_thread(emulator.set_faults, malformed_rate=1.0, max_faults=1)
        with pytest.raises(MalformedResponse):
            await client.show_config()
        assert (await client.show_config()).config


async def test_expired_token_tells_the_client_to_reauthenticate(emulator: EmulatorProcess) -> None:
    """With tokens expired a token client gets AuthError "The token must be updated"."""
    credentials = TokenCredentials(SecretStr(emulator.token))
    async with SmsClient(emulator.url, credentials) as client:
        assert (await client.show_config()).config
        await asyncio.to_thread(emulator.set_faults, expire_tokens=True)
        with pytest.raises(AuthError) as expired:
            await client.show_config()
        assert (expired.value.error_code, expired.value.action) == (
            "APIGW.0307",
            ErrorAction.reauthenticate,
        )
