"""SMS v3 call flows written once as data, for drivers that replay them through different clients.

A step names the operation (the method name shared by the official SDK's `SmsClient` and ours),
its path and query parameters and its body as wire JSON. `${name}` in any string is replaced by
a value an earlier step saved: `save="task_id"` keeps the `id` field of that step's answer.
An `AdminStep` sets up what no SMS call can (a task's key material) through `/_emulator/`.

    for step in CONSOLE_AND_AGENT_FLOW:
        params, body = step.resolved(saved)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from string import Template
from typing import Any, Optional, Union

PROJECT_ID = "0123456789abcdef0123456789abcdef"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def substitute(value: Any, saved: Mapping[str, str]) -> Any:
    """`value` with every `${name}` in its strings replaced by `saved[name]`, recursively."""
    if isinstance(value, str):
        return Template(value).substitute(saved)
    if isinstance(value, list):
        return [substitute(item, saved) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, saved) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Step:
    """One SMS call: `operation(**params, body=body)`; `save` keeps the answer's `id`."""

    operation: str
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Optional[Mapping[str, Any]] = None
    save: Optional[str] = None

    def resolved(self, saved: Mapping[str, str]) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """Parameters and body with the saved values filled in."""
        body = None if self.body is None else substitute(dict(self.body), saved)
        return substitute(dict(self.params), saved), body


@dataclass(frozen=True)
class AdminStep:
    """One `/_emulator/` call, made the same way whichever client drives the flow."""

    method: str
    path: str
    body: Mapping[str, Any] = field(default_factory=dict)

    def resolved(self, saved: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        return substitute(self.path, saved), substitute(dict(self.body), saved)


FlowStep = Union[Step, AdminStep]


ROOT_DISK: dict[str, Any] = {
    "name": "/dev/vda",
    "partition_style": "MBR",
    "device_use": "BOOT",
    "size": 10737418240,
    "used_size": 2147483648,
    "os_disk": True,
    "physical_volumes": [
        {
            "device_use": "OS",
            "file_system": "ext4",
            "index": 0,
            "mount_point": "/",
            "name": "/dev/vda1",
            "size": 10737418240,
            "used_size": 2147483648,
            "uuid": "0b4c1e4e-4bd1-4f57-9a58-3b4b2a6e3c1a",
        }
    ],
}


def registration(name: str, ip: str) -> dict[str, Any]:
    """A `POST /v3/sources` body of a Linux server with one disk and one network."""
    return {
        "name": name,
        "ip": ip,
        "hostname": name,
        "os_type": "LINUX",
        "os_version": "Debian GNU/Linux 12",
        "firmware": "BIOS",
        "boot_loader": "GRUB",
        "cpu_quantity": 2,
        "memory": 4096,
        "disks": [ROOT_DISK],
        "btrfs_list": [],
        "volume_groups": [],
        "networks": [
            {
                "name": "eth0",
                "ip": ip,
                "netmask": "255.255.255.0",
                "gateway": "192.0.2.1",
                "mtu": 1500,
                "mac": "fa:16:3e:00:00:01",
            }
        ],
        "has_rsync": True,
        "has_tc": True,
        "paravirtualization": False,
        "raw_devices": "",
        "agent_version": "0.1.0",
        "kernel_version": "6.1.0-18-amd64",
    }


def new_task(name: str, source_ref: str) -> dict[str, Any]:
    """A `POST /v3/tasks` body of a file-level Linux migration."""
    return {
        "name": name,
        "type": "MIGRATE_FILE",
        "os_type": "LINUX",
        "source_server": {"id": source_ref},
        "target_server": {"name": f"{name}-target", "vm_id": "vm-0001"},
        "migration_ip": "198.51.100.20",
        "region_name": "ap-southeast-3",
        "region_id": "ap-southeast-3",
        "project_name": "ap-southeast-3",
        "project_id": PROJECT_ID,
        "syncing": False,
        "speed_limit": 100,
    }


PROGRESS: dict[str, Any] = {
    "subtask_name": "MIGRATE_LINUX_FILE",
    "progress": 40,
    "replicatesize": 400_000_000,
    "totalsize": 1_000_000_000,
    "process_trace": "copying /var",
    "migrate_speed": 85.5,
    "remain_time": 7,
    "total_cpu_usage": 12.5,
    "agent_cpu_usage": 3.0,
}

NETWORK_CHECK: dict[str, Any] = {
    "domain_connectivity": True,
    "destination_connectivity": True,
    "network_delay": 1.5,
    "network_jitter": 0.2,
    "migration_speed": 900.0,
    "loss_percentage": 0.0,
    "cpu_usage": 5.0,
    "mem_usage": 30.0,
    "evaluation_result": "success",
}

TASK = {"task_id": "${task_id}"}
SOURCE = {"source_id": "${source_id}"}
SERVER = {"server_id": "${source_id}"}

# The agent registers; the console lists it, creates a task and starts it; the agent polls START,
# reports progress and state and reads its keys and settings; the console stops the task; the
# agent polls STOP and reports the result. A second source's task is created and deleted so that
# DeleteTask is part of the record too.
CONSOLE_AND_AGENT_FLOW: tuple[FlowStep, ...] = (
    Step("show_config"),
    Step("show_privacy_agreements"),
    Step("create_privacy_agreements"),
    Step("show_privacy_agreements"),
    Step("register_server", body=registration("web01", "192.0.2.10"), save="source_id"),
    Step("list_servers", {"name": "web01"}),
    Step(
        "update_disk_info",
        SOURCE,
        {"disks": [ROOT_DISK], "volumegroups": [], "btrfs_list": []},
    ),
    Step("show_server", SOURCE),
    Step("create_task", body=new_task("web01-migration", "${source_id}"), save="task_id"),
    Step("show_task", TASK),
    Step("show_command", SERVER),
    Step("update_task_status", TASK, {"operation": "start"}),
    Step("show_command", SERVER),
    Step("update_task_speed", TASK, PROGRESS),
    Step("update_copy_state", SOURCE, {"copystate": "replicate", "migrationcycle": "replicating"}),
    Step("show_task", TASK),
    Step("show_server", SOURCE),
    AdminStep(
        "PUT",
        "/tasks/${task_id}/certkey",
        {"private_key": PRIVATE_KEY, "passphrase": "correct horse"},
    ),
    Step("show_cert_key", {**TASK, "enable_ca_cert": False}),
    Step("show_passphrase", TASK),
    Step(
        "update_speed",
        TASK,
        {
            "speed_limit": [
                {"start": "08:00", "end": "18:00", "speed": 50, "over_speed_threshold": 20.0},
                {"start": "18:00", "end": "24:00", "speed": 0},
            ]
        },
    ),
    Step("shows_speed_limits", TASK),
    Step(
        "upload_special_configuration_setting",
        TASK,
        {
            "configurations": [
                {"config_key": "MIGRATE_EXCLUDE_DIR", "config_value": "/data/cache"},
                {"config_key": "LINUX_CPU_LIMIT", "config_value": "60"},
            ]
        },
    ),
    Step("show_config_setting", {**TASK, "config_key": "LINUX_CPU_LIMIT"}),
    Step("update_network_check_info", TASK, NETWORK_CHECK),
    Step(
        "update_consistency_result",
        TASK,
        {
            "consistency_result": [
                {
                    "dir_check": "/srv",
                    "num_total_files": 10,
                    "num_different_files": 1,
                    "num_target_miss_files": 0,
                    "num_target_more_files": 2,
                }
            ]
        },
    ),
    Step("update_task", TASK, {"image_disk_id": "disk-1", "speed_limit": 20}),
    Step("list_tasks", {"source_server_id": "${source_id}"}),
    Step("update_task_status", TASK, {"operation": "stop"}),
    Step("show_command", SERVER),
    Step(
        "update_command_result",
        SERVER,
        {"command_name": "STOP", "result": "success", "result_detail": TASK},
    ),
    Step("show_task", TASK),
    Step("show_command", SERVER),
    Step("register_server", body=registration("web02", "192.0.2.11"), save="other_source_id"),
    Step(
        "create_task", body=new_task("web02-migration", "${other_source_id}"), save="other_task_id"
    ),
    Step("delete_task", {"task_id": "${other_task_id}"}),
    Step("list_tasks"),
    Step("list_servers", {"name": "web02"}),
)
