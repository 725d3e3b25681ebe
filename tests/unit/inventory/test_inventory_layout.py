"""Disks, partitions, volume groups and btrfs shaped from storage facts of typical servers."""

from __future__ import annotations

from structlog.testing import capture_logs

from smsagent.inventory.facts import StorageFacts
from smsagent.inventory.layout import StorageLayout, build_layout
from tests.unit.inventory.samples import GIB, btrfs_server, dev, lvm_server, mount, usage


class TestRootOnLvm:
    def layout(self) -> StorageLayout:
        return build_layout(lvm_server())

    def test_boot_disk_comes_first_and_is_the_os_disk(self) -> None:
        """sda holds /boot: it is listed first, marked BOOT and os_disk; sdb is a NORMAL disk."""
        sda, sdb = self.layout().disks
        assert (sda.name, sda.device_use, sda.os_disk, sda.partition_style) == (
            "/dev/sda",
            "BOOT",
            True,
            "GPT",
        )
        assert (sdb.name, sdb.device_use, sdb.os_disk, sdb.partition_style) == (
            "/dev/sdb",
            "NORMAL",
            False,
            "MBR",
        )

    def test_partitions_carry_their_role_and_facts(self) -> None:
        """/boot is BOOT with its fs facts; the PV is VOLUME_GROUP, used = allocated extents."""
        boot, pv = self.layout().disks[0].physical_volumes
        assert (boot.name, boot.index, boot.device_use, boot.file_system) == (
            "/dev/sda1",
            0,
            "BOOT",
            "ext4",
        )
        assert (boot.mount_point, boot.uuid, boot.used_size, boot.inode_size) == (
            "/boot",
            "boot-uuid",
            200 * 2**20,
            256,
        )
        assert (pv.index, pv.device_use, pv.file_system, pv.used_size) == (
            1,
            "VOLUME_GROUP",
            "LVM2_member",
            48 * GIB,
        )
        assert self.layout().disks[0].used_size == 200 * 2**20 + 48 * GIB

    def test_volume_group_and_its_logical_volumes(self) -> None:
        """The root LV is OS and mounted at /; swap has its type; an inactive LV only its size."""
        (vg,) = self.layout().volume_groups
        assert (vg.name, vg.components, vg.size, vg.free_size) == (
            "vg0",
            "/dev/sda2",
            99 * GIB,
            51 * GIB,
        )
        root, swap, spare = vg.logical_volumes
        assert (root.name, root.device_use, root.mount_point, root.file_system) == (
            "root",
            "OS",
            "/",
            "ext4",
        )
        assert (root.used_size, root.free_size, root.block_size, root.inode_size) == (
            5 * GIB,
            5 * GIB,
            4096,
            256,
        )
        assert (swap.device_use, swap.file_system, swap.mount_point) == ("NORMAL", "swap", None)
        assert (spare.size, spare.file_system, spare.mount_point) == (4 * GIB, None, None)


class TestContainer:
    def test_overlay_root_reports_disks_without_an_os_disk(self) -> None:
        """Root on overlay: no disk is the OS disk, a bind-mounted file is no mount point."""
        facts = StorageFacts(
            devices=(
                dev("vda", "254:0", 20 * GIB, "disk"),
                dev("vda1", "254:1", 20 * GIB, parents=("vda",)),
            ),
            mounts=(
                mount("0:52", "/", "overlay", "overlay"),
                mount("254:1", "/etc/hosts", "ext4", "/dev/vda1", root="/var/lib/docker/x/hosts"),
            ),
        )
        with capture_logs() as logs:
            (vda,) = build_layout(facts).disks
        assert (vda.device_use, vda.os_disk, vda.partition_style) == ("NORMAL", False, None)
        (vda1,) = vda.physical_volumes
        assert (vda1.device_use, vda1.mount_point, vda1.file_system) == ("NORMAL", None, None)
        assert any(e["event"] == "inventory_root_device_unknown" for e in logs)


class TestWholeDiskFileSystem:
    def test_file_system_on_the_whole_disk_is_its_only_volume(self) -> None:
        """ext4 straight on an unreadable vda: one volume named after the disk, from mountinfo."""
        facts = StorageFacts(
            devices=(dev("vda", "254:0", 256 * GIB, "disk"),),
            mounts=(
                mount("254:0", "/", "ext4", "/dev/vda"),
                mount("254:0", "/run/netns", "ext4", "/dev/vda", root="/run/netns"),
            ),
            usage={"/": usage(22 * GIB)},
        )
        (vda,) = build_layout(facts).disks
        assert (vda.device_use, vda.os_disk, vda.partition_style, vda.used_size) == (
            "BOOT",
            True,
            None,
            22 * GIB,
        )
        (volume,) = vda.physical_volumes
        assert (volume.name, volume.device_use, volume.file_system, volume.mount_point) == (
            "/dev/vda",
            "OS",
            "ext4",
            "/",
        )


class TestRootOnBtrfs:
    def test_subvolume_root_is_found_through_the_mount_source(self) -> None:
        """btrfs mounts show an anonymous device number; the source names the partition."""
        (sda,) = build_layout(btrfs_server()).disks
        efi, root = sda.physical_volumes
        assert (sda.device_use, sda.os_disk) == ("BOOT", True)
        assert (efi.device_use, efi.file_system, efi.mount_point) == ("BOOT", "vfat", "/boot/efi")
        assert (root.device_use, root.file_system, root.mount_point, root.used_size) == (
            "OS",
            "btrfs",
            "/",
            9 * GIB,
        )

    def test_btrfs_entry_with_default_subvolume_and_snapshot(self) -> None:
        """Profiles, default subvolume mounted at /, subvolume mount paths, snapshot origin."""
        (fs,) = build_layout(btrfs_server()).btrfs_list
        assert (fs.name, fs.device, fs.size, fs.g_vol_used_size) == (
            "/dev/sda2",
            "/dev/sda2",
            63 * GIB,
            9 * GIB,
        )
        assert (fs.data_profile, fs.metadata_profile, fs.system_profile, fs.global_reserve1) == (
            "single",
            "DUP",
            "DUP",
            "5",
        )
        assert (fs.default_subvolid, fs.default_subvol_name, fs.default_subvol_mountpath) == (
            "256",
            "@",
            "/",
        )
        paths = {s.subvol_name: (s.subvol_mount_path, s.is_snapshot, s.uuid) for s in fs.subvolumn}
        assert paths == {
            "@": ("/", "false", ""),
            "@home": ("/home", "false", ""),
            "snapshots/1": ("", "true", "u-root"),
        }


class TestExtraDisks:
    def test_loop_devices_are_disks_only_when_named(self) -> None:
        """A loop device is skipped unless its kname is passed as an extra disk."""
        facts = StorageFacts(devices=(dev("loop3", "7:3", GIB, "loop"),))
        assert build_layout(facts).disks == []
        assert [d.name for d in build_layout(facts, extra_disks=("loop3",)).disks] == ["/dev/loop3"]
