"""A task's target layout through the official SDK: created by CreateTask, read back by the SDK's
ShowTask and by our client, and accepted by `parse_layout` as the agent would read it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdksms.v3 import (
    BtrfsFileSystem,
    CreateTaskRequest,
    LogicalVolumes,
    NetWork,
    PhysicalVolume,
    PhysicalVolumes,
    PostSourceServerBody,
    PostTask,
    RegisterServerRequest,
    ServerDisk,
    ShowTaskRequest,
    SmsClient,
    SourceServerByTask,
    TargetDisks,
    TargetServerByTask,
    VolumeGroups,
)
from pydantic import SecretStr

from smsagent.api.auth import AkSkCredentials
from smsagent.api.client import SmsClient as OurClient
from smsagent.api.models import Task
from smsagent.target.layout import MIB, BootMode, PartitionStyle, VolumeKind, parse_layout
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.timeout(60)

PROJECT_ID = "0123456789abcdef0123456789abcdef"
GIB = 1024**3
BTRFS_UUID = "d0ed7ee6-a1c8-4e80-a552-8fc200435329"
# sda: GPT booted by BIOS (bios_grub, /boot, a PV of `rhel`); sdb: btrfs on the whole disk.
SDA_PV_BYTES = 20 * GIB - 1026 * MIB - 17 * 1024  # to the last usable sector


def sdk_client(emulator: EmulatorProcess) -> Any:
    credentials = BasicCredentials(emulator.ak, emulator.sk, PROJECT_ID)
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
    sda = ServerDisk(
        name="/dev/sda",
        partition_style="GPT",
        device_use="BOOT",
        size=20 * GIB,
        used_size=4 * GIB,
        os_disk=True,
        physical_volumes=[
            PhysicalVolume(name="/dev/sda1", index=0, size=MIB, device_use="NORMAL", used_size=0),
            PhysicalVolume(
                name="/dev/sda2",
                index=1,
                size=GIB,
                device_use="BOOT",
                file_system="ext4",
                mount_point="/boot",
                uuid="6a1e3f0c-9d2b-4c59-8b1e-2f1d7c1a9b10",
                used_size=200 * MIB,
            ),
            PhysicalVolume(
                name="/dev/sda3",
                index=2,
                size=SDA_PV_BYTES,
                device_use="VOLUME_GROUP",
                file_system="LVM2_member",
                used_size=SDA_PV_BYTES - 1 * GIB,
            ),
        ],
    )
    sdb = ServerDisk(
        name="/dev/sdb",
        device_use="BTRFS",
        size=50 * GIB,
        used_size=GIB,
        os_disk=False,
        physical_volumes=[
            PhysicalVolume(
                name="/dev/sdb",
                index=0,
                size=50 * GIB,
                device_use="BTRFS",
                file_system="btrfs",
                mount_point="/srv/btrfs",
                uuid=BTRFS_UUID,
                used_size=GIB,
            )
        ],
    )
    rhel = VolumeGroups(
        name="rhel",
        components="/dev/sda3",
        size=18 * GIB,
        free_size=GIB,
        logical_volumes=[
            LogicalVolumes(name="root", size=12 * GIB, file_system="ext4", mount_point="/"),
            LogicalVolumes(name="var", size=4 * GIB, file_system="xfs", mount_point="/var"),
            LogicalVolumes(name="swap", size=GIB, file_system="swap", mount_point=""),
        ],
    )
    btrfs = BtrfsFileSystem(name="/dev/sdb", label="", uuid=BTRFS_UUID, device="/dev/sdb")
    network = NetWork(
        name="eth0",
        ip="192.0.2.10",
        netmask="255.255.255.0",
        gateway="192.0.2.1",
        mac="fa:16:3e:00:00:01",
    )
    return PostSourceServerBody(
        name="db01",
        ip="192.0.2.10",
        os_type="LINUX",
        os_version="Red Hat Enterprise Linux 8.9 64bit",
        firmware="BIOS",
        boot_loader="GRUB",
        disks=[sda, sdb],
        volume_groups=[rhel],
        btrfs_list=[btrfs],
        networks=[network],
        has_rsync=True,
        agent_version="1.0.0",
    )


def new_task(source_id: str, target: TargetServerByTask, kind: str = "MIGRATE_FILE") -> PostTask:
    return PostTask(
        name="db01-migration",
        type=kind,
        os_type="LINUX",
        source_server=SourceServerByTask(id=source_id),
        target_server=target,
        region_name="ap-southeast-3",
        region_id="ap-southeast-3",
        project_name="ap-southeast-3",
        project_id=PROJECT_ID,
    )


def our_task(emulator: EmulatorProcess, task_id: str) -> Task:
    """ShowTask through the agent's own client."""

    async def show() -> Task:
        credentials = AkSkCredentials(emulator.ak, SecretStr(emulator.sk), PROJECT_ID)
        async with OurClient(emulator.url, credentials) as client:
            return await client.show_task(task_id)

    return asyncio.run(show())


def given_target() -> TargetServerByTask:
    """What a console user sends: the target's own device names, the SDK's disk shape (no
    partition style, no relation), the group named by the source's PV, btrfs as objects."""
    vda = TargetDisks(
        name="/dev/vda",
        device_use="BOOT",
        size=20 * GIB,
        used_size=4 * GIB,
        physical_volumes=[
            PhysicalVolumes(name="/dev/vda1", index=0, size=MIB),
            PhysicalVolumes(
                name="/dev/vda2",
                index=1,
                size=GIB,
                file_system="ext4",
                mount_point="/boot",
                uuid="6a1e3f0c-9d2b-4c59-8b1e-2f1d7c1a9b10",
            ),
            PhysicalVolumes(
                name="/dev/vda3",
                index=2,
                size=SDA_PV_BYTES,
                file_system="LVM2_member",
                device_use="VOLUME_GROUP",
            ),
        ],
    )
    vdb = TargetDisks(
        name="/dev/vdb",
        device_use="NORMAL",
        size=50 * GIB,
        physical_volumes=[
            PhysicalVolumes(
                name="/dev/vdb",
                index=0,
                size=50 * GIB,
                file_system="btrfs",
                mount_point="/srv/btrfs",
            )
        ],
    )
    rhel = VolumeGroups(
        name="rhel",
        components="/dev/sda3",
        logical_volumes=[
            LogicalVolumes(name="root", size=12 * GIB, file_system="ext4", mount_point="/"),
            LogicalVolumes(name="var", size=4 * GIB, file_system="xfs", mount_point="/var"),
        ],
    )
    btrfs = BtrfsFileSystem(uuid=BTRFS_UUID, name="/dev/vdb")
    return TargetServerByTask(
        name="db01-target",
        vm_id="vm-0001",
        disks=[vda, vdb],
        volume_groups=[rhel],
        btrfs_list=[btrfs],
    )


def test_given_layout_round_trips_and_parses(emulator: EmulatorProcess) -> None:
    """The SDK's disks come back with the partition style and relation of the source disk each
    pairs with; the SDK and our client read the same layout; `parse_layout` accepts it."""
    client = sdk_client(emulator)
    source_id = client.register_server(RegisterServerRequest(body=registration())).id
    task_id = client.create_task(CreateTaskRequest(body=new_task(source_id, given_target()))).id

    shown = client.show_task(ShowTaskRequest(task_id=task_id)).target_server
    assert [(d.name, d.relation_name, d.partition_style, d.size) for d in shown.disks] == [
        ("/dev/vda", "/dev/sda", "GPT", 20 * GIB),
        ("/dev/vdb", "/dev/sdb", None, 50 * GIB),
    ]
    assert [pv.name for pv in shown.disks[0].physical_volumes] == [
        "/dev/vda1",
        "/dev/vda2",
        "/dev/vda3",
    ]
    assert [(vg.name, [lv.name for lv in vg.logical_volumes]) for vg in shown.volume_groups] == [
        ("rhel", ["root", "var"])
    ]
    assert shown.btrfs_list == [BTRFS_UUID]
    assert shown.vm_id == "vm-0001"

    ours = our_task(emulator, task_id).target_server
    assert ours is not None and ours.disks is not None
    assert [d.name for d in ours.disks] == [d.name for d in shown.disks]
    layout = parse_layout(ours)
    vda, vdb = layout.disks
    assert (vda.device, vda.partition_style, vda.is_boot) == ("/dev/vda", PartitionStyle.GPT, True)
    assert [(p.path, p.kind) for p in vda.partitions] == [
        ("/dev/vda1", VolumeKind.BIOS_BOOT),
        ("/dev/vda2", VolumeKind.FILESYSTEM),
        ("/dev/vda3", VolumeKind.LVM_PV),
    ]
    assert vdb.whole is not None and vdb.whole.fs is not None
    assert (vdb.whole.path, vdb.whole.fs.fstype) == ("/dev/vdb", "btrfs")
    (rhel,) = layout.volume_groups
    assert rhel.members == ("/dev/vda3",)
    assert layout.boot_mode is BootMode.BIOS
    assert [(v.fs.mount_point, v.device) for v in layout.mounts()] == [
        ("/", "/dev/rhel/root"),
        ("/boot", "/dev/vda2"),
        ("/var", "/dev/rhel/var"),
        ("/srv/btrfs", "/dev/vdb"),
    ]


def test_default_layout_from_the_registered_source(emulator: EmulatorProcess) -> None:
    """No disks in CreateTask: the source's disks, groups and btrfs appear under the source's
    names, and the layout parses with the source's partitions."""
    client = sdk_client(emulator)
    source_id = client.register_server(RegisterServerRequest(body=registration())).id
    target = TargetServerByTask(name="db01-target", vm_id="vm-0001")
    task_id = client.create_task(CreateTaskRequest(body=new_task(source_id, target))).id

    shown = client.show_task(ShowTaskRequest(task_id=task_id)).target_server
    assert [(d.name, d.relation_name, d.partition_style) for d in shown.disks] == [
        ("/dev/sda", "/dev/sda", "GPT"),
        ("/dev/sdb", "/dev/sdb", None),
    ]
    assert [pv.uuid for pv in shown.disks[1].physical_volumes] == [BTRFS_UUID]
    assert [lv.name for lv in shown.volume_groups[0].logical_volumes] == ["root", "var", "swap"]
    assert shown.btrfs_list == [BTRFS_UUID]

    layout = parse_layout(our_task(emulator, task_id).target_server)
    sda, sdb = layout.disks
    assert [(p.number, p.size // MIB, p.kind) for p in sda.partitions] == [
        (1, 1, VolumeKind.BIOS_BOOT),
        (2, 1024, VolumeKind.FILESYSTEM),
        (3, 19453, VolumeKind.LVM_PV),
    ]
    assert sdb.whole is not None and sdb.whole.fs is not None
    assert sdb.whole.fs.source_uuid == BTRFS_UUID
    (rhel,) = layout.volume_groups
    assert rhel.members == ("/dev/sda3",)
    assert [v.device for v in layout.volumes() if v.fs.is_swap] == ["/dev/rhel/swap"]


def test_target_disk_smaller_than_the_source_is_refused(emulator: EmulatorProcess) -> None:
    """For a block-level task, the SDK sees a 400 whose message names the disk's size field."""
    client = sdk_client(emulator)
    source_id = client.register_server(RegisterServerRequest(body=registration())).id
    small = TargetDisks(name="/dev/vda", device_use="BOOT", size=10 * GIB)
    target = TargetServerByTask(name="t", disks=[small])
    with pytest.raises(ClientRequestException) as raised:
        client.create_task(CreateTaskRequest(body=new_task(source_id, target, "MIGRATE_BLOCK")))
    assert (raised.value.status_code, raised.value.error_code) == (400, "SMS.9001")
    assert "'target_server.disks[0].size'" in raised.value.error_msg
