"""Pydantic models for every SMS v3 request and response body the agent and the emulator use.

Field names, types and limits follow the spec (§3 and §4 of the SMS API note) and the SDK.
Request models ignore unknown input and only ever serialize the fields named here; response
models keep unknown fields, so a newer server never breaks an older agent.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from smsagent.api.enums import (
    CommandName,
    CommandResult,
    ConfigKey,
    CopyState,
    MigrationCycle,
    OsType,
    PartitionStyle,
    SubtaskName,
    TaskOperation,
    TaskType,
)

Str255 = Annotated[str, StringConstraints(max_length=255)]
Str1024 = Annotated[str, StringConstraints(max_length=1024)]
LongText = Annotated[str, StringConstraints(max_length=65535)]
Name64 = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Long = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Size = Annotated[int, Field(ge=0, le=2**63 - 1)]
Percent = Annotated[int, Field(ge=0, le=100)]


class RequestModel(BaseModel):
    """A body we send (agent) or validate (emulator): unknown input is dropped, never sent."""

    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, use_enum_values=False, defer_build=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to send: only the fields that are set, enums as their wire strings."""
        return self.model_dump(mode="json", exclude_none=True)


class ResponseModel(BaseModel):
    """A body we receive (agent) or serve (emulator): unknown fields are kept, never an error."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, defer_build=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ErrorBody(ResponseModel):
    """The error body of every SMS and API-gateway failure (spec §1.4)."""

    error_code: Optional[str] = None
    error_msg: Optional[str] = None
    request_id: Optional[str] = None
    encoded_authorization_message: Optional[str] = None


# §3.1 GET /v3/config, §3.2 privacy agreements


class ShowConfigResponse(ResponseModel):
    config: dict[str, str] = Field(default_factory=dict)
    regions: list[dict[str, Any]] = Field(default_factory=list)


class PrivacyAgreementsResponse(ResponseModel):
    flag: bool = False


# §3.3 POST /v3/sources and its parts


class PhysicalVolume(RequestModel):
    device_use: Optional[Str255] = None
    file_system: Optional[Str255] = None
    index: Optional[Int32] = None
    mount_point: Optional[Str1024] = None
    name: Optional[Str255] = None
    size: Optional[Size] = None
    used_size: Optional[Size] = None
    inode_size: Optional[Int32] = None
    inode_nums: Optional[Size] = None
    uuid: Optional[Str255] = None
    size_per_cluster: Optional[Int32] = None


class ServerDisk(RequestModel):
    name: Str255
    partition_style: Optional[PartitionStyle] = None
    device_use: Str255
    size: Size
    used_size: Size
    physical_volumes: list[PhysicalVolume] = Field(default_factory=list)
    os_disk: Optional[bool] = None
    relation_name: Optional[Str255] = None
    inode_size: Optional[Int32] = None


class LogicalVolumes(RequestModel):
    block_count: Optional[Long] = None
    block_size: Optional[Long] = None
    file_system: Optional[Str255] = None
    inode_size: Optional[Int32] = None
    inode_nums: Optional[Size] = None
    device_use: Optional[Str255] = None
    mount_point: Optional[Str1024] = None
    name: Optional[Str255] = None
    size: Optional[Size] = None
    used_size: Optional[Size] = None
    free_size: Optional[Size] = None


class VolumeGroups(RequestModel):
    components: Optional[Str1024] = None
    free_size: Optional[Size] = None
    logical_volumes: list[LogicalVolumes] = Field(default_factory=list)
    name: Optional[Str255] = None
    size: Optional[Size] = None


class BtrfsSubvolumn(RequestModel):
    uuid: Optional[Str255] = None
    is_snapshot: Optional[Str255] = None
    subvol_id: Optional[Str255] = None
    parent_id: Optional[Str255] = None
    subvol_name: Optional[Str1024] = None
    subvol_mount_path: Optional[Str1024] = None


class BtrfsFileSystem(RequestModel):
    name: Optional[Str255] = None
    label: Optional[Str255] = None
    uuid: Optional[Str255] = None
    device: Optional[Str1024] = None
    size: Optional[Size] = None
    nodesize: Optional[Size] = None
    sectorsize: Optional[Int32] = None
    data_profile: Optional[Str255] = None
    system_profile: Optional[Str255] = None
    metadata_profile: Optional[Str255] = None
    global_reserve1: Optional[Str255] = None
    g_vol_used_size: Optional[Size] = None
    default_subvolid: Optional[Str255] = None
    default_subvol_name: Optional[Str1024] = None
    default_subvol_mountpath: Optional[Str1024] = None
    subvolumn: list[BtrfsSubvolumn] = Field(default_factory=list)


class NetWork(RequestModel):
    name: Optional[Str255] = None
    ip: Optional[Str255] = None
    ipv6: Optional[Str255] = None
    netmask: Optional[Str255] = None
    gateway: Optional[Str255] = None
    mtu: Optional[Int32] = None
    mac: Optional[Str255] = None
    id: Optional[Str255] = None


class PostSourceServerBody(RequestModel):
    """Registration body of `POST /v3/sources` (spec §3.3)."""

    id: Optional[Str255] = None
    ip: Optional[Str255] = None
    ipv6: Optional[Str255] = None
    name: Name64
    hostname: Optional[Str255] = None
    os_type: OsType
    os_version: Str255
    virtualization_type: Optional[Str255] = None
    linux_block_check: Optional[Str255] = None
    firmware: Optional[Str255] = None
    cpu_quantity: Optional[Annotated[int, Field(ge=0, le=65535)]] = None
    memory: Optional[Size] = None
    disks: list[ServerDisk] = Field(default_factory=list)
    btrfs_list: list[BtrfsFileSystem] = Field(default_factory=list)
    networks: list[NetWork] = Field(default_factory=list)
    domain_id: Optional[Str255] = None
    has_rsync: Optional[bool] = None
    paravirtualization: Optional[bool] = None
    raw_devices: Optional[Str255] = None
    driver_files: Optional[bool] = None
    system_services: Optional[bool] = None
    account_rights: Optional[bool] = None
    boot_loader: Optional[Str255] = None
    system_dir: Optional[Str255] = None
    volume_groups: list[VolumeGroups] = Field(default_factory=list)
    agent_version: Str255
    kernel_version: Optional[Str255] = None
    migration_cycle: Optional[Str255] = None
    state: Optional[Str255] = None
    oem_system: Optional[bool] = None
    start_type: Optional[Str255] = None
    io_read_wait: Optional[float] = None
    has_tc: Optional[bool] = None
    platform: Optional[Str255] = None


class IdResponse(ResponseModel):
    """`{"id": ...}`: RegisterServer, CreateTask and UpdateTask answer with it."""

    id: str


# §3.4 PUT /v3/sources/{id}/diskinfo


class PutDiskInfoReq(RequestModel):
    disks: Optional[list[ServerDisk]] = None
    volumegroups: Optional[list[VolumeGroups]] = None
    btrfs_list: Optional[list[BtrfsFileSystem]] = None


# §3.5 GET /v3/sources/{id}


class EnvironmentCheck(ResponseModel):
    id: Optional[int] = None
    name: Optional[str] = None
    result: Optional[str] = None
    params: Optional[list[str]] = None
    error_code: Optional[str] = None
    error_or_warn: Optional[str] = None
    error_params: Optional[str] = None


class TaskBrief(ResponseModel):
    """`current_task` of a source server."""

    id: Optional[str] = None
    name: Optional[str] = None
    type: Optional[str] = None
    state: Optional[str] = None
    start_date: Optional[int] = None
    speed_limit: Optional[int] = None
    migrate_speed: Optional[float] = None
    start_target_server: Optional[bool] = None
    region_id: Optional[str] = None
    project_name: Optional[str] = None
    project_id: Optional[str] = None
    subtask_info: Optional[str] = None


class SourceServer(ResponseModel):
    """ShowServer and ListServers entries (the fields the agent and the console read)."""

    id: str
    ip: Optional[str] = None
    name: Optional[str] = None
    hostname: Optional[str] = None
    enterprise_project_id: Optional[str] = None
    add_date: Optional[int] = None
    os_type: Optional[str] = None
    os_version: Optional[str] = None
    oem_system: Optional[bool] = None
    state: Optional[str] = None
    connected: Optional[bool] = None
    firmware: Optional[str] = None
    cpu_quantity: Optional[int] = None
    memory: Optional[int] = None
    current_task: Optional[TaskBrief] = None
    disks: Optional[list[dict[str, Any]]] = None
    volume_groups: Optional[list[dict[str, Any]]] = None
    btrfs_list: Optional[list[dict[str, Any]]] = None
    networks: Optional[list[dict[str, Any]]] = None
    checks: Optional[list[EnvironmentCheck]] = None
    migration_cycle: Optional[str] = None
    state_action_time: Optional[int] = None
    replicatesize: Optional[int] = None
    totalsize: Optional[int] = None
    last_visit_time: Optional[int] = None
    stage_action_time: Optional[int] = None
    agent_version: Optional[str] = None
    has_tc: Optional[bool] = None
    start_type: Optional[str] = None


class ListServersResponse(ResponseModel):
    count: int = 0
    source_servers: list[SourceServer] = Field(default_factory=list)


# §3.6 GET command, §3.7 POST command_result


class CommandParam(ResponseModel):
    task_id: Optional[str] = None
    bucket: Optional[str] = None


class ShowCommandResponse(ResponseModel):
    """A pending command; both fields are absent when nothing is pending."""

    command_name: Optional[str] = None
    command_param: Optional[CommandParam] = None


class CommandBody(RequestModel):
    command_name: CommandName
    result: CommandResult
    result_detail: dict[str, Any] = Field(default_factory=dict)


# §3.8 PUT changestate


class PutCopyStateReq(RequestModel):
    copystate: CopyState
    migrationcycle: MigrationCycle


# §3.9 GET /v3/tasks/{id}


class TargetPhysicalVolume(ResponseModel):
    id: Optional[int] = None
    device_use: Optional[str] = None
    file_system: Optional[str] = None
    index: Optional[int] = None
    mount_point: Optional[str] = None
    name: Optional[str] = None
    size: Optional[int] = None
    used_size: Optional[int] = None
    uuid: Optional[str] = None
    relation_name: Optional[str] = None
    free_size: Optional[int] = None


class TargetDisk(ResponseModel):
    id: Optional[int] = None
    device_use: Optional[str] = None
    disk_id: Optional[str] = None
    name: Optional[str] = None
    physical_volumes: Optional[list[TargetPhysicalVolume]] = None
    size: Optional[int] = None
    used_size: Optional[int] = None
    disk_index: Optional[str] = None
    os_disk: Optional[bool] = None
    partition_style: Optional[str] = None
    relation_name: Optional[str] = None


class TaskTargetServer(ResponseModel):
    id: Optional[str] = None
    vm_id: Optional[str] = None
    name: Optional[str] = None
    ip: Optional[str] = None
    os_type: Optional[str] = None
    os_version: Optional[str] = None
    system_dir: Optional[str] = None
    disks: Optional[list[TargetDisk]] = None
    volume_groups: Optional[list[dict[str, Any]]] = None
    btrfs_list: Optional[list[str]] = None
    image_disk_id: Optional[str] = None
    cutovered_snapshot_ids: Optional[str] = None


class TaskSourceServer(ResponseModel):
    id: Optional[str] = None
    ip: Optional[str] = None
    name: Optional[str] = None
    os_type: Optional[str] = None
    os_version: Optional[str] = None
    oem_system: Optional[bool] = None
    state: Optional[str] = None
    migration_cycle: Optional[str] = None


class SubTask(ResponseModel):
    id: Optional[int] = None
    name: Optional[str] = None
    progress: Optional[int] = None
    start_date: Optional[int] = None
    end_date: Optional[int] = None
    migrate_speed: Optional[float] = None
    user_op: Optional[str] = None
    process_trace: Optional[str] = None


class CloneServer(ResponseModel):
    vm_id: Optional[str] = None
    name: Optional[str] = None
    clone_error: Optional[str] = None
    clone_state: Optional[str] = None
    error_msg: Optional[str] = None


class NetworkCheckInfoRequestBody(RequestModel):
    """§3.15 `POST /v3/{task_id}/update-network-check-info` (also echoed inside a task)."""

    domain_connectivity: Optional[bool] = None
    destination_connectivity: Optional[bool] = None
    network_delay: float
    network_jitter: float
    migration_speed: float
    loss_percentage: float
    cpu_usage: float
    mem_usage: float
    evaluation_result: Str255


class Task(ResponseModel):
    """ShowTask (§3.9); ListTasks entries carry a subset plus `syncing` and `special_config`."""

    id: str
    name: Optional[str] = None
    type: Optional[str] = None
    os_type: Optional[str] = None
    state: Optional[str] = None
    priority: Optional[int] = None
    speed_limit: Optional[int] = None
    migration_ip: Optional[str] = None
    region_id: Optional[str] = None
    region_name: Optional[str] = None
    project_id: Optional[str] = None
    project_name: Optional[str] = None
    enterprise_project_id: Optional[str] = None
    vm_template_id: Optional[str] = None
    start_target_server: Optional[bool] = None
    source_server: Optional[TaskSourceServer] = None
    target_server: Optional[TaskTargetServer] = None
    estimate_complete_time: Optional[int] = None
    create_date: Optional[int] = None
    start_date: Optional[int] = None
    finish_date: Optional[int] = None
    total_time: Optional[int] = None
    remain_seconds: Optional[int] = None
    connected: Optional[bool] = None
    migrate_speed: Optional[float] = None
    compress_rate: Optional[float] = None
    error_json: Optional[str] = None
    float_ip: Optional[str] = None
    target_snapshot_id: Optional[str] = None
    clone_server: Optional[CloneServer] = None
    sub_tasks: Optional[list[SubTask]] = None
    network_check_info: Optional[dict[str, Any]] = None
    total_cpu_usage: Optional[float] = None
    agent_cpu_usage: Optional[float] = None
    total_mem_usage: Optional[float] = None
    agent_mem_usage: Optional[float] = None
    total_disk_io: Optional[float] = None
    agent_disk_io: Optional[float] = None
    need_migration_test: Optional[bool] = None
    subtask_info: Optional[str] = None
    syncing: Optional[bool] = None
    special_config: Optional[list[dict[str, Any]]] = None
    is_need_consistency_check: Optional[bool] = None


class ListTasksResponse(ResponseModel):
    count: int = 0
    tasks: list[Task] = Field(default_factory=list)


# §3.10 PUT /v3/tasks/{id}


class PutTaskReq(RequestModel):
    name: Optional[Str255] = None
    type: Optional[TaskType] = None
    region_id: Optional[Str255] = None
    region_name: Optional[Str255] = None
    exist_server: Optional[bool] = None
    migration_ip: Optional[Str255] = None
    use_ipv6: Optional[bool] = None
    use_public_ip: Optional[bool] = None
    speed_limit: Optional[Annotated[int, Field(ge=0, le=100000)]] = None
    project_name: Optional[Str255] = None
    project_id: Optional[Str255] = None
    enterprise_project: Optional[Str255] = None
    image_disk_id: Optional[Str255] = None
    vm_template_id: Optional[Str255] = None
    target_disk_ids: Optional[Str1024] = None
    snapshot_ids: Optional[Str1024] = None
    cutovered_snapshot_ids: Optional[Str1024] = None
    target_server: Optional[dict[str, Any]] = None
    clone_server: Optional[dict[str, Any]] = None


# §3.11 PUT /v3/tasks/{id}/progress


class UpdateTaskSpeedReq(RequestModel):
    subtask_name: SubtaskName
    progress: Percent
    replicatesize: Size
    totalsize: Size
    process_trace: LongText
    migrate_speed: Optional[Annotated[float, Field(ge=0)]] = None
    compress_rate: Optional[float] = None
    remain_time: Optional[Size] = None
    total_cpu_usage: Optional[Annotated[float, Field(ge=0, le=100)]] = None
    agent_cpu_usage: Optional[Annotated[float, Field(ge=0, le=100)]] = None
    total_mem_usage: Optional[Annotated[float, Field(ge=0)]] = None
    agent_mem_usage: Optional[Annotated[float, Field(ge=0)]] = None
    total_disk_io: Optional[Annotated[float, Field(ge=0)]] = None
    agent_disk_io: Optional[Annotated[float, Field(ge=0)]] = None
    need_migration_test: Optional[bool] = None
    agent_time: Optional[Str255] = None


# §3.12 POST /v3/tasks/{id}/action


class UpdateTaskStatusReq(RequestModel):
    operation: TaskOperation
    template_id: Optional[Str255] = None
    switch_hce: Optional[bool] = None
    is_need_consistency_check: Optional[bool] = None


# §3.13 certkey, §3.14 passphrase, §3.15 network check response


class ShowCertKeyResponse(ResponseModel):
    cert: Optional[str] = None
    private_key: Optional[str] = None
    ca: Optional[str] = None
    target_mgmt_cert: Optional[str] = None
    target_mgmt_private_key: Optional[str] = None
    target_data_cert: Optional[str] = None
    target_data_private_key: Optional[str] = None

    def __repr__(self) -> str:
        # Private keys must never reach a log line or a traceback.
        return f"{type(self).__name__}(<{len(self.model_fields_set)} PEM fields hidden>)"

    __str__ = __repr__


class ShowPassphraseResponse(ResponseModel):
    task_id: Optional[str] = None
    passphrase: Optional[str] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_id={self.task_id!r}, passphrase=<hidden>)"

    __str__ = __repr__


class TaskIdResponse(ResponseModel):
    task_id: Optional[str] = None


# §3.16 speed limits


class SpeedLimitWindow(RequestModel):
    """One `SpeedLimitlJson` window: `HH:MM`-`HH:MM` at `speed` Mbit/s (0 = unlimited)."""

    start: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
    end: Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-4]):[0-5]\d$")]
    speed: Annotated[int, Field(ge=0, le=100000)]
    over_speed_threshold: Optional[Annotated[float, Field(ge=0)]] = None


class SpeedLimit(RequestModel):
    speed_limit: list[SpeedLimitWindow]


class ShowSpeedLimitsResponse(ResponseModel):
    speed_limit: list[SpeedLimitWindow] = Field(default_factory=list)


# §3.17 configuration-setting


class ConfigBody(RequestModel):
    config_key: ConfigKey
    config_value: Annotated[str, StringConstraints(max_length=65535)]
    config_status: Optional[Str255] = None


class ConfigurationRequestBody(RequestModel):
    configurations: list[ConfigBody]


class ShowConfigSettingResponse(ResponseModel):
    task_id: Optional[str] = None
    migrate_type: Optional[str] = None
    configurations: list[dict[str, Any]] = Field(default_factory=list)


# §3.18 consistency results


class ConsistencyResult(RequestModel):
    dir_check: Str1024
    num_total_files: Size
    num_different_files: Size
    num_target_miss_files: Size
    num_target_more_files: Size


class SetConsistencyResultRequestBody(RequestModel):
    consistency_result: list[ConsistencyResult]


class ShowConsistencyResultResponse(ResponseModel):
    task_id: Optional[str] = None
    result_list: list[str] = Field(default_factory=list)


# §3.22 console side: CreateTask


class SourceServerByTask(RequestModel):
    id: Str255


class PostTask(RequestModel):
    """`POST /v3/tasks`: what the console sends to create a migration task."""

    name: Name64
    type: TaskType
    start_target_server: Optional[bool] = None
    auto_start: Optional[bool] = None
    os_type: Optional[OsType] = None
    source_server: SourceServerByTask
    target_server: Optional[dict[str, Any]] = None
    migration_ip: Optional[Str255] = None
    region_name: Str255
    region_id: Str255
    project_name: Str255
    project_id: Str255
    priority: Optional[Annotated[int, Field(ge=0, le=2)]] = None
    vm_template_id: Optional[Str255] = None
    clonevm_template_id: Optional[Str255] = None
    use_public_ip: Optional[bool] = None
    use_ipv6: Optional[bool] = None
    syncing: Optional[bool] = None
    exist_server: Optional[bool] = None
    start_network_check: Optional[bool] = None
    speed_limit: Optional[Annotated[int, Field(ge=0, le=100000)]] = None
    over_speed_threshold: Optional[float] = None
    is_need_consistency_check: Optional[bool] = None
    need_migration_test: Optional[bool] = None
