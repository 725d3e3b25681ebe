"""Choosing the file systems to copy from mountinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsagent.inventory.mounts import (
    MountEntry,
    parse_mountinfo,
    read_mountinfo,
    select_filesystems,
)

# A server: ext4 root, /boot, /boot/efi, xfs /home, the kernel's pseudo file systems, an NFS share,
# a tmpfs with an ext4 below it, bind mounts, a second mount of /home's device, a path with a
# space, an over-mounted /srv, and a docker overlay.
SERVER = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid,relatime shared:8 - devtmpfs udev rw,size=4008720k,mode=755
26 25 0:23 / /dev/shm rw,nosuid,nodev shared:9 - tmpfs tmpfs rw
27 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=803968k
28 22 8:1 / /boot rw,relatime shared:30 - ext4 /dev/sda1 rw
29 28 8:2 / /boot/efi rw,relatime shared:31 - vfat /dev/sda2 rw,fmask=0077,dmask=0077
30 22 253:2 / /home rw,relatime shared:32 - xfs /dev/mapper/vg-home rw,attr2,inode64
31 22 0:45 / /mnt/share rw,relatime shared:40 - nfs4 nas:/export rw,vers=4.2
32 27 7:0 / /run/media/usb rw,relatime shared:41 - ext4 /dev/loop0 rw
33 22 253:0 /var/lib/data /srv/data rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw
34 22 253:2 / /export/home rw,relatime shared:32 - xfs /dev/mapper/vg-home rw
35 22 253:3 / /data\\040disk rw,relatime shared:50 - ext4 /dev/mapper/vg-data rw
36 22 253:4 / /srv rw,relatime shared:51 - ext4 /dev/mapper/vg-old rw
37 22 253:5 / /srv rw,relatime shared:52 - ext4 /dev/mapper/vg-srv rw
38 22 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/x
39 30 253:2 /alice /home/alice/mirror rw,relatime shared:32 - xfs /dev/mapper/vg-home rw
40 22 0:51 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
41 22 8:3 / /var rw,relatime shared:60 - ext4 /dev/sda3 rw
42 41 0:52 / /var/tmp rw,relatime shared:61 - tmpfs tmpfs rw
"""

# btrfs: subvolumes share the device; the top level (subvolid=5) shows them all again.
BTRFS = """\
22 1 0:30 /@ / rw,relatime shared:1 - btrfs /dev/sda2 rw,subvol=/@
23 22 0:30 /@home /home rw,relatime shared:2 - btrfs /dev/sda2 rw,subvol=/@home
24 22 0:30 /@snapshots /.snapshots rw,relatime shared:3 - btrfs /dev/sda2 rw,subvol=/@snapshots
25 22 0:30 / /mnt/pool rw,relatime shared:4 - btrfs /dev/sda2 rw,subvolid=5
26 22 0:30 /@/var/log /srv/logs rw,relatime shared:1 - btrfs /dev/sda2 rw,subvol=/@
"""


def _chosen(text: str, root: str = "/") -> list[str]:
    return [fs.relative_path for fs in select_filesystems(parse_mountinfo(text), root).filesystems]


def _skipped(text: str, root: str = "/") -> dict[str, str]:
    selection = select_filesystems(parse_mountinfo(text), root)
    return {skip.mount_point: skip.reason for skip in selection.skipped}


class TestParseMountinfo:
    def test_fields(self) -> None:
        """Every field comes out; optional fields before the separator are skipped."""
        entries = parse_mountinfo(SERVER)
        assert entries[0] == MountEntry(22, 1, (253, 0), "/", "/", "ext4", "/dev/mapper/vg-root")
        assert entries[16] == MountEntry(
            38, 22, (0, 50), "/", "/var/lib/docker/overlay2/abc/merged", "overlay", "overlay"
        )

    def test_read_only_is_the_file_systems_not_the_mounts(self) -> None:
        """A sandbox that mounts everything read-only (ProtectSystem=strict) leaves the super
        block's options `rw`: the server still writes to that file system, so it is not
        read-only. One mounted read-only everywhere says `ro` in both."""
        text = (
            "40 22 253:1 / /var ro,relatime shared:2 - xfs /dev/mapper/vg-var rw,attr2\n"
            "41 22 7:0 / /media/cd ro,relatime shared:3 - iso9660 /dev/loop0 ro,nojoliet\n"
        )
        var, cd = parse_mountinfo(text)
        assert (var.read_only, cd.read_only) == (False, True)

    def test_escapes(self) -> None:
        """Octal escapes (a space is `\\040`) are decoded, also in the root and the source."""
        entry = parse_mountinfo("35 22 253:3 /a\\011b /data\\040disk rw - ext4 /dev/x\\134y rw")[0]
        assert entry.mount_point == "/data disk"
        assert entry.root == "/a\tb"
        assert entry.source == "/dev/x\\y"

    def test_non_utf8_mount_point(self) -> None:
        """A mount point with bytes that are not UTF-8 round-trips through os.fsencode."""
        entry = parse_mountinfo("35 22 253:3 / /m\xff rw - ext4 /dev/x rw")[0]
        assert entry.mount_point.encode("utf-8", "surrogateescape") == b"/m\xff"

    def test_malformed_line(self) -> None:
        """A line that is not mountinfo is named in the error."""
        with pytest.raises(ValueError, match="mountinfo line 2 is malformed"):
            parse_mountinfo("22 1 253:0 / / rw - ext4 /dev/x rw\nnonsense\n")

    def test_this_machine(self) -> None:
        """The real mountinfo parses, and `/` is on it."""
        assert any(entry.mount_point == "/" for entry in read_mountinfo())


class TestSelectFilesystems:
    def test_server(self) -> None:
        """Only local disk file systems are copied, each once, the root first."""
        assert _chosen(SERVER) == ["", "boot", "home", "data disk", "srv", "var", "boot/efi"]

    def test_reasons(self) -> None:
        """Every mount left out says why."""
        skipped = _skipped(SERVER)
        assert skipped["/proc"] == "proc is not a local disk file system"
        assert skipped["/dev/shm"] == "below /dev, which is not copied"
        assert skipped["/mnt/share"] == "nfs4 is not a local disk file system"
        assert skipped["/run/media/usb"] == "below /run, which is not copied"
        assert "already copied at /" in skipped["/srv/data"]
        assert "already copied at /home" in skipped["/export/home"]
        assert "already copied at /home" in skipped["/home/alice/mirror"]
        assert skipped["/var/lib/docker/overlay2/abc/merged"].startswith("overlay is not")
        assert skipped["/var/tmp"] == "tmpfs is not a local disk file system"
        assert skipped["/sys/fs/cgroup"] == "below /sys, which is not copied"

    def test_over_mounted_path_uses_the_top_mount(self) -> None:
        """Of two mounts on /srv only the later, visible one is copied."""
        srv = [
            fs
            for fs in select_filesystems(parse_mountinfo(SERVER), "/").filesystems
            if fs.relative_path == "srv"
        ]
        assert [fs.source for fs in srv] == ["/dev/mapper/vg-srv"]

    def test_btrfs_subvolumes(self) -> None:
        """Subvolumes are copied; the top level and binds inside copied subvolumes are not."""
        assert _chosen(BTRFS) == ["", "home", ".snapshots"]
        skipped = _skipped(BTRFS)
        assert "already copied at /" in skipped["/mnt/pool"]
        assert "already copied at /" in skipped["/srv/logs"]

    def test_source_root_below_a_mount(self) -> None:
        """A source root inside a file system copies that part and the mounts below it."""
        text = (
            "22 1 253:0 / / rw - ext4 /dev/vda rw\n"
            "23 22 7:1 / /tmp/src/data rw - ext4 /dev/loop1 rw\n"
            "24 22 253:0 /opt /tmp/src/opt rw - ext4 /dev/vda rw\n"
            "25 22 253:0 /tmp/src/etc /tmp/src/etc2 rw - ext4 /dev/vda rw\n"
            "26 22 7:2 / /tmp/elsewhere rw - ext4 /dev/loop2 rw\n"
        )
        selection = select_filesystems(parse_mountinfo(text), "/tmp/src/")
        assert [fs.relative_path for fs in selection.filesystems] == ["", "data", "opt"]
        assert selection.filesystems[0].mount_point == "/"
        # /opt is outside the source root, so binding it in brings new data; etc2 does not.
        assert [skip.mount_point for skip in selection.skipped] == ["/tmp/src/etc2"]
        assert [skip.relative_path for skip in selection.skipped] == ["etc2"]

    def test_source_root_on_an_unusual_file_system(self) -> None:
        """The file system holding the source root is copied whatever its type."""
        text = "22 1 0:40 / / rw - overlay overlay rw\n23 22 8:1 / /boot rw - ext4 /dev/sda1 rw\n"
        assert _chosen(text) == ["", "boot"]

    def test_relative_source_root(self) -> None:
        """The source root must be absolute."""
        with pytest.raises(ValueError, match="must be an absolute path"):
            select_filesystems(parse_mountinfo(SERVER), "srv")

    def test_this_machine(self, tmp_path: Path) -> None:
        """A plain directory on this machine is one file system to copy."""
        selection = select_filesystems(read_mountinfo(), str(tmp_path))
        assert [fs.relative_path for fs in selection.filesystems] == [""]
