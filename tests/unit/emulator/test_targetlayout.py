"""The target layout the emulator stores for a new task: the console's default from the source,
given disks completed from the source disks they pair with, and the 400s naming the field."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from smsagent.api.enums import TaskType
from smsagent.api.models import PostTask, PutDiskInfoReq, ServerDisk, SourceServerByTask
from smsagent.emulator.errors import ApiError
from smsagent.emulator.sources import Sources
from smsagent.emulator.store import MemoryStore
from smsagent.emulator.targetlayout import target_server
from smsagent.emulator.tasks import Tasks

pytestmark = pytest.mark.timeout(10)

GIB = 1024**3
MIB = 1024**2


def source() -> dict[str, Any]:
    """A registered source (as `Sources.register` stores it): a boot disk and a whole-disk PV."""
    return {
        "id": "src-1",
        "disks": [
            {
                "name": "/dev/sda",
                "partition_style": "GPT",
                "device_use": "BOOT",
                "os_disk": True,
                "size": 20 * GIB - 512,  # not whole GiB, as some hypervisors size disks
                "used_size": 3 * GIB,
                "physical_volumes": [
                    {"name": "/dev/sda1", "index": 0, "size": MIB, "device_use": "NORMAL"},
                    {
                        "name": "/dev/sda2",
                        "index": 1,
                        "size": 20 * GIB - 3 * MIB,
                        "used_size": 3 * GIB,
                        "file_system": "ext4",
                        "mount_point": "/",
                        "uuid": "0b4c1e4e-4bd1-4f57-9a58-3b4b2a6e3c1a",
                        "device_use": "OS",
                        "inode_size": 256,
                    },
                ],
            },
            {
                "name": "/dev/sdb",
                "device_use": "NORMAL",
                "os_disk": False,
                "size": 100 * GIB,
                "used_size": 50 * GIB,
                "physical_volumes": [
                    {
                        "name": "/dev/sdb",
                        "index": 0,
                        "size": 100 * GIB,
                        "file_system": "LVM2_member",
                        "device_use": "VOLUME_GROUP",
                    }
                ],
            },
        ],
        "volume_groups": [
            {
                "name": "data",
                "components": "/dev/sdb",
                "size": 100 * GIB - 4 * MIB,
                "free_size": 20 * GIB,
                "logical_volumes": [
                    {
                        "name": "pg",
                        "size": 80 * GIB,
                        "file_system": "xfs",
                        "mount_point": "/srv/pg",
                        "device_use": "NORMAL",
                        "used_size": 1 * GIB,
                        "block_size": 4096,
                    }
                ],
            }
        ],
        "btrfs_list": [],
    }


def made(
    given: Optional[dict[str, Any]] = None,
    src: Optional[dict[str, Any]] = None,
    *,
    block_level: bool = False,
) -> Any:
    return target_server(given, source() if src is None else src, block_level=block_level)


def refused(given: dict[str, Any], *, block_level: bool = False) -> str:
    with pytest.raises(ApiError) as raised:
        made(given, block_level=block_level)
    assert (raised.value.status, raised.value.error_code) == (400, "SMS.9001")
    return raised.value.error_msg


class TestDefault:
    def test_one_target_disk_per_source_disk(self) -> None:
        """Name and relation are the source disk's, the size its whole GiB, the rest copied."""
        sda, sdb = made({"name": "web01-target", "vm_id": "vm-1"})["disks"]
        assert sda == {
            "name": "/dev/sda",
            "relation_name": "/dev/sda",
            "size": 20 * GIB,
            "partition_style": "GPT",
            "device_use": "BOOT",
            "os_disk": True,
            "used_size": 3 * GIB,
            "physical_volumes": [
                {"name": "/dev/sda1", "index": 0, "size": MIB, "device_use": "NORMAL"},
                {
                    "name": "/dev/sda2",
                    "index": 1,
                    "size": 20 * GIB - 3 * MIB,
                    "used_size": 3 * GIB,
                    "file_system": "ext4",
                    "mount_point": "/",
                    "uuid": "0b4c1e4e-4bd1-4f57-9a58-3b4b2a6e3c1a",
                    "device_use": "OS",
                },
            ],
        }
        assert "partition_style" not in sdb  # no table on the source: none on the target
        assert (sdb["name"], sdb["size"], sdb["physical_volumes"][0]["name"]) == (
            "/dev/sdb",
            100 * GIB,
            "/dev/sdb",
        )

    def test_volume_groups_and_btrfs_from_the_source(self) -> None:
        """Groups keep their members and logical volumes; btrfs file systems become UUIDs."""
        src = source()
        src["btrfs_list"] = [{"name": "/dev/sdc", "uuid": "d0ed7ee6-a1c8", "subvolumn": []}]
        target = made({"name": "t"}, src)
        assert target["volume_groups"] == [
            {
                "name": "data",
                "components": "/dev/sdb",
                "size": 100 * GIB - 4 * MIB,
                "free_size": 20 * GIB,
                "logical_volumes": [
                    {
                        "name": "pg",
                        "size": 80 * GIB,
                        "file_system": "xfs",
                        "mount_point": "/srv/pg",
                        "device_use": "NORMAL",
                        "used_size": GIB,
                    }
                ],
            }
        ]
        assert target["btrfs_list"] == ["d0ed7ee6-a1c8"]
        assert (target["name"], "vm_id" in target) == ("t", False)

    def test_no_target_server_in_the_body_still_gets_the_default(self) -> None:
        assert [d["name"] for d in made(None)["disks"]] == ["/dev/sda", "/dev/sdb"]

    def test_empty_disks_are_no_disks(self) -> None:
        assert len(made({"disks": []})["disks"]) == 2

    def test_source_without_disks(self) -> None:
        """Nothing to copy: no disks; an empty body stays empty."""
        assert made(None, {"id": "s"}) is None
        assert made({"name": "t"}, {"id": "s", "volume_groups": []}) == {
            "name": "t",
            "volume_groups": [],
        }


class TestGiven:
    def test_given_fields_win_and_the_rest_comes_from_the_paired_disk(self) -> None:
        """The SDK's disk has no partition style or relation: both come from the source disk at
        the same position; the given name, size and volumes are kept."""
        volumes = [{"name": "/dev/vda1", "size": GIB, "file_system": "ext4", "mount_point": "/"}]
        given = {"disks": [{"name": "/dev/vda", "size": 40 * GIB, "physical_volumes": volumes}]}
        (vda,) = made(given)["disks"]
        assert vda["name"] == "/dev/vda"
        assert (vda["relation_name"], vda["partition_style"], vda["size"]) == (
            "/dev/sda",
            "GPT",
            40 * GIB,
        )
        assert vda["physical_volumes"] == volumes

    def test_names_only_take_the_source_layout(self) -> None:
        """Disks given by name alone: the console's layout under the target's names."""
        vdb, vda = made(
            {
                "disks": [
                    {"name": "/dev/vdb", "relation_name": "/dev/sdb"},
                    {"name": "/dev/vda", "relation_name": "/dev/sda"},
                ]
            }
        )["disks"]
        assert (vdb["size"], vdb["physical_volumes"][0]["file_system"]) == (
            100 * GIB,
            "LVM2_member",
        )
        assert (vda["partition_style"], len(vda["physical_volumes"])) == ("GPT", 2)

    def test_given_volume_groups_and_btrfs_are_kept(self) -> None:
        """An explicit empty list is not replaced; SDK btrfs objects become their UUID."""
        target = made({"volume_groups": [], "btrfs_list": [{"uuid": "u-1"}, "u-2", {"name": "n"}]})
        assert (target["volume_groups"], target["btrfs_list"]) == ([], ["u-1", "u-2", "n"])

    def test_a_disk_beyond_the_source_needs_name_and_size(self) -> None:
        disks = [{"name": "/dev/vda"}, {"name": "/dev/vdb"}, {"name": "/dev/vdc", "size": GIB}]
        assert [d["name"] for d in made({"disks": disks})["disks"]] == [
            "/dev/vda",
            "/dev/vdb",
            "/dev/vdc",
        ]
        message = refused({"disks": [*disks[:2], {"size": GIB}]})
        assert message.startswith("Invalid field 'target_server.disks[2].name': ")


class TestRefusals:
    @pytest.mark.parametrize(
        ("given", "field"),
        [
            ({"disks": [{"size": "big"}]}, "target_server.disks[0].size"),
            ({"disks": "vda"}, "target_server.disks"),
            ({"disks": [{"physical_volumes": [{"index": "x"}]}]}, "target_server.disks[0]"),
            (
                {"volume_groups": [{"logical_volumes": [{"size": "huge"}]}]},
                "target_server.volume_groups[0].logical_volumes[0].size",
            ),
            ({"btrfs_list": [{"label": "no id"}]}, "target_server.btrfs_list[0]"),
            ({"btrfs_list": [7]}, "target_server.btrfs_list[0]"),
            ({"btrfs_list": "u-1"}, "target_server.btrfs_list"),
        ],
    )
    def test_bad_types_name_the_field(self, given: dict[str, Any], field: str) -> None:
        assert refused(given).startswith(f"Invalid field '{field}")

    def test_unknown_relation(self) -> None:
        message = refused({"disks": [{"name": "/dev/vda", "relation_name": "/dev/sdz"}]})
        assert message == (
            "Invalid field 'target_server.disks[0].relation_name': "
            "the source server has no disk /dev/sdz"
        )

    def test_two_disks_for_one_source_disk(self) -> None:
        disks = [{"name": "/dev/vda"}, {"name": "/dev/vdb", "relation_name": "/dev/sda"}]
        message = refused({"disks": disks})
        assert message.startswith("Invalid field 'target_server.disks[1].relation_name': ")

    def test_target_disk_smaller_than_its_source_disk(self) -> None:
        """Block level copies whole partitions; file level may shrink them to the data."""
        given = {"disks": [{"name": "/dev/vda", "size": 10 * GIB}]}
        message = refused(given, block_level=True)
        assert message.startswith("Invalid field 'target_server.disks[0].size': 10737418240 bytes")
        assert made(given)["disks"][0]["size"] == 10 * GIB

    def test_one_name_for_two_disks(self) -> None:
        message = refused({"disks": [{"name": "/dev/vda"}, {"name": "/dev/vda"}]})
        assert message == (
            "Invalid field 'target_server.disks[1].name': /dev/vda names two target disks"
        )


def test_a_later_disk_report_changes_no_task() -> None:
    """The layout is taken at creation: the source's new disk info leaves the task as it was."""
    store = MemoryStore()
    sources, tasks = Sources(store, 60.0), Tasks(store)
    src = source()
    store.put("source", src["id"], src)
    body = PostTask(
        name="m",
        type=TaskType.MIGRATE_FILE,
        source_server=SourceServerByTask(id=src["id"]),
        region_name="r",
        region_id="r",
        project_name="p",
        project_id="p",
    )
    task = tasks.create(body, sources.get(src["id"]), 1.0)
    before = task["target_server"]
    assert [d["name"] for d in before["disks"]] == ["/dev/sda", "/dev/sdb"]
    grown = ServerDisk(name="/dev/sda", device_use="BOOT", size=40 * GIB, used_size=0)
    sources.update_disks(src["id"], PutDiskInfoReq(disks=[grown], volumegroups=[]))
    assert sources.get(src["id"])["disks"][0]["size"] == 40 * GIB
    assert tasks.get(task["id"])["target_server"] == before
