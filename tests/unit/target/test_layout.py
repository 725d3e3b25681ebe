"""`parse_layout` on the layouts real servers produce, and every layout it refuses.

Each server of `data/` is the output of the tools the inventory runs (`lsblk --json --bytes`,
`blkid -p -o export`, `/proc/self/mountinfo`, `vgs`/`lvs --reportformat json`, `btrfs filesystem
show/df`, `btrfs subvolume list/get-default`). They were written by hand (generated once with
sector-exact partition tables), modelled on what util-linux 2.38, LVM 2.03 and btrfs-progs 6.2
print on this machine's loop devices, including what they print for an MBR extended partition
(lsblk: a 1 KiB partition; blkid: `PTTYPE=dos`, `PART_ENTRY_TYPE=0x5`, no `TYPE`): real servers
name their disks vda, sda and nvme0n1 and have active logical volumes, which loop devices on a
host without device-mapper cannot show.

Each one goes the whole way: the agent's inventory (`collect_storage` → `build_layout` →
`assemble_body`) makes the registration body, the emulator's console default
(`emulator/targetlayout.py`) makes the task's `target_server` from it, and `parse_layout` reads
that as the agent reads the task.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import pytest

from smsagent.api.enums import BootLoader, Firmware
from smsagent.api.models import PostSourceServerBody, TaskTargetServer
from smsagent.emulator.targetlayout import target_server
from smsagent.inventory.builder import assemble_body
from smsagent.inventory.collect_storage import collect_storage
from smsagent.inventory.facts import HostFacts
from smsagent.inventory.layout import build_layout
from smsagent.inventory.mountinfo import MOUNTINFO_PATH
from smsagent.inventory.probe import DEFAULT_TIMEOUT_S, FsUsage
from smsagent.target.layout import (
    MIB,
    BootMode,
    Disk,
    LayoutError,
    PartitionStyle,
    TargetLayout,
    VolumeKind,
    parse_layout,
)

pytestmark = pytest.mark.timeout(30)

DATA = Path(__file__).parent / "data"
GIB = 1024**3
FS, ESP, SWAP, PV, BIOS = (
    VolumeKind.FILESYSTEM,
    VolumeKind.ESP,
    VolumeKind.SWAP,
    VolumeKind.LVM_PV,
    VolumeKind.BIOS_BOOT,
)


class RecordedProbe:
    """The inventory's Probe over one server's recorded tool outputs (None for a missing tool)."""

    def __init__(self, server: str) -> None:
        self._dir = DATA / server

    def _file(self, name: str) -> Optional[str]:
        path = self._dir / name
        return path.read_text() if path.exists() else None

    def run(
        self,
        argv: Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ok_returncodes: Collection[int] = (0,),
    ) -> Optional[str]:
        tool = argv[0]
        if tool in ("lsblk",):
            return self._file("lsblk.json")
        if tool == "blkid":
            return self._file("blkid.txt")
        if tool in ("vgs", "lvs"):
            return self._file(f"{tool}.json")
        if tool == "btrfs":
            name = {
                ("filesystem", "show"): "show",
                ("filesystem", "df"): "df",
                ("subvolume", "list"): "subvol_list",
                ("subvolume", "get-default"): "default",
            }[(argv[1], argv[2])]
            return self._file(f"btrfs_{name}.txt")
        return None

    def read_text(self, path: str) -> Optional[str]:
        if path == MOUNTINFO_PATH:
            return self._file("mountinfo.txt")
        if path.startswith("/sys/class/block/") and path.endswith("/partition"):
            kname = path.split("/")[4]  # sda5, nvme0n1p2: the number ends the name
            number = re.search(r"p(\d+)$" if kname.startswith("nvme") else r"(\d+)$", kname)
            return f"{number.group(1)}\n" if number else None
        if path.startswith("/sys/fs/btrfs/"):
            return "16384\n" if path.endswith("nodesize") else "4096\n"
        return None

    def read_bytes(self, path: str, offset: int, length: int) -> Optional[bytes]:
        return bytes(length)  # every device opens; the superblock area says nothing more

    def list_dir(self, path: str) -> Optional[list[str]]:
        return None

    def exists(self, path: str) -> bool:
        return False

    def which(self, program: str) -> Optional[str]:
        return None

    def statvfs(self, path: str) -> Optional[FsUsage]:
        return FsUsage(8 * GIB, 6 * GIB, 2 * GIB, 4096, 2 * 1024**2, 524288)


HOST = HostFacts(
    hostname="src01",
    kernel_version="5.14.0-362.el9.x86_64",
    machine="x86_64",
    os_release={"ID": "rhel", "VERSION_ID": "9.3"},
    cpu_count=2,
    memory_mb=3832,
    firmware=Firmware.BIOS,
    boot_loader=BootLoader.GRUB,
    paravirtualization=False,
    raw_devices="",
    platform=None,
    has_rsync=True,
    has_tc=True,
)


def registration(server: str) -> PostSourceServerBody:
    """The registration body the agent sends from this server's tool outputs."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        facts = collect_storage(RecordedProbe(server), pool, 5.0)
    return assemble_body(HOST, build_layout(facts), server_name=server, agent_version="1.0")


def console_target(server: str) -> TaskTargetServer:
    """The task's target as the emulator fills it in when CreateTask gives no disks."""
    made = target_server({"name": f"{server}-target"}, registration(server).to_wire())
    return TaskTargetServer.model_validate(made)


def layout_of(server: str) -> TargetLayout:
    return parse_layout(console_target(server))


def shape(disk: Disk) -> list[tuple[int, int, VolumeKind, Optional[str], Optional[str]]]:
    """(number, MiB, kind, fstype, mount point) of each partition."""
    return [
        (
            p.number,
            p.size // MIB,
            p.kind,
            p.fs.fstype if p.fs else None,
            p.fs.mount_point if p.fs else None,
        )
        for p in disk.partitions
    ]


def mounts(layout: TargetLayout) -> list[tuple[str, str]]:
    return [(v.fs.mount_point or "", v.device) for v in layout.mounts()]


class TestRealServers:
    def test_mbr_bios(self) -> None:
        """CentOS 7 on vda (MBR): /boot, swap, / partitions, the last to the disk's end, fit."""
        layout = layout_of("mbr_bios")
        (vda,) = layout.disks
        assert (vda.device, vda.partition_style, vda.size, vda.is_boot) == (
            "/dev/vda",
            PartitionStyle.MBR,
            40 * GIB,
            True,
        )
        assert shape(vda) == [
            (1, 1024, FS, "ext4", "/boot"),
            (2, 2048, SWAP, "swap", None),
            (3, 37887, FS, "ext4", "/"),
        ]
        assert vda.bytes_needed == vda.size  # the source filled the disk; so does the target
        assert layout.boot_mode is BootMode.BIOS
        assert layout.volume_groups == ()
        assert mounts(layout) == [("/", "/dev/vda3"), ("/boot", "/dev/vda1")]
        source = registration("mbr_bios").disks[0].physical_volumes
        assert [p.fs.source_uuid for p in vda.partitions if p.fs] == [v.uuid for v in source]

    def test_gpt_bios_with_bios_grub_and_lvm(self) -> None:
        """RHEL 8 on sda (GPT, BIOS): bios_grub, /boot, a PV whose VG the LVs fill to the end."""
        layout = layout_of("gpt_bios_lvm")
        (sda,) = layout.disks
        assert sda.partition_style is PartitionStyle.GPT
        assert shape(sda) == [
            (1, 1, BIOS, None, None),
            (2, 1024, FS, "ext4", "/boot"),
            (3, 19453, PV, None, None),  # to the last usable sector: rounded down to a MiB
        ]
        (rhel,) = layout.volume_groups
        assert (rhel.name, rhel.members) == ("rhel", ("/dev/sda3",))
        assert [
            (lv.name, lv.size // (4 * MIB), lv.fs.fstype if lv.fs else None, lv.path)
            for lv in rhel.logical_volumes
        ] == [("root", 3072, "ext4", "/dev/rhel/root"), ("var", 1791, "xfs", "/dev/rhel/var")]
        assert layout.boot_mode is BootMode.BIOS
        assert mounts(layout) == [
            ("/", "/dev/rhel/root"),
            ("/boot", "/dev/sda2"),
            ("/var", "/dev/rhel/var"),
        ]

    def test_lvs_without_device_numbers_as_in_the_agents_sandbox(self) -> None:
        """Under its unit `lvs` may not open /dev/mapper/control and gives -1 for every LV's
        device number, as for an inactive one: the active LVs are still found (by lsblk's
        /dev/mapper names), with their file systems and mount points."""

        class SandboxedProbe(RecordedProbe):
            def run(self, argv: Sequence[str], *args: Any, **kwargs: Any) -> Optional[str]:
                text = super().run(argv, *args, **kwargs)
                if argv[0] == "lvs" and text is not None:
                    text = re.sub(
                        r'"lv_kernel_(major|minor)": "\d+"', r'"lv_kernel_\1": "-1"', text
                    )
                    assert '"-1"' in text
                return text

        with ThreadPoolExecutor(max_workers=4) as pool:
            facts = collect_storage(SandboxedProbe("gpt_bios_lvm"), pool, 5.0)
        body = assemble_body(HOST, build_layout(facts), server_name="s", agent_version="1.0")
        (group,) = body.volume_groups or []
        assert [(lv.name, lv.file_system, lv.mount_point) for lv in group.logical_volumes] == [
            ("root", "ext4", "/"),
            ("var", "xfs", "/var"),
        ]

    def test_gpt_uefi_on_nvme(self) -> None:
        """Debian 12 on nvme0n1: the ESP makes it UEFI; partition paths take the `p`."""
        layout = layout_of("gpt_uefi")
        (nvme,) = layout.disks
        assert shape(nvme) == [
            (1, 512, ESP, "vfat", "/boot/efi"),
            (2, 9726, FS, "ext4", "/"),
        ]
        assert [p.path for p in nvme.partitions] == ["/dev/nvme0n1p1", "/dev/nvme0n1p2"]
        assert layout.boot_mode is BootMode.UEFI
        assert layout.boot_disk is nvme
        assert mounts(layout) == [("/", "/dev/nvme0n1p2"), ("/boot/efi", "/dev/nvme0n1p1")]
        assert nvme.partitions[0].fs is not None
        assert nvme.partitions[0].fs.source_uuid == "5D1E-A3F0"

    def test_swap_on_lvm_behind_an_extended_partition(self) -> None:
        """Debian's guided LVM (vda1 /boot, vda2 extended, vda5 PV): the extended container is no
        volume, the PV becomes vda2 and is still found by the source's name in `components`."""
        layout = layout_of("lvm_swap")
        (vda,) = layout.disks
        assert shape(vda) == [(1, 512, FS, "ext4", "/boot"), (2, 19966, PV, None, None)]
        assert not any(p.logical for p in vda.partitions)
        (vg,) = layout.volume_groups
        assert (vg.name, vg.members) == ("debian-vg", ("/dev/vda2",))
        root, swap = vg.logical_volumes
        assert root.fs is not None and (root.fs.fstype, root.fs.mount_point) == ("ext4", "/")
        assert swap.fs is not None and swap.fs.is_swap and swap.path == "/dev/debian-vg/swap_1"
        assert [v.device for v in layout.volumes() if v.fs.is_swap] == ["/dev/debian-vg/swap_1"]
        assert mounts(layout) == [("/", "/dev/debian-vg/root"), ("/boot", "/dev/vda1")]

    def test_btrfs_root(self) -> None:
        """Fedora: / is the `root` subvolume of a btrfs partition; the file system is made and
        mounted at /, and `btrfs_list` names it by the source's UUID."""
        target = console_target("btrfs_root")
        layout = parse_layout(target)
        (vda,) = layout.disks
        assert shape(vda) == [
            (1, 1, BIOS, None, None),
            (2, 1024, FS, "ext4", "/boot"),
            (3, 19453, FS, "btrfs", "/"),
        ]
        (fs_uuid,) = target.btrfs_list or []
        assert vda.partitions[2].fs is not None
        assert vda.partitions[2].fs.source_uuid == fs_uuid
        assert layout.boot_mode is BootMode.BIOS
        assert mounts(layout) == [("/", "/dev/vda3"), ("/boot", "/dev/vda2")]

    def test_data_disk_as_a_whole_disk_pv(self) -> None:
        """vdb is a PV without a partition table: the target's vdb is one too (no partitions)."""
        layout = layout_of("data_whole_pv")
        vda, vdb = layout.disks
        assert (vda.is_boot, shape(vda)) == (True, [(1, 20479, FS, "ext4", "/")])
        assert (vdb.is_boot, vdb.partitions, vdb.size) == (False, (), 100 * GIB)
        assert vdb.whole is not None
        assert (vdb.whole.path, vdb.whole.kind, vdb.whole.size) == ("/dev/vdb", PV, 100 * GIB)
        (data,) = layout.volume_groups
        assert (data.name, data.members) == ("data", ("/dev/vdb",))
        assert mounts(layout) == [("/", "/dev/vda1"), ("/srv/data", "/dev/data/pgdata")]

    def test_mbr_with_logical_partitions(self) -> None:
        """sda1-3 primary, sda4 extended, sda5-7 logical: the target numbers them the same and
        the EBR before each logical one still fits."""
        layout = layout_of("mbr_logical")
        (sda,) = layout.disks
        assert shape(sda) == [
            (1, 1024, FS, "ext4", "/boot"),
            (2, 15360, FS, "ext4", "/"),
            (3, 8192, FS, "xfs", "/var"),
            (5, 2048, SWAP, "swap", None),
            (6, 2048, FS, "ext4", "/tmp"),
            (7, 12284, FS, "ext4", "/home"),
        ]
        assert [p.logical for p in sda.partitions] == [False] * 3 + [True] * 3
        assert sda.bytes_needed == sda.size
        assert [point for point, _ in mounts(layout)] == ["/", "/boot", "/home", "/tmp", "/var"]


def pv(
    size: int,
    fs: Optional[str] = None,
    mount: Optional[str] = None,
    name: Optional[str] = None,
    **more: Any,
) -> dict[str, Any]:
    return {"size": size, "file_system": fs, "mount_point": mount, "name": name, **more}


def disk(
    name: str, size: int, volumes: list[dict[str, Any]], style: Optional[str] = "MBR", **more: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "size": size,
        "partition_style": style,
        "physical_volumes": volumes,
        **more,
    }


ROOT_DISK = disk("/dev/vda", 10 * GIB, [pv(9 * GIB, "ext4", "/")])


def target(
    disks: list[dict[str, Any]], volume_groups: Optional[list[dict[str, Any]]] = None
) -> TaskTargetServer:
    return TaskTargetServer.model_validate({"disks": disks, "volume_groups": volume_groups})


def lvm_disk(name: str = "/dev/vdb", size: int = 10 * GIB) -> dict[str, Any]:
    return disk(name, size, [pv(size - 2 * MIB, "LVM2_member", name=f"{name}1")])


class TestDecisions:
    def test_whole_disk_file_system_on_the_boot_disk_becomes_partition_1(self) -> None:
        """GRUB needs a partition table's gap: a whole-disk root on the boot disk is vda1."""
        layout = parse_layout(
            target([disk("/dev/vda", 8 * GIB, [pv(8 * GIB, "ext4", "/", "/dev/vda")], None)])
        )
        (vda,) = layout.disks
        assert (vda.whole, shape(vda)) == (None, [(1, 8191, FS, "ext4", "/")])
        assert layout.boot_disk.partition_style is PartitionStyle.MBR

    def test_whole_disk_matched_by_the_source_disk_name(self) -> None:
        """A renamed target disk is whole when its volume carries the paired source disk's name."""
        data = disk("/dev/vdc", 4 * GIB, [pv(4 * GIB, "xfs", "/data", "/dev/sdb")], None)
        data["relation_name"] = "/dev/sdb"
        (_, vdc) = parse_layout(target([ROOT_DISK, data])).disks
        assert vdc.whole is not None
        assert (vdc.whole.path, vdc.whole.kind, vdc.partitions) == ("/dev/vdc", FS, ())

    def test_a_given_partition_style_makes_partitions(self) -> None:
        """With a partition style the volume is a partition even when named like the disk."""
        data = disk("/dev/vdb", 4 * GIB, [pv(2 * GIB, "xfs", "/data", "/dev/vdb")], "GPT")
        (_, vdb) = parse_layout(target([ROOT_DISK, data])).disks
        assert (vdb.whole, [p.path for p in vdb.partitions]) == (None, ["/dev/vdb1"])

    def test_components_by_target_path_and_by_source_number(self) -> None:
        """`components` may name the target's partition or the source's (relation_name + n)."""
        by_target = {"name": "vg0", "components": "/dev/vdb1", "logical_volumes": []}
        by_source = {"name": "vg1", "components": "/dev/sdc1", "logical_volumes": []}
        second = lvm_disk("/dev/vdc")
        second["physical_volumes"][0]["name"] = None
        second["relation_name"] = "/dev/sdc"
        layout = parse_layout(target([ROOT_DISK, lvm_disk(), second], [by_target, by_source]))
        assert [(vg.name, vg.members) for vg in layout.volume_groups] == [
            ("vg0", ("/dev/vdb1",)),
            ("vg1", ("/dev/vdc1",)),
        ]

    def test_renumbered_pv_is_not_taken_for_the_source_partition_of_its_new_number(self) -> None:
        """sda1 extended, sda2 /, sda3 PV of vgb, sda5 PV of vga: on the target sda5 becomes
        vda3, and vgb (`/dev/sda3`) still has only the PV that was sda3."""
        volumes = [
            pv(1024, name="/dev/sda1"),
            pv(4 * GIB, "ext4", "/", "/dev/sda2"),
            pv(2 * GIB, "LVM2_member", name="/dev/sda3"),
            pv(2 * GIB, "LVM2_member", name="/dev/sda5"),
        ]
        vda = disk("/dev/vda", 10 * GIB, volumes, relation_name="/dev/sda")
        groups = [
            {"name": "vgb", "components": "/dev/sda3"},
            {"name": "vga", "components": "/dev/sda5"},
        ]
        layout = parse_layout(target([vda], groups))
        assert [(vg.name, vg.members) for vg in layout.volume_groups] == [
            ("vgb", ("/dev/vda2",)),
            ("vga", ("/dev/vda3",)),
        ]

    def test_boot_disk_is_the_one_marked_boot(self) -> None:
        """A data disk listed first does not take the boot disk's place."""
        root = dict(ROOT_DISK, device_use="BOOT")
        layout = parse_layout(target([lvm_disk("/dev/vdb"), root], [{"name": "vg0"}]))
        assert layout.boot_disk.device == "/dev/vda"

    def test_bios_boot_partition_under_a_mib_gets_a_mib(self) -> None:
        """Old parted layouts start at sector 34: a 1007 KiB bios_grub partition is made 1 MiB."""
        gpt = disk("/dev/vda", 10 * GIB, [pv(1007 * 1024), pv(9 * GIB, "ext4", "/")], "GPT")
        (vda,) = parse_layout(target([gpt])).disks
        assert shape(vda)[0] == (1, 1, BIOS, None, None)


def refusal(server: TaskTargetServer) -> str:
    with pytest.raises(LayoutError) as raised:
        parse_layout(server)
    return str(raised.value)


class TestRefusals:
    def test_no_target_or_no_disks(self) -> None:
        """No target server, or one without disks, has nothing to lay out."""
        for server in (None, TaskTargetServer(), target([])):
            with pytest.raises(LayoutError, match=r"^target_server\.disks: "):
                parse_layout(server)

    @pytest.mark.parametrize("name", ["vda", "/dev/", "/dev/vd a", "/etc/passwd", "", "Disk 0"])
    def test_bad_device_name(self, name: str) -> None:
        """A disk must be named by its path under /dev."""
        assert refusal(target([dict(ROOT_DISK, name=name)])).startswith(
            "target_server.disks[0].name: "
        )

    def test_bad_partition_style(self) -> None:
        """Only MBR and GPT can be written."""
        message = refusal(target([dict(ROOT_DISK, partition_style="APM")]))
        assert message.startswith("target_server.disks[0].partition_style: 'APM'")

    def test_disk_without_size(self) -> None:
        assert refusal(target([dict(ROOT_DISK, size=0)])).startswith("target_server.disks[0].size")

    def test_partitions_larger_than_the_disk(self) -> None:
        """The disk's size is the field named, with what the partitions need."""
        message = refusal(target([disk("/dev/vda", 8 * GIB, [pv(8 * GIB, "ext4", "/")])]))
        assert message.startswith("target_server.disks[0].size: the partitions of /dev/vda need")
        assert "8193 MiB" in message

    def test_gpt_needs_room_for_its_backup_table(self) -> None:
        """A GPT disk full to its last MiB leaves no room for the backup table; MBR fits."""
        volumes = [pv(10 * GIB - MIB, "ext4", "/")]
        parse_layout(target([disk("/dev/vda", 10 * GIB, volumes, "MBR")]))
        volumes = [pv(MIB), pv(10 * GIB - 2 * MIB, "ext4", "/")]
        assert refusal(target([disk("/dev/vda", 10 * GIB, volumes, "GPT")])).startswith(
            "target_server.disks[0].size: "
        )

    def test_partition_without_size(self) -> None:
        message = refusal(target([disk("/dev/vda", GIB, [pv(0, "ext4", "/")])]))
        assert message.startswith("target_server.disks[0].physical_volumes[0].size: ")

    def test_partition_under_a_mib(self) -> None:
        """A file system smaller than the unit partitions come in cannot be made."""
        volumes = [pv(GIB, "ext4", "/"), pv(MIB - 1, "ext4", "/tiny")]
        message = refusal(target([disk("/dev/vda", 2 * GIB, volumes, "GPT")]))
        assert message.startswith("target_server.disks[0].physical_volumes[1].size: ")

    def test_whole_disk_volume_larger_than_the_disk(self) -> None:
        data = disk("/dev/vdb", GIB, [pv(2 * GIB, "LVM2_member", name="/dev/vdb")], None)
        message = refusal(target([ROOT_DISK, data], [{"name": "vg0"}]))
        assert message.startswith("target_server.disks[1].size: ")

    def test_logical_volumes_larger_than_their_group(self) -> None:
        """What LVM can allocate: whole 4 MiB extents after the PV's first MiB."""
        lvs = [
            {"name": "big", "size": 10 * GIB - 3 * MIB, "file_system": "xfs", "mount_point": "/b"}
        ]
        message = refusal(
            target([ROOT_DISK, lvm_disk()], [{"name": "vg0", "logical_volumes": lvs}])
        )
        assert message.startswith("target_server.volume_groups[0].logical_volumes: vg0's volumes")

    @pytest.mark.parametrize("fstype", ["ntfs", "zfs_member", "linux_raid_member", "reiserfs"])
    def test_unknown_file_system(self, fstype: str) -> None:
        volumes = [pv(4 * GIB, "ext4", "/"), pv(4 * GIB, fstype, "/data")]
        message = refusal(target([disk("/dev/vda", 10 * GIB, volumes)]))
        assert message.startswith(
            f"target_server.disks[0].physical_volumes[1].file_system: '{fstype}'"
        )

    def test_unknown_file_system_on_a_logical_volume(self) -> None:
        lvs = [{"name": "x", "size": GIB, "file_system": "jfs", "mount_point": "/x"}]
        message = refusal(
            target([ROOT_DISK, lvm_disk()], [{"name": "vg0", "logical_volumes": lvs}])
        )
        assert message.startswith("target_server.volume_groups[0].logical_volumes[0].file_system")

    def test_file_system_without_mount_point(self) -> None:
        volumes = [pv(4 * GIB, "ext4", "/"), pv(4 * GIB, "xfs", None)]
        message = refusal(target([disk("/dev/vda", 10 * GIB, volumes)]))
        assert message.startswith("target_server.disks[0].physical_volumes[1].file_system: ")

    def test_relative_mount_point(self) -> None:
        message = refusal(target([disk("/dev/vda", 10 * GIB, [pv(4 * GIB, "ext4", "root")])]))
        assert message.startswith("target_server.disks[0].physical_volumes[0].mount_point: ")

    def test_partition_without_file_system_on_mbr(self) -> None:
        """Only GPT's small BIOS boot partition (or MBR's extended one) may hold nothing."""
        volumes = [pv(4 * GIB, "ext4", "/"), pv(4 * MIB)]
        message = refusal(target([disk("/dev/vda", 10 * GIB, volumes)]))
        assert message.startswith("target_server.disks[0].physical_volumes[1].file_system: ")

    def test_duplicate_mount_point(self) -> None:
        """Two volumes at /var: both devices are named."""
        volumes = [pv(4 * GIB, "ext4", "/"), pv(GIB, "xfs", "/var"), pv(GIB, "ext4", "/var/")]
        message = refusal(target([disk("/dev/vda", 10 * GIB, volumes)]))
        assert message == (
            "target_server: mount_point '/var' appears twice (/dev/vda2 and /dev/vda3)"
        )

    def test_duplicate_disk(self) -> None:
        message = refusal(target([ROOT_DISK, dict(ROOT_DISK, device_use="NORMAL")]))
        assert message == "target_server: target_server.disks[].name '/dev/vda' appears twice"

    def test_no_root(self) -> None:
        message = refusal(target([disk("/dev/vda", 10 * GIB, [pv(4 * GIB, "ext4", "/srv")])]))
        assert message == "target_server.disks: no file system is mounted at '/'"

    def test_gpt_bios_without_bios_boot_partition(self) -> None:
        """GPT booted by BIOS: GRUB needs a BIOS boot partition on the boot disk."""
        message = refusal(target([disk("/dev/vda", 10 * GIB, [pv(4 * GIB, "ext4", "/")], "GPT")]))
        assert message.startswith("target_server.disks: /dev/vda is GPT and boots by BIOS")

    def test_esp_on_a_logical_volume(self) -> None:
        lvs = [
            {"name": "efi", "size": 256 * MIB, "file_system": "vfat", "mount_point": "/boot/efi"}
        ]
        message = refusal(
            target([ROOT_DISK, lvm_disk()], [{"name": "vg0", "logical_volumes": lvs}])
        )
        assert message == "target_server.volume_groups: an ESP on a logical volume cannot boot"

    def test_volume_group_with_no_member(self) -> None:
        """A group whose components are no target PV, or with no PV at all, has nothing to use."""
        vg = {"name": "vg0", "components": "/dev/sdz9"}
        message = refusal(target([ROOT_DISK, lvm_disk()], [vg]))
        assert message.startswith("target_server.volume_groups[0].components: ")
        assert refusal(target([ROOT_DISK], [{"name": "vg0"}])).startswith(
            "target_server.volume_groups[0].components: "
        )

    @pytest.mark.parametrize("name", ["", "-vg", "vg/0", ".."])
    def test_bad_volume_group_name(self, name: str) -> None:
        message = refusal(target([ROOT_DISK, lvm_disk()], [{"name": name}]))
        assert message.startswith("target_server.volume_groups[0].name: ")

    def test_logical_volume_without_size(self) -> None:
        lvs = [{"name": "lv", "file_system": "ext4", "mount_point": "/x"}]
        message = refusal(
            target([ROOT_DISK, lvm_disk()], [{"name": "vg0", "logical_volumes": lvs}])
        )
        assert message.startswith("target_server.volume_groups[0].logical_volumes[0].size: ")
