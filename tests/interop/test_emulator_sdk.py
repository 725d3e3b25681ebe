"""The official Huawei SDK drives a running emulator as a console and as an agent would."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException, ServerResponseException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdksms.v3 import (
    CommandBody,
    ConfigBody,
    ConfigurationRequestBody,
    ConsistencyResult,
    CreatePrivacyAgreementsRequest,
    CreateTaskRequest,
    DeleteTaskRequest,
    ListServersRequest,
    ListTasksRequest,
    NetWork,
    NetworkCheckInfoRequestBody,
    PhysicalVolume,
    PostSourceServerBody,
    PostTask,
    PutCopyStateReq,
    PutDiskInfoReq,
    PutTaskReq,
    RegisterServerRequest,
    ServerDisk,
    SetConsistencyResultRequestBody,
    ShowCertKeyRequest,
    ShowCommandRequest,
    ShowConfigRequest,
    ShowConfigSettingRequest,
    ShowConsistencyResultRequest,
    ShowPassphraseRequest,
    ShowPrivacyAgreementsRequest,
    ShowServerRequest,
    ShowsSpeedLimitsRequest,
    ShowTaskRequest,
    SmsClient,
    SourceServerByTask,
    SpeedLimit,
    SpeedLimitlJson,
    TargetServerByTask,
    UpdateCommandResultRequest,
    UpdateConsistencyResultRequest,
    UpdateCopyStateRequest,
    UpdateDiskInfoRequest,
    UpdateNetworkCheckInfoRequest,
    UpdateSpeedRequest,
    UpdateTaskRequest,
    UpdateTaskSpeedReq,
    UpdateTaskSpeedRequest,
    UpdateTaskStatusReq,
    UpdateTaskStatusRequest,
    UploadSpecialConfigurationSettingRequest,
)

from tests.support.emulator import EmulatorProcess

PROJECT_ID = "0123456789abcdef0123456789abcdef"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def sdk_client(emulator: EmulatorProcess, sk: Optional[str] = None) -> Any:
    """An SmsClient on the emulator's http endpoint.

    With `project_id` given, BasicCredentials never looks the project up in IAM; the IAM endpoint
    still points at the emulator so that a lookup, if the SDK made one, would show in its log.
    """
    credentials = BasicCredentials(emulator.ak, sk or emulator.sk, PROJECT_ID)
    credentials.with_iam_endpoint(emulator.url)
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (
        SmsClient.new_builder()
        .with_credentials(credentials)
        .with_endpoint(emulator.url)
        .with_http_config(config)
        .build()
    )


def registration() -> PostSourceServerBody:
    volume = PhysicalVolume(
        device_use="OS",
        file_system="ext4",
        index=0,
        mount_point="/",
        name="/dev/vda1",
        size=10737418240,
        used_size=2147483648,
        uuid="0b4c1e4e-4bd1-4f57-9a58-3b4b2a6e3c1a",
    )
    disk = ServerDisk(
        name="/dev/vda",
        partition_style="MBR",
        device_use="BOOT",
        size=10737418240,
        used_size=2147483648,
        physical_volumes=[volume],
        os_disk=True,
    )
    network = NetWork(
        name="eth0",
        ip="192.0.2.10",
        netmask="255.255.255.0",
        gateway="192.0.2.1",
        mtu=1500,
        mac="fa:16:3e:00:00:01",
    )
    return PostSourceServerBody(
        name="web01",
        ip="192.0.2.10",
        hostname="web01",
        os_type="LINUX",
        os_version="Debian GNU/Linux 12",
        firmware="BIOS",
        boot_loader="GRUB",
        cpu_quantity=2,
        memory=4096,
        disks=[disk],
        btrfs_list=[],
        volume_groups=[],
        networks=[network],
        has_rsync=True,
        has_tc=True,
        paravirtualization=False,
        raw_devices="",
        agent_version="0.1.0",
        kernel_version="6.1.0-18-amd64",
    )


def new_task(source_id: str) -> PostTask:
    return PostTask(
        name="web01-migration",
        type="MIGRATE_FILE",
        os_type="LINUX",
        source_server=SourceServerByTask(id=source_id),
        target_server=TargetServerByTask(name="web01-target", vm_id="vm-0001"),
        migration_ip="198.51.100.20",
        region_name="ap-southeast-3",
        region_id="ap-southeast-3",
        project_name="ap-southeast-3",
        project_id=PROJECT_ID,
        syncing=False,
        speed_limit=100,
    )


def command_of(client: Any, source_id: str) -> tuple[Optional[str], Optional[str]]:
    answer = client.show_command(ShowCommandRequest(server_id=source_id))
    task_id = answer.command_param.task_id if answer.command_param else None
    return answer.command_name, task_id


def test_console_and_agent_flow(emulator: EmulatorProcess) -> None:
    """Register, list, create, start, poll START, report progress and state, stop, poll STOP,
    report the result: every SDK call succeeds and reads back what was sent."""
    client = sdk_client(emulator)

    source_id = client.register_server(RegisterServerRequest(body=registration())).id
    listed = client.list_servers(ListServersRequest(name="web01"))
    assert listed.count == 1
    assert listed.source_servers[0].id == source_id
    assert listed.source_servers[0].connected is True

    task_id = client.create_task(CreateTaskRequest(body=new_task(source_id))).id
    assert client.show_task(ShowTaskRequest(task_id=task_id)).state == "READY"
    assert command_of(client, source_id) == (None, None)

    client.update_task_status(UpdateTaskStatusRequest(task_id, UpdateTaskStatusReq("start")))
    assert command_of(client, source_id) == ("START", task_id)

    progress = UpdateTaskSpeedReq(
        subtask_name="MIGRATE_LINUX_FILE",
        progress=40,
        replicatesize=400_000_000,
        totalsize=1_000_000_000,
        process_trace="copying /var",
        migrate_speed=85.5,
        remain_time=7,
        total_cpu_usage=12.5,
        agent_cpu_usage=3.0,
    )
    client.update_task_speed(UpdateTaskSpeedRequest(task_id=task_id, body=progress))
    state = PutCopyStateReq(copystate="replicate", migrationcycle="replicating")
    client.update_copy_state(UpdateCopyStateRequest(source_id=source_id, body=state))

    task = client.show_task(ShowTaskRequest(task_id=task_id))
    assert task.state == "RUNNING"
    assert [(s.name, s.progress) for s in task.sub_tasks] == [("MIGRATE_LINUX_FILE", 40)]
    assert float(task.migrate_speed) == 85.5
    assert task.remain_seconds == 7
    assert task.source_server.state == "replicate"
    assert task.source_server.migration_cycle == "replicating"
    assert task.migration_ip == "198.51.100.20"
    assert task.target_server.vm_id == "vm-0001"
    server = client.show_server(ShowServerRequest(source_id=source_id))
    assert (server.replicatesize, server.totalsize) == (400_000_000, 1_000_000_000)
    assert server.current_task.id == task_id

    client.update_task_status(UpdateTaskStatusRequest(task_id, UpdateTaskStatusReq("stop")))
    assert command_of(client, source_id) == ("STOP", task_id)
    result = CommandBody(command_name="STOP", result="success", result_detail={"task_id": task_id})
    client.update_command_result(UpdateCommandResultRequest(server_id=source_id, body=result))

    assert client.show_task(ShowTaskRequest(task_id=task_id)).state == "ABORT"
    assert command_of(client, source_id) == (None, None)
    results = emulator.state()["command_results"]
    assert [(r["command_name"], r["result"]) for r in results] == [("STOP", "success")]


def test_task_settings_round_trip(emulator: EmulatorProcess) -> None:
    """Keys, speed limits, configuration settings, consistency and network results read back."""
    client = sdk_client(emulator)
    source_id = client.register_server(RegisterServerRequest(body=registration())).id
    task_id = client.create_task(CreateTaskRequest(body=new_task(source_id))).id
    emulator.set_cert_key(task_id, private_key=PRIVATE_KEY, passphrase="correct horse")

    keys = client.show_cert_key(ShowCertKeyRequest(task_id=task_id, enable_ca_cert=False))
    assert keys.private_key == PRIVATE_KEY
    passphrase = client.show_passphrase(ShowPassphraseRequest(task_id=task_id))
    assert passphrase.passphrase == "correct horse"

    window = SpeedLimitlJson(start="08:00", end="18:00", speed=50, over_speed_threshold=20.0)
    client.update_speed(UpdateSpeedRequest(task_id, SpeedLimit(speed_limit=[window])))
    limits = client.shows_speed_limits(ShowsSpeedLimitsRequest(task_id=task_id))
    assert [(w.start, w.end, w.speed) for w in limits.speed_limit] == [("08:00", "18:00", 50)]

    settings = ConfigurationRequestBody(
        configurations=[
            ConfigBody(config_key="MIGRATE_EXCLUDE_DIR", config_value="/data/cache"),
            ConfigBody(config_key="LINUX_CPU_LIMIT", config_value="60"),
        ]
    )
    client.upload_special_configuration_setting(
        UploadSpecialConfigurationSettingRequest(task_id=task_id, body=settings)
    )
    shown = client.show_config_setting(
        ShowConfigSettingRequest(task_id=task_id, config_key="LINUX_CPU_LIMIT")
    )
    assert shown.migrate_type == "LINUX_MIGRATE_FILE"
    assert [(c.config_key, c.config_value) for c in shown.configurations] == [
        ("LINUX_CPU_LIMIT", "60")
    ]

    check = NetworkCheckInfoRequestBody(
        domain_connectivity=True,
        destination_connectivity=True,
        network_delay=1.5,
        network_jitter=0.2,
        migration_speed=900.0,
        loss_percentage=0.0,
        cpu_usage=5.0,
        mem_usage=30.0,
        evaluation_result="success",
    )
    answer = client.update_network_check_info(
        UpdateNetworkCheckInfoRequest(task_id=task_id, body=check)
    )
    assert answer.task_id == task_id
    assert client.show_task(ShowTaskRequest(task_id)).network_check_info.evaluation_result == (
        "success"
    )

    consistency = ConsistencyResult(
        dir_check="/srv",
        num_total_files=10,
        num_different_files=1,
        num_target_miss_files=0,
        num_target_more_files=2,
    )
    client.update_consistency_result(
        UpdateConsistencyResultRequest(task_id, SetConsistencyResultRequestBody([consistency]))
    )
    shown_results = client.show_consistency_result(ShowConsistencyResultRequest(task_id))
    assert len(shown_results.result_list) == 1 and "/srv" in shown_results.result_list[0]


def test_agent_side_calls_parse(emulator: EmulatorProcess) -> None:
    """Config, privacy agreement, disk update, task update, list and delete all parse."""
    client = sdk_client(emulator)
    config = client.show_config(ShowConfigRequest())
    assert config.config["mainRegion"] and config.regions
    assert client.show_privacy_agreements(ShowPrivacyAgreementsRequest()).flag is False
    client.create_privacy_agreements(CreatePrivacyAgreementsRequest())
    assert client.show_privacy_agreements(ShowPrivacyAgreementsRequest()).flag is True

    source_id = client.register_server(RegisterServerRequest(body=registration())).id
    disks = PutDiskInfoReq(disks=registration().disks, volumegroups=[], btrfs_list=[])
    client.update_disk_info(UpdateDiskInfoRequest(source_id=source_id, body=disks))
    task_id = client.create_task(CreateTaskRequest(body=new_task(source_id))).id
    updated = client.update_task(
        UpdateTaskRequest(task_id, PutTaskReq(image_disk_id="disk-1", speed_limit=20))
    )
    assert updated.id == task_id
    task = client.show_task(ShowTaskRequest(task_id))
    assert (task.speed_limit, task.target_server.image_disk_id) == (20, "disk-1")
    assert [
        t.id for t in client.list_tasks(ListTasksRequest(source_server_id=source_id)).tasks
    ] == [task_id]

    client.delete_task(DeleteTaskRequest(task_id))
    with pytest.raises(ClientRequestException) as raised:
        client.show_task(ShowTaskRequest(task_id))
    assert (raised.value.status_code, raised.value.error_code) == (404, "SMS.7703")
    assert raised.value.request_id


def test_no_iam_call_and_every_call_signed(emulator: EmulatorProcess) -> None:
    """With a project id the SDK calls only SMS paths, and every call passes the signature check."""
    client = sdk_client(emulator)
    client.register_server(RegisterServerRequest(body=registration()))
    client.list_servers(ListServersRequest())
    requests = emulator.state()["requests"]
    assert set(requests) == {"POST /v3/sources", "GET /v3/sources"}
    assert all(set(entry["statuses"]) == {"200"} for entry in requests.values())


def test_wrong_secret_key_is_refused_with_gateway_error(emulator: EmulatorProcess) -> None:
    """A request signed with another SK gets the gateway's 401 APIGW.0301, which the SDK parses."""
    client = sdk_client(emulator, sk="not-the-secret-key")
    with pytest.raises(ClientRequestException) as raised:
        client.list_servers(ListServersRequest())
    assert (raised.value.status_code, raised.value.error_code) == (401, "APIGW.0301")
    assert "signature" in raised.value.error_msg


def test_injected_error_is_parsed_by_the_sdk(emulator: EmulatorProcess) -> None:
    """An injected 503 reaches the SDK as a server error with the SMS code and request id."""
    emulator.set_faults(error_rate=1.0, error_status=503, max_faults=1)
    client = sdk_client(emulator)
    with pytest.raises(ServerResponseException) as raised:
        client.show_config(ShowConfigRequest())
    assert (raised.value.status_code, raised.value.error_code) == (503, "SMS.2007")
    assert client.show_config(ShowConfigRequest()).config
