"""Parsers of lsblk, blkid, mountinfo, LVM, btrfs and ip output, on captured and edge-case text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from smsagent.api.enums import PartitionStyle
from smsagent.inventory import btrfs, lvm, net
from smsagent.inventory.blkid import parse_blkid_export, partition_style
from smsagent.inventory.lsblk import LsblkFormatError, parse_lsblk
from smsagent.inventory.mountinfo import parse_mountinfo

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


class TestLsblk:
    def test_tree_is_flattened_with_parents(self) -> None:
        """Disks and partitions come out flat, each partition naming its disk."""
        devices = {d.kname: d for d in parse_lsblk(fixture("lsblk_loops.json"))}
        assert set(devices) == {
            "loop0",
            "loop0p1",
            "loop0p2",
            "loop0p3",
            "loop1",
            "loop1p1",
            "loop1p2",
        }
        assert devices["loop0p2"].parents == ("loop0",)
        assert devices["loop0p2"].size_bytes == 335544320
        assert devices["loop0p2"].major_minor == "259:1"
        assert (devices["loop0"].kind, devices["loop0p1"].kind) == ("loop", "part")
        assert devices["loop0p1"].path == "/dev/loop0p1"

    def test_device_on_two_parents_appears_once(self) -> None:
        """An LV spanning two PVs is listed under both; it is kept once with both parents."""
        lv = {"name": "vg-data", "kname": "dm-0", "maj:min": "253:0", "size": 100, "type": "lvm"}
        text = json.dumps(
            {
                "blockdevices": [
                    {"name": "sda", "kname": "sda", "size": 10, "type": "disk", "children": [lv]},
                    {"name": "sdb", "kname": "sdb", "size": 10, "type": "disk", "children": [lv]},
                ]
            }
        )
        (volume,) = [d for d in parse_lsblk(text) if d.kname == "dm-0"]
        assert volume.parents == ("sda", "sdb")
        assert volume.path == "/dev/mapper/vg-data"
        assert volume.kernel_path == "/dev/dm-0"

    def test_old_lsblk_strings_are_understood(self) -> None:
        """util-linux before 2.33 prints sizes and flags as strings."""
        row = {"name": "sda", "kname": "sda", "size": "512", "type": "disk", "rm": "1", "ro": "0"}
        text = json.dumps({"blockdevices": [row]})
        (disk,) = parse_lsblk(text)
        assert (disk.size_bytes, disk.removable, disk.read_only) == (512, True, False)

    @pytest.mark.parametrize("text", ["", "not json", "[]", '{"other": []}'])
    def test_garbage_raises_a_format_error(self, text: str) -> None:
        """Output that is not lsblk JSON raises LsblkFormatError, never a bare exception."""
        with pytest.raises(LsblkFormatError):
            parse_lsblk(text)


class TestBlkid:
    def test_export_blocks_are_keyed_by_device(self) -> None:
        """Each block of `blkid -p -o export` becomes the tags of its DEVNAME."""
        tags = parse_blkid_export(fixture("blkid_loops.txt"))
        assert tags["/dev/loop0"]["PTTYPE"] == "gpt"
        assert tags["/dev/loop1"]["PTTYPE"] == "dos"
        assert tags["/dev/loop0p3"]["TYPE"] == "vfat"
        assert tags["/dev/loop1p2"]["UUID"] == "d0ed7ee6-a1c8-4e80-a552-8fc200435329"
        assert tags["/dev/loop1p1"]["TYPE"] == "LVM2_member"
        assert tags["/dev/loop1p1"]["PART_ENTRY_TYPE"] == "0x8e"

    def test_escaped_values_are_unescaped(self) -> None:
        """Spaces and quotes in labels are backslash-escaped by blkid."""
        tags = parse_blkid_export("DEVNAME=/dev/sdb1\nLABEL=my\\ disk\\'s\nTYPE=ext4\n")
        assert tags["/dev/sdb1"]["LABEL"] == "my disk's"

    @pytest.mark.parametrize(
        ("pttype", "style"),
        [("dos", PartitionStyle.MBR), ("gpt", PartitionStyle.GPT), ("GPT", PartitionStyle.GPT),
         ("atari", None), (None, None)],
    )  # fmt: skip
    def test_partition_style(self, pttype: Optional[str], style: Optional[PartitionStyle]) -> None:
        """dos is MBR, gpt is GPT; other tables are not migratable styles."""
        assert partition_style(pttype) == style


class TestMountinfo:
    def test_fields_of_each_mount(self) -> None:
        """Device number, root, mount point, type, source and options are read per line."""
        mounts = parse_mountinfo(fixture("mountinfo.txt"))
        root = mounts[0]
        assert (root.major_minor, root.mount_point, root.fstype, root.source) == (
            "254:0",
            "/",
            "ext4",
            "/dev/vda",
        )
        subvolume = mounts[-1]
        assert (subvolume.root, subvolume.major_minor) == ("/data", "0:40")
        assert subvolume.option("subvolid") == "256"
        assert subvolume.option("missing") is None

    def test_optional_fields_and_octal_escapes(self) -> None:
        """Propagation fields are skipped; `\\040` in a path is a space."""
        line = "36 35 8:3 / /mnt/my\\040disk rw shared:2 master:1 - xfs /dev/sda3 rw,noquota"
        (mount,) = parse_mountinfo(line)
        assert (mount.mount_point, mount.fstype, mount.source) == (
            "/mnt/my disk",
            "xfs",
            "/dev/sda3",
        )

    def test_malformed_lines_are_skipped(self) -> None:
        """A truncated or garbled line does not stop the others from being read."""
        text = "garbage\n1 2 3\nx y 8:1 / / rw - ext4 /dev/sda1 rw\n" + fixture("mountinfo.txt")
        assert len(parse_mountinfo(text)) == len(parse_mountinfo(fixture("mountinfo.txt")))


class TestLvm:
    def test_volume_group_with_its_physical_volumes(self) -> None:
        """Sizes are bytes; PV rows of one VG are grouped under it."""
        (group,) = lvm.parse_vgs(fixture("vgs.json"))
        assert (group.name, group.size_bytes, group.free_bytes) == (
            "smsinvtestvg",
            205520896,
            159383552,
        )
        assert [pv.name for pv in group.physical_volumes] == ["/dev/loop1p1"]

    def test_two_pv_rows_make_one_group(self) -> None:
        """A VG on two PVs is one group with both PVs, in report order."""
        rows = [
            {"vg_name": "vg", "vg_uuid": "u", "vg_size": "20", "vg_free": "5", "pv_name": pv,
             "pv_size": "10", "pv_free": free}
            for pv, free in (("/dev/sdb", "0"), ("/dev/sdc", "5"))
        ]  # fmt: skip
        (group,) = lvm.parse_vgs(json.dumps({"report": [{"vg": rows}]}))
        assert [(pv.name, pv.free_bytes) for pv in group.physical_volumes] == [
            ("/dev/sdb", 0),
            ("/dev/sdc", 5),
        ]

    def test_inactive_logical_volumes_have_no_device_number(self) -> None:
        """LVs whose kernel major is -1 are inactive: no device to probe or mount."""
        volumes = lvm.parse_lvs(fixture("lvs.json"))
        assert [(v.name, v.size_bytes, v.major_minor) for v in volumes] == [
            ("lv1", 16777216, None),
            ("lv2", 29360128, None),
        ]
        active = lvm.parse_lvs(
            '{"report": [{"lv": [{"vg_name": "vg", "lv_name": "root", "lv_size": "8",'
            ' "lv_kernel_major": "253", "lv_kernel_minor": "0"}]}]}'
        )
        assert active[0].major_minor == "253:0"

    @pytest.mark.parametrize("text", ["", "{", '{"report": 3}'])
    def test_garbage_raises_a_format_error(self, text: str) -> None:
        """Output that is not an LVM JSON report raises LvmFormatError."""
        with pytest.raises(lvm.LvmFormatError):
            lvm.parse_vgs(text)


class TestBtrfs:
    def test_filesystem_show(self) -> None:
        """Label, UUID, used bytes and member devices with their sizes."""
        (found,) = btrfs.parse_filesystem_show(fixture("btrfs_show.txt"))
        assert (found.label, found.uuid, found.used_bytes) == (
            "",
            "d0ed7ee6-a1c8-4e80-a552-8fc200435329",
            180224,
        )
        assert [(d.devid, d.size_bytes, d.path) for d in found.devices] == [
            (1, 268435456, "/dev/loop1p2")
        ]
        assert found.size_bytes == 268435456

    def test_two_file_systems_and_a_quoted_label(self) -> None:
        """Each `Label:` line starts a new file system; a quoted label keeps its spaces."""
        text = (
            "Label: 'data pool'  uuid: aaaa\n\tTotal devices 2 FS bytes used 10\n"
            "\tdevid    1 size 100 used 5 path /dev/sdb\n"
            "\tdevid    2 size 100 used 5 path /dev/sdc\n\n"
            "Label: none  uuid: bbbb\n\tTotal devices 1 FS bytes used 1\n"
            "\tdevid    1 size 50 used 1 path /dev/sdd\n"
        )
        first, second = btrfs.parse_filesystem_show(text)
        assert (first.label, first.size_bytes, len(first.devices)) == ("data pool", 200, 2)
        assert (second.label, second.uuid) == ("", "bbbb")

    def test_filesystem_df_profiles(self) -> None:
        """Data, System, Metadata and GlobalReserve with their profiles."""
        profiles = btrfs.parse_filesystem_df(fixture("btrfs_df.txt"))
        assert {k: v.profile for k, v in profiles.items()} == {
            "Data": "single",
            "System": "DUP",
            "Metadata": "DUP",
            "GlobalReserve": "single",
        }
        assert profiles["GlobalReserve"].total_bytes == 5767168

    def test_subvolume_list_marks_snapshots(self) -> None:
        """A subvolume with a parent UUID is a snapshot of that subvolume."""
        data, snap = btrfs.parse_subvolume_list(fixture("btrfs_subvol_list.txt"))
        assert (data.subvol_id, data.parent_id, data.path, data.is_snapshot) == (
            "256",
            "5",
            "data",
            False,
        )
        assert snap.is_snapshot and snap.parent_uuid == data.uuid

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("ID 5 (FS_TREE)\n", ("5", "/")),
            ("ID 256 gen 7 top level 5 path @rootfs\n", ("256", "@rootfs")),
            ("ERROR: not a btrfs filesystem\n", None),
        ],
    )
    def test_get_default(self, text: str, expected: Optional[tuple[str, str]]) -> None:
        """The default subvolume is the top level (`/`) or a named subvolume."""
        assert btrfs.parse_get_default(text) == expected


class TestNet:
    def test_default_route_nic_comes_first_with_its_gateway(self) -> None:
        """eth0 carries the default routes; loopback and address-less links are left out."""
        routes4 = net.parse_routes(fixture("ip_route4.json"))
        routes6 = net.parse_routes(fixture("ip_route6.json"))
        nics = net.parse_nics(fixture("ip_addr.json"), routes4, routes6)
        assert [n.name for n in nics] == ["eth0"]
        eth0 = nics[0]
        assert (eth0.ip, eth0.netmask, eth0.gateway) == ("192.0.2.2", "255.255.255.0", "192.0.2.1")
        assert eth0.ipv6 == "fd00::2"  # the link-local fe80:: address is not reported
        assert eth0.mtu == 1400 and eth0.mac == "02:fc:00:00:00:01"

    def test_default_route_decides_the_order(self) -> None:
        """The NIC of the first default route is first whatever its interface index."""
        links = [
            {"ifindex": i, "ifname": name, "mtu": 1500, "link_type": "ether", "address": mac,
             "addr_info": [{"family": "inet", "local": ip, "prefixlen": 16, "scope": "global"}]}
            for i, name, mac, ip in ((2, "eth0", "aa:00:00:00:00:01", "10.0.0.5"),
                                     (3, "eth1", "aa:00:00:00:00:02", "172.16.0.5"))
        ]  # fmt: skip
        routes = net.parse_routes('[{"dst": "default", "gateway": "172.16.0.1", "dev": "eth1"}]')
        nics = net.parse_nics(json.dumps(links), routes, [])
        assert [(n.name, n.netmask, n.gateway) for n in nics] == [
            ("eth1", "255.255.0.0", "172.16.0.1"),
            ("eth0", "255.255.0.0", None),
        ]

    def test_garbage_raises_a_format_error(self) -> None:
        """Output that is not ip's JSON array raises IpFormatError."""
        with pytest.raises(net.IpFormatError):
            net.parse_nics("{", [], [])
        with pytest.raises(net.IpFormatError):
            net.parse_routes('{"dev": "eth0"}')
