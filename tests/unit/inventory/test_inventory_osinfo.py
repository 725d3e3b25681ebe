"""os-release, os_version, memory, platform from DMI, and inode sizes from superblocks."""

from __future__ import annotations

import struct
from typing import Optional

import pytest

from smsagent.api.enums import Platform
from smsagent.inventory.osinfo import (
    os_version,
    parse_memory_mb,
    parse_os_release,
    platform_from_dmi,
)
from smsagent.inventory.superblock import SUPERBLOCK_BYTES, inode_size


class TestOsVersion:
    def test_os_release_quoting(self) -> None:
        """Quoted and unquoted values, comments and blank lines."""
        text = '# comment\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n\n'
        text += "PRETTY_NAME='x y'\n"
        assert parse_os_release(text) == {
            "NAME": "Debian GNU/Linux",
            "VERSION_ID": "12",
            "ID": "debian",
            "PRETTY_NAME": "x y",
        }

    @pytest.mark.parametrize(
        ("release", "machine", "expected"),
        [
            ({"ID": "debian", "VERSION_ID": "12"}, "x86_64", "Debian 12 server 64bit"),
            ({"ID": "ubuntu", "VERSION_ID": "22.04"}, "x86_64", "Ubuntu 22.04 server 64bit"),
            ({"ID": "centos", "VERSION_ID": "7"}, "x86_64", "CentOS 7 server 64bit"),
            ({"ID": "rhel", "VERSION_ID": "9.4"}, "aarch64", "Red Hat 9.4 server 64bit"),
            ({"ID": "sles", "VERSION_ID": "15.5"}, "x86_64", "SUSE 15.5 server 64bit"),
            ({"ID": "debian", "VERSION_ID": "11"}, "i686", "Debian 11 server 32bit"),
            ({"ID": "mydistro", "NAME": "My Distro", "VERSION_ID": "3"}, "x86_64",
             "My Distro 3 server 64bit"),
            ({"ID": "arch"}, "x86_64", "Linux server 64bit"),
            ({}, "x86_64", "Linux server 64bit"),
        ],
    )  # fmt: skip
    def test_os_version_style(self, release: dict[str, str], machine: str, expected: str) -> None:
        """`<Distribution> <version> server <bits>bit`, as in the SMS examples."""
        assert os_version(release, machine) == expected

    def test_memory_is_mebibytes(self) -> None:
        """MemTotal in kB becomes whole MB; a missing line is None."""
        assert parse_memory_mb("MemFree: 1 kB\nMemTotal:       24684084 kB\n") == 24105
        assert parse_memory_mb("MemFree: 1 kB\n") is None


class TestPlatform:
    @pytest.mark.parametrize(
        ("dmi", "platform"),
        [
            ({"sys_vendor": "OpenStack Foundation", "product_name": "OpenStack Nova",
              "chassis_asset_tag": "HUAWEICLOUD"}, Platform.hw),
            ({"sys_vendor": "Alibaba Cloud", "product_name": "Alibaba Cloud ECS"}, Platform.ali),
            ({"sys_vendor": "Amazon EC2", "product_name": "t3.micro"}, Platform.aws),
            ({"sys_vendor": "Xen", "bios_version": "4.11.amazon"}, Platform.aws),
            ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine",
              "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"}, Platform.azure),
            ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine",
              "chassis_asset_tag": "None"}, Platform.hyperv),
            ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, Platform.gcp),
            ({"sys_vendor": "Tencent Cloud", "product_name": "CVM"}, Platform.tencent),
            ({"sys_vendor": "VMware, Inc.", "product_name": "VMware7,1"}, Platform.vmware),
            ({"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R740"}, Platform.other),
        ],
    )  # fmt: skip
    def test_dmi_strings(self, dmi: dict[str, str], platform: Platform) -> None:
        """Each cloud and hypervisor is recognised by its SMBIOS strings; the rest is `other`."""
        assert platform_from_dmi(dmi) == platform


def _ext_head(rev_level: int, size: int, magic: int = 0xEF53) -> bytes:
    head = bytearray(SUPERBLOCK_BYTES)
    struct.pack_into("<H", head, 1024 + 0x38, magic)
    struct.pack_into("<I", head, 1024 + 0x4C, rev_level)
    struct.pack_into("<H", head, 1024 + 0x58, size)
    return bytes(head)


def _xfs_head(size: int) -> bytes:
    head = bytearray(SUPERBLOCK_BYTES)
    head[:4] = b"XFSB"
    struct.pack_into(">H", head, 104, size)
    return bytes(head)


class TestInodeSize:
    @pytest.mark.parametrize(
        ("fstype", "head", "expected"),
        [
            ("ext4", _ext_head(1, 256), 256),
            ("ext2", _ext_head(0, 999), 128),  # revision 0 has fixed 128-byte inodes
            ("ext4", _ext_head(1, 256, magic=0x1234), None),
            ("xfs", _xfs_head(512), 512),
            ("xfs", _ext_head(1, 256), None),
            ("vfat", _xfs_head(512), None),
            ("ext4", b"short", None),
            (None, _ext_head(1, 256), None),
        ],
    )
    def test_superblock(self, fstype: Optional[str], head: bytes, expected: Optional[int]) -> None:
        """The inode size is read only when the magic of the named file system is there."""
        assert inode_size(fstype, head) == expected
