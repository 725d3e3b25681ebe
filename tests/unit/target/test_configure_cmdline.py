"""Kernel command line, /etc/default/grub, BLS entries, grubenv and the EFI stub (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsagent.target.configure_boot import rewrite_initramfs_modules
from smsagent.target.configure_cmdline import (
    boot_identity,
    is_efi_stub,
    mapper_path,
    rewrite_bls_entry,
    rewrite_cmdline,
    rewrite_default_grub,
    rewrite_efi_stub,
    rewrite_grubenv,
)
from smsagent.target.configure_os import OsFamily, kernel_sort_key, os_family, parse_os_release
from tests.support.configure_trees import (
    NEW_BOOT,
    NEW_ROOT,
    NEW_SWAP,
    RHEL_BLS,
    SRC_BOOT,
    SRC_ROOT,
    SRC_SWAP,
    debian_prepared,
    rhel_prepared,
)

DEBIAN = boot_identity(debian_prepared(Path("/mnt/t")))
RHEL = boot_identity(rhel_prepared(Path("/mnt/t")))


class TestCmdline:
    def test_identity(self) -> None:
        """Root by UUID on a partition, by mapper path on LVM."""
        assert DEBIAN.root_arg == f"UUID={NEW_ROOT}"
        assert RHEL.root_arg == "/dev/mapper/rl-root"
        assert mapper_path("/dev/my-vg/lv-1", frozenset({"my-vg"})) == "/dev/mapper/my--vg-lv--1"

    @pytest.mark.parametrize(
        ("cmdline", "keep_root", "expected"),
        [
            (f"root=UUID={SRC_ROOT} ro quiet", True, f"root=UUID={NEW_ROOT} ro quiet"),
            (f"root=UUID={SRC_ROOT} ro quiet", False, "ro quiet"),
            ("root=/dev/sda1  ro", True, f"root=UUID={NEW_ROOT} ro"),
            (f"resume=UUID={SRC_SWAP}", False, f"resume=UUID={NEW_SWAP}"),
            ("resume=/dev/sda5 quiet", False, f"resume=UUID={NEW_SWAP} quiet"),
            ("rd.lvm.lv=vg0/root quiet", False, "quiet"),
            ("quiet  splash", False, "quiet  splash"),
            ("$kernelopts $tuned_params", True, "$kernelopts $tuned_params"),
        ],
    )
    def test_debian(self, cmdline: str, keep_root: bool, expected: str) -> None:
        """root=, resume= and rd.lvm.* follow the target; untouched text keeps its spacing."""
        assert rewrite_cmdline(cmdline, DEBIAN, keep_root=keep_root) == expected

    def test_rhel_lvm_kept(self) -> None:
        """LVM names of groups the target has stay as they are."""
        line = "root=/dev/mapper/rl-root ro resume=/dev/mapper/rl-swap rd.lvm.lv=rl/root"
        assert rewrite_cmdline(line, RHEL, keep_root=True) == line


class TestDefaultGrub:
    def test_main_file(self) -> None:
        """Stale root= goes, resume= follows the swap, os-prober is disabled, rest kept."""
        text = (
            "GRUB_DEFAULT=0\n"
            f"GRUB_CMDLINE_LINUX='root=UUID={SRC_ROOT} resume=UUID={SRC_SWAP} console=ttyS0'\n"
            'GRUB_CMDLINE_LINUX_DEFAULT="quiet"  \n'
            "GRUB_DISABLE_OS_PROBER=false\n"
        )
        out = rewrite_default_grub(text, DEBIAN, main=True)
        assert out == (
            "GRUB_DEFAULT=0\n"
            f"GRUB_CMDLINE_LINUX='resume=UUID={NEW_SWAP} console=ttyS0'\n"
            'GRUB_CMDLINE_LINUX_DEFAULT="quiet"  \n'
            "GRUB_DISABLE_OS_PROBER=true\n"
        )
        assert rewrite_default_grub(out, DEBIAN, main=True) == out

    def test_dropin_and_force_partuuid(self) -> None:
        """A grub.d drop-in gets no os-prober line; GRUB_FORCE_PARTUUID is commented out."""
        text = (
            "GRUB_FORCE_PARTUUID=0b3c5a9e-01\n"
            'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT console=ttyS0"\n'
        )
        out = rewrite_default_grub(text, DEBIAN, main=False)
        assert out == "# smsagent: was: " + text
        assert rewrite_default_grub(out, DEBIAN, main=False) == out

    def test_multiline_value_left_alone(self) -> None:
        """A value spanning lines is not guessed at."""
        text = f'GRUB_CMDLINE_LINUX="root=UUID={SRC_ROOT}\n quiet"\nGRUB_DISABLE_OS_PROBER=true\n'
        assert rewrite_default_grub(text, DEBIAN, main=True) == text


class TestBls:
    def test_rhel_entry(self) -> None:
        """The options line follows the target; the other lines stay."""
        out = rewrite_bls_entry(RHEL_BLS, RHEL)
        expected = RHEL_BLS.replace(f"resume=UUID={SRC_SWAP}", f"resume=UUID={NEW_SWAP}")
        assert out == expected
        assert rewrite_bls_entry(out, RHEL) == out

    def test_root_by_uuid(self) -> None:
        """A root named by the source's UUID gets the target's root."""
        entry = f"title x\noptions root=UUID={SRC_ROOT} ro\n"
        assert rewrite_bls_entry(entry, DEBIAN) == f"title x\noptions root=UUID={NEW_ROOT} ro\n"


class TestGrubenv:
    def test_kernelopts_padded(self) -> None:
        """kernelopts follows the target and the block keeps its size."""
        body = (
            "# GRUB Environment Block\nsaved_entry=x\n"
            f"kernelopts=root=UUID={SRC_ROOT} ro resume=/dev/sda5 \n"
        )
        text = body + "#" * (1024 - len(body))
        out = rewrite_grubenv(text, DEBIAN)
        assert len(out) == 1024
        assert f"kernelopts=root=UUID={NEW_ROOT} ro resume=UUID={NEW_SWAP}\n" in out
        assert rewrite_grubenv(out, DEBIAN) == out

    def test_without_kernelopts(self) -> None:
        """A block without kernelopts is not touched."""
        text = "# GRUB Environment Block\nsaved_entry=x\n" + "#" * 990
        assert rewrite_grubenv(text, DEBIAN) == text


class TestEfiStub:
    def test_stub(self) -> None:
        """The stub's search names /boot's new UUID; an unknown UUID becomes /boot's too."""
        stub = (
            f"search --no-floppy --fs-uuid --set=dev {SRC_BOOT}\n"
            "set prefix=($dev)/grub2\nconfigfile $prefix/grub.cfg\n"
        )
        assert is_efi_stub(stub)
        assert rewrite_efi_stub(stub, RHEL, NEW_BOOT) == stub.replace(SRC_BOOT, NEW_BOOT)
        unknown = stub.replace(SRC_BOOT, "0000-UNKNOWN")
        assert rewrite_efi_stub(unknown, RHEL, NEW_BOOT) == stub.replace(SRC_BOOT, NEW_BOOT)
        assert not is_efi_stub("menuentry 'x' {\n}\nconfigfile /x\n")


class TestInitramfsModules:
    def test_missing_added_once(self) -> None:
        """Only missing drivers are added, one a line; a commented one counts as missing."""
        text = "# List of modules\n#virtio_blk\nvirtio_net\n"
        out = rewrite_initramfs_modules(text)
        assert out == text + (
            "# smsagent: VirtIO drivers of the target's hardware\n"
            "virtio_blk\nvirtio_scsi\nvirtio_pci\nvirtio_ring\nvirtio\n"
        )
        assert rewrite_initramfs_modules(out) == out


class TestOsRelease:
    def test_parse_and_family(self) -> None:
        """os-release's quoting is undone; ID_LIKE decides for derivatives."""
        fields = parse_os_release('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\n')
        assert fields["ID"] == "rocky"
        assert os_family("rocky", ()) is OsFamily.RHEL
        assert os_family("linuxmint", ("ubuntu", "debian")) is OsFamily.DEBIAN
        assert os_family("arch", ()) is None

    def test_kernel_order(self) -> None:
        """Kernel versions sort numerically."""
        versions = ["6.1.0-18-amd64", "6.1.0-9-amd64", "5.10.0-28-amd64"]
        assert sorted(versions, key=kernel_sort_key) == [
            "5.10.0-28-amd64",
            "6.1.0-9-amd64",
            "6.1.0-18-amd64",
        ]
