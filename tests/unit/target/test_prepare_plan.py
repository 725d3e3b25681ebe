"""The preparation's checks and commands, without a target (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smsagent.api.models import TaskTargetServer
from smsagent.target.disks import (
    DISK_HOLDS_ROOT,
    DISK_IN_USE,
    DISK_MISSING,
    DISK_NOT_IN_TASK,
    DISK_NOT_WHOLE,
    DISK_TOO_SMALL,
    TargetDevices,
    check_disks,
    mounted_below,
    parse_lsblk,
    parse_pvs,
    refusal_message,
)
from smsagent.target.layout import MIB, parse_layout
from smsagent.target.prepare import build_steps, sfdisk_script

GIB = 1024 * MIB
OWN_ROOT = "/mnt/smsroot"


def _layout(device: str = "/dev/vdb", style: str = "MBR", pvs: Any = None) -> Any:
    volumes = pvs or [
        {"index": 0, "file_system": "ext4", "mount_point": "/boot", "size": 256 * MIB},
        {"index": 1, "file_system": "ext4", "mount_point": "/", "size": 2 * GIB},
        {"index": 2, "file_system": "swap", "size": 128 * MIB},
    ]
    raw = {
        "disks": [
            {
                "name": device,
                "partition_style": style,
                "device_use": "BOOT",
                "size": 4 * GIB,
                "physical_volumes": volumes,
            }
        ]
    }
    return parse_layout(TaskTargetServer.model_validate(raw))


def _lsblk(*devices: dict[str, Any]) -> str:
    return json.dumps({"blockdevices": list(devices)})


def _dev(name: str, size: int, kind: str = "disk", mount: Any = None, children: Any = ()) -> Any:
    return {
        "name": name,
        "type": kind,
        "size": size,
        "mountpoint": mount,
        "fstype": None,
        "ro": False,
        "children": list(children),
    }


def _devices(*nodes: dict[str, Any], pvs: Any = None, root: str = "/dev/vda1") -> TargetDevices:
    return TargetDevices(parse_lsblk(_lsblk(*nodes)), pvs or {}, root)


SYSTEM_DISK = _dev("/dev/vda", 40 * GIB, children=[_dev("/dev/vda1", 40 * GIB, "part", "/")])


class TestChecks:
    def test_a_blank_disk_of_the_right_size_passes(self) -> None:
        devices = _devices(SYSTEM_DISK, _dev("/dev/vdb", 4 * GIB))
        assert check_disks(_layout(), devices, own_root=OWN_ROOT) == []

    def test_missing(self) -> None:
        refusals = check_disks(_layout(), _devices(SYSTEM_DISK), own_root=OWN_ROOT)
        assert [(r.code, r.disk) for r in refusals] == [(DISK_MISSING, "/dev/vdb")]
        assert "target disk /dev/vdb: the target has no such disk" in refusal_message(refusals)

    def test_a_partition_is_not_a_disk(self) -> None:
        layout = _layout("/dev/vda1")
        refusals = check_disks(layout, _devices(SYSTEM_DISK), own_root=OWN_ROOT)
        assert refusals[0].code == DISK_NOT_WHOLE

    def test_too_small(self) -> None:
        devices = _devices(SYSTEM_DISK, _dev("/dev/vdb", 2 * GIB))
        refusals = check_disks(_layout(), devices, own_root=OWN_ROOT)
        assert refusals[0].code == DISK_TOO_SMALL
        assert "2048 MiB" in refusals[0].reason and "needs 2433 MiB" in refusals[0].reason

    def test_the_running_root_is_refused_by_mount_and_by_source(self) -> None:
        by_mount = check_disks(_layout("/dev/vda"), _devices(SYSTEM_DISK), own_root=OWN_ROOT)
        assert by_mount[0].code == DISK_HOLDS_ROOT
        assert "/dev/vda1 is the target's running root" in by_mount[0].reason
        # A root that lsblk shows unmounted (another mount namespace) is still known by source.
        quiet = _dev("/dev/vda", 40 * GIB, children=[_dev("/dev/vda1", 40 * GIB, "part")])
        by_source = check_disks(_layout("/dev/vda"), _devices(quiet), own_root=OWN_ROOT)
        assert by_source[0].code == DISK_HOLDS_ROOT

    def test_mounted_elsewhere_and_swap_are_in_use(self) -> None:
        disk = _dev(
            "/dev/vdb",
            4 * GIB,
            children=[
                _dev("/dev/vdb1", GIB, "part", "/srv"),
                _dev("/dev/vdb2", GIB, "part", "[SWAP]"),
            ],
        )
        refusals = check_disks(_layout(), _devices(SYSTEM_DISK, disk), own_root=OWN_ROOT)
        assert [(r.code, r.reason) for r in refusals] == [
            (DISK_IN_USE, "/dev/vdb1 is mounted at /srv"),
            (DISK_IN_USE, "/dev/vdb2 is in use as swap"),
        ]

    def test_own_mounts_below_the_root_are_not_a_reason(self) -> None:
        disk = _dev(
            "/dev/vdb",
            4 * GIB,
            children=[_dev("/dev/vdb2", GIB, "part", f"{OWN_ROOT}/boot")],
        )
        assert check_disks(_layout(), _devices(SYSTEM_DISK, disk), own_root=OWN_ROOT) == []

    def test_a_volume_group_reaching_another_disk(self) -> None:
        disk = _dev("/dev/vdb", 4 * GIB, children=[_dev("/dev/vdb1", GIB, "part")])
        other = _dev("/dev/vdc", 4 * GIB)
        pvs = {"/dev/vdb1": "data", "/dev/vdc": "data"}
        refusals = check_disks(
            _layout(), _devices(SYSTEM_DISK, disk, other, pvs=pvs), own_root=OWN_ROOT
        )
        assert refusals[0].code == DISK_NOT_IN_TASK
        assert "volume group data also lives on /dev/vdc" in refusals[0].reason

    def test_mounts_below_deepest_first(self) -> None:
        disk = _dev(
            "/dev/vdb",
            4 * GIB,
            children=[
                _dev("/dev/vdb1", GIB, "part", OWN_ROOT),
                _dev("/dev/vdb2", GIB, "part", f"{OWN_ROOT}/boot"),
                _dev("/dev/vdb3", GIB, "part", "/mnt/smsroot2"),
            ],
        )
        assert mounted_below(_devices(disk), OWN_ROOT) == [f"{OWN_ROOT}/boot", OWN_ROOT]


class TestParsers:
    def test_lsblk_with_mountpoints_list(self) -> None:
        text = _lsblk({"name": "/dev/sda", "type": "disk", "size": 10, "mountpoints": [None, "/x"]})
        assert parse_lsblk(text)[0].mount_point == "/x"

    def test_lsblk_garbage(self) -> None:
        with pytest.raises(ValueError, match="lsblk"):
            parse_lsblk("not json")

    def test_pvs(self) -> None:
        text = json.dumps(
            {
                "report": [
                    {
                        "pv": [
                            {"pv_name": "/dev/vdb2", "vg_name": "vg0"},
                            {"pv_name": "/dev/vdc", "vg_name": ""},
                        ]
                    }
                ]
            }
        )
        assert parse_pvs(text) == {"/dev/vdb2": "vg0"}


class TestCommands:
    def test_mbr_script_flags_boot_and_types(self) -> None:
        script = sfdisk_script(_layout().disks[0])
        assert script.splitlines() == [
            "label: dos",
            "unit: sectors",
            "",
            "size=256MiB, type=83, bootable",
            "size=2048MiB, type=83",
            "size=128MiB, type=82",
        ]

    def test_gpt_bios_boot_and_esp_types(self) -> None:
        bios = _layout(
            style="GPT",
            pvs=[
                {"index": 0, "size": MIB},
                {"index": 1, "file_system": "ext4", "mount_point": "/", "size": GIB},
            ],
        )
        assert "type=21686148-6449-6E6F-744E-656564454649" in sfdisk_script(bios.disks[0])
        uefi = _layout(
            style="GPT",
            pvs=[
                {"index": 0, "file_system": "vfat", "mount_point": "/boot/efi", "size": 100 * MIB},
                {"index": 1, "file_system": "ext4", "mount_point": "/", "size": GIB},
            ],
        )
        assert "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in sfdisk_script(uefi.disks[0])

    def test_mbr_with_five_partitions_gets_an_extended_one(self) -> None:
        pvs = [
            {"index": i, "file_system": "ext4", "mount_point": m, "size": 256 * MIB}
            for i, m in enumerate(["/", "/boot", "/var", "/home", "/srv"])
        ]
        layout = _layout(pvs=pvs)
        lines = sfdisk_script(layout.disks[0]).splitlines()[3:]
        assert lines[3] == "type=5"
        assert [p.number for p in layout.disks[0].partitions] == [1, 2, 3, 5, 6]

    def test_steps_wipe_partition_then_make_each_file_system(self) -> None:
        steps = [s.argv[0] for s in build_steps(_layout())]
        assert steps == ["wipefs", "sh", "mkfs.ext4", "mkfs.ext4", "mkswap"]
        devices = [s.argv[-1] for s in build_steps(_layout())[2:]]
        assert devices == ["/dev/vdb1", "/dev/vdb2", "/dev/vdb3"]

    def test_a_whole_disk_volume_gets_no_table(self) -> None:
        raw = {
            "disks": [
                {
                    "name": "/dev/vda",
                    "partition_style": "MBR",
                    "device_use": "BOOT",
                    "size": 4 * GIB,
                    "physical_volumes": [
                        {"index": 0, "file_system": "ext4", "mount_point": "/", "size": 3 * GIB}
                    ],
                },
                {
                    "name": "/dev/vdb",
                    "size": 2 * GIB,
                    "physical_volumes": [
                        {
                            "name": "/dev/vdb",
                            "file_system": "xfs",
                            "mount_point": "/data",
                            "size": 2 * GIB,
                        }
                    ],
                },
            ]
        }
        layout = parse_layout(TaskTargetServer.model_validate(raw))
        argv = [s.argv for s in build_steps(layout)]
        assert ("wipefs", "--all", "--force", "/dev/vdb") in argv
        assert not any(a[0] == "sh" and a[-1] == "/dev/vdb" for a in argv)  # no sfdisk
        assert ("mkfs.xfs", "-f", "-q", "/dev/vdb") in argv

    def test_lvm_steps(self) -> None:
        raw = {
            "disks": [
                {
                    "name": "/dev/nvme1n1",
                    "partition_style": "GPT",
                    "size": 8 * GIB,
                    "physical_volumes": [
                        {"index": 0, "size": MIB},
                        {
                            "index": 1,
                            "file_system": "ext4",
                            "mount_point": "/boot",
                            "size": 512 * MIB,
                        },
                        {"index": 2, "device_use": "VOLUME_GROUP", "size": 6 * GIB},
                    ],
                }
            ],
            "volume_groups": [
                {
                    "name": "vg0",
                    "logical_volumes": [
                        {
                            "name": "root",
                            "file_system": "ext4",
                            "mount_point": "/",
                            "size": 3 * GIB,
                        },
                        {"name": "var", "file_system": "xfs", "mount_point": "/var", "size": GIB},
                    ],
                }
            ],
        }
        layout = parse_layout(TaskTargetServer.model_validate(raw))
        argv = [s.argv for s in build_steps(layout)]
        assert ("pvcreate", "--force", "--yes", "/dev/nvme1n1p3") in argv
        assert ("vgcreate", "--yes", "vg0", "/dev/nvme1n1p3") in argv
        assert any(a[0] == "lvcreate" and "root" in a and "3072m" in a for a in argv)
        assert ("mkfs.xfs", "-f", "-q", "/dev/vg0/var") in argv
        assert [v.fs.mount_point for v in layout.mounts()] == ["/", "/boot", "/var"]
