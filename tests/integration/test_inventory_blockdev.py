"""The inventory of a real block-device layout matches what blkid, lsblk, LVM and btrfs say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from smsagent.api.models import PhysicalVolume, PostSourceServerBody, ServerDisk
from smsagent.inventory.builder import InventoryOptions, build_registration_body
from tests.support.blockdev import (
    BlockLab,
    LoopDisk,
    Partition,
    device_mapper_available,
    missing_requirements,
    run,
    sweep_stale,
)
from tests.support.inventory_sdk import sdk_round_trip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.timeout(180),
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]


@dataclass(frozen=True)
class Layout:
    """The layout under test and the inventory taken of it."""

    gpt: LoopDisk
    mbr: LoopDisk
    vg: str
    root: Path
    body: PostSourceServerBody


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    """A GPT disk (ext4, xfs, vfat) and an MBR disk (LVM PV with two LVs, btrfs), all mounted."""
    sweep_stale()
    lab = BlockLab(tmp_path_factory.mktemp("inventory"))
    try:
        yield _build(lab)
    finally:
        lab.close()


def _build(lab: BlockLab) -> Layout:
    gpt = lab.loop_disk(
        "gpt", 512, "gpt", [Partition(64, "L"), Partition(320, "L"), Partition(64, "U")]
    )
    mbr = lab.loop_disk("mbr", 512, "dos", [Partition(200, "8e"), Partition(256, "83")])
    for device, fstype in zip(gpt.partitions, ("ext4", "xfs", "vfat")):
        lab.mkfs(device, fstype)
        lab.mount(device, fstype, fstype)
    (lab.root / "ext4" / "payload").write_bytes(os.urandom(3 * 1024 * 1024))
    vg = lab.volume_group([mbr.partitions[0]])
    lab.logical_volume(vg, "lvdata", 16)
    lab.logical_volume(vg, "lvlogs", 32)
    if device_mapper_available():
        lab.mkfs(f"/dev/{vg}/lvdata", "ext4")
        lab.mount(f"/dev/{vg}/lvdata", "lvdata", "ext4")
    lab.mkfs(mbr.partitions[1], "btrfs")
    top = lab.mount(mbr.partitions[1], "btrfs", "btrfs")
    run("btrfs", "subvolume", "create", str(top / "data"))
    run("btrfs", "subvolume", "snapshot", str(top / "data"), str(top / "snap"))
    lab.mount(mbr.partitions[1], "btrfs-data", "btrfs", "subvol=data")
    run("sync")
    options = InventoryOptions(extra_disks=(gpt.kname, mbr.kname))
    body = build_registration_body("smsinvtest-host", options=options)
    return Layout(gpt, mbr, vg, lab.root, body)


def _disk(layout: Layout, path: str) -> ServerDisk:
    return next(d for d in layout.body.disks if d.name == path)


def _blkid(device: str) -> dict[str, str]:
    text = run("blkid", "-p", "-o", "export", device)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _size(device: str) -> int:
    return int(run("blockdev", "--getsize64", device))


def _used(mount_point: Path) -> int:
    st = os.statvfs(mount_point)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _lvm(command: str, columns: str) -> list[dict[str, Any]]:
    text = run(command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", columns)
    rows: list[dict[str, Any]] = json.loads(text)["report"][0][command[:2]]
    return rows


def _lsblk_sizes(disk: str) -> dict[str, int]:
    text = run("lsblk", "--json", "--bytes", "--list", "-o", "PATH,SIZE", disk)
    return {row["path"]: int(row["size"]) for row in json.loads(text)["blockdevices"]}


class TestGptDisk:
    def test_disk_is_gpt_with_its_exact_size(self, layout: Layout) -> None:
        """The GPT disk is reported with partition style GPT and lsblk's byte count."""
        disk = _disk(layout, layout.gpt.path)
        assert disk.partition_style is not None and disk.partition_style.value == "GPT"
        assert _blkid(layout.gpt.path)["PTTYPE"] == "gpt"
        assert disk.size == _lsblk_sizes(layout.gpt.path)[layout.gpt.path] == 512 * 1024 * 1024
        assert disk.device_use == "NORMAL" and disk.os_disk is False

    @pytest.mark.parametrize(("number", "fstype"), [(1, "ext4"), (2, "xfs"), (3, "vfat")])
    def test_partition_matches_blkid_lsblk_and_statvfs(
        self, layout: Layout, number: int, fstype: str
    ) -> None:
        """A partition has blkid's type and UUID, lsblk's size, its mount point and used bytes."""
        device = layout.gpt.partitions[number - 1]
        volume = _volume(_disk(layout, layout.gpt.path), device)
        tags = _blkid(device)
        assert (volume.file_system, tags["TYPE"]) == (fstype, fstype)
        assert volume.uuid == tags["UUID"]
        assert volume.size == _lsblk_sizes(layout.gpt.path)[device] == _size(device)
        assert volume.index == number - 1
        assert volume.mount_point == str(layout.root / fstype)
        assert volume.used_size == _used(layout.root / fstype)
        assert volume.device_use == "NORMAL"

    def test_used_size_counts_written_data(self, layout: Layout) -> None:
        """The ext4 partition's used size includes the 3 MiB file written to it."""
        volume = _volume(_disk(layout, layout.gpt.path), layout.gpt.partitions[0])
        assert volume.used_size is not None and volume.used_size >= 3 * 1024 * 1024

    def test_inode_facts_match_the_file_system_tools(self, layout: Layout) -> None:
        """Inode size equals tune2fs/xfs_info; the inode count equals statvfs."""
        disk = _disk(layout, layout.gpt.path)
        ext4, xfs = (_volume(disk, p) for p in layout.gpt.partitions[:2])
        tune2fs = run("tune2fs", "-l", layout.gpt.partitions[0])
        assert f"Inode size:\t          {ext4.inode_size}" in tune2fs
        xfs_info = run("xfs_info", str(layout.root / "xfs"))
        assert f"isize={xfs.inode_size}" in xfs_info
        assert ext4.inode_nums == os.statvfs(layout.root / "ext4").f_files


class TestMbrDisk:
    def test_disk_is_mbr_with_pv_and_btrfs_partitions(self, layout: Layout) -> None:
        """The MBR disk carries an LVM member and a btrfs member, sized as lsblk says."""
        disk = _disk(layout, layout.mbr.path)
        assert disk.partition_style is not None and disk.partition_style.value == "MBR"
        assert _blkid(layout.mbr.path)["PTTYPE"] == "dos"
        sizes = _lsblk_sizes(layout.mbr.path)
        pv, btrfs = (_volume(disk, p) for p in layout.mbr.partitions)
        assert (pv.device_use, pv.file_system, pv.size) == (
            "VOLUME_GROUP",
            "LVM2_member",
            sizes[layout.mbr.partitions[0]],
        )
        assert pv.uuid == _blkid(layout.mbr.partitions[0])["UUID"]
        assert (btrfs.device_use, btrfs.file_system, btrfs.size) == (
            "BTRFS",
            "btrfs",
            sizes[layout.mbr.partitions[1]],
        )
        assert btrfs.uuid == _blkid(layout.mbr.partitions[1])["UUID"]
        assert btrfs.mount_point == str(layout.root / "btrfs")

    def test_pv_used_size_is_what_lvm_allocated(self, layout: Layout) -> None:
        """An unmounted PV counts the extents its LVs use (48 MiB)."""
        pv = _volume(_disk(layout, layout.mbr.path), layout.mbr.partitions[0])
        assert pv.used_size == 48 * 1024 * 1024


class TestVolumeGroup:
    def test_volume_group_matches_vgs(self, layout: Layout) -> None:
        """Name, size, free size and PVs are exactly those of `vgs`."""
        (group,) = [vg for vg in layout.body.volume_groups if vg.name == layout.vg]
        (row,) = [r for r in _lvm("vgs", "vg_name,vg_size,vg_free") if r["vg_name"] == layout.vg]
        assert (group.size, group.free_size) == (int(row["vg_size"]), int(row["vg_free"]))
        assert group.components == layout.mbr.partitions[0]

    def test_logical_volumes_match_lvs(self, layout: Layout) -> None:
        """Both LVs are reported with the byte sizes `lvs` gives."""
        (group,) = [vg for vg in layout.body.volume_groups if vg.name == layout.vg]
        rows = [r for r in _lvm("lvs", "vg_name,lv_name,lv_size") if r["vg_name"] == layout.vg]
        expected = {r["lv_name"]: int(r["lv_size"]) for r in rows}
        assert {lv.name: lv.size for lv in group.logical_volumes} == expected
        assert expected == {"lvdata": 16 * 1024 * 1024, "lvlogs": 32 * 1024 * 1024}

    @pytest.mark.skipif(not device_mapper_available(), reason="kernel without device-mapper")
    def test_active_logical_volume_has_file_system_and_mount(self, layout: Layout) -> None:
        """An active, mounted LV carries its file system, mount point and used size."""
        (group,) = [vg for vg in layout.body.volume_groups if vg.name == layout.vg]
        lv = next(lv for lv in group.logical_volumes if lv.name == "lvdata")
        assert (lv.file_system, lv.mount_point) == ("ext4", str(layout.root / "lvdata"))
        assert lv.used_size == _used(layout.root / "lvdata")


class TestBtrfs:
    def _fs(self, layout: Layout) -> Any:
        uuid = _blkid(layout.mbr.partitions[1])["UUID"]
        (fs,) = [b for b in layout.body.btrfs_list if b.uuid == uuid]
        return fs

    def test_file_system_matches_btrfs_progs(self, layout: Layout) -> None:
        """UUID, member device, size, node and sector size, profiles match btrfs-progs."""
        fs = self._fs(layout)
        device = layout.mbr.partitions[1]
        assert (fs.device, fs.name, fs.label) == (device, device, "")
        assert fs.size == _size(device)
        super_block = _tool_fields(run("btrfs", "inspect-internal", "dump-super", device), None)
        assert (fs.nodesize, fs.sectorsize) == (
            int(super_block["nodesize"]),
            int(super_block["sectorsize"]),
        )
        assert (fs.data_profile, fs.metadata_profile) == ("single", "DUP")
        assert fs.default_subvolid == "5"
        assert fs.default_subvol_mountpath == str(layout.root / "btrfs")

    def test_subvolume_and_snapshot_are_listed(self, layout: Layout) -> None:
        """The mounted subvolume has its mount path; the snapshot names its origin."""
        subvolumes = {s.subvol_name: s for s in self._fs(layout).subvolumn}
        assert set(subvolumes) == {"data", "snap"}
        data, snap = subvolumes["data"], subvolumes["snap"]
        assert data.subvol_mount_path == str(layout.root / "btrfs-data")
        assert (data.is_snapshot, snap.is_snapshot) == ("false", "true")
        assert (data.parent_id, snap.subvol_mount_path) == ("5", "")
        shown = _tool_fields(
            run("btrfs", "subvolume", "show", str(layout.root / "btrfs-data")), ":"
        )
        assert snap.uuid == shown["UUID"]


class TestWholeBody:
    def test_body_is_valid_for_our_model_and_the_sdk(self, layout: Layout) -> None:
        """The body round-trips through our model and the official SDK's PostSourceServerBody."""
        wire = layout.body.to_wire()
        assert PostSourceServerBody.model_validate(wire).to_wire() == wire
        assert sdk_round_trip(wire) == wire

    def test_cli_prints_the_same_layout(self, layout: Layout) -> None:
        """`smsagent inventory --disk ...` prints the loop disks as the builder saw them."""
        done = subprocess.run(
            ["smsagent", "inventory", "--disk", layout.gpt.kname, "--disk", layout.mbr.kname],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PATH": _venv_bin() + os.pathsep + os.environ.get("PATH", "")},
        )
        printed = json.loads(done.stdout)
        names = {d["name"] for d in printed["disks"]}
        assert {layout.gpt.path, layout.mbr.path} <= names
        gpt = next(d for d in printed["disks"] if d["name"] == layout.gpt.path)
        assert [p["uuid"] for p in gpt["physical_volumes"]] == [
            _blkid(p)["UUID"] for p in layout.gpt.partitions
        ]


def _tool_fields(text: str, separator: Optional[str]) -> dict[str, str]:
    """`key<sep>value` lines of a tool's report, stripped (the first occurrence of a key wins)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(separator, 1)
        if len(parts) == 2:
            fields.setdefault(parts[0].strip(), parts[1].strip())
    return fields


def _volume(disk: ServerDisk, name: str) -> PhysicalVolume:
    return next(v for v in disk.physical_volumes if v.name == name)


def _venv_bin() -> str:
    return str(Path(sys.executable).parent)
