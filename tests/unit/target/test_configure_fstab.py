"""The fstab and resume rewrites (pure): new UUIDs, old lines kept, idempotent."""

from __future__ import annotations

import pytest

from smsagent.target.configure_fstab import (
    decode_mount_point,
    rewrite_fstab,
    rewrite_resume_conf,
    unquote_spec,
)
from smsagent.target.prepared import PreparedVolume
from tests.support.configure_trees import (
    DEBIAN_FSTAB,
    NEW_BOOT,
    NEW_DATA,
    NEW_ROOT,
    NEW_SWAP,
    SRC_BOOT,
    SRC_DATA,
    SRC_ROOT,
    SRC_SWAP,
)

ROOT = PreparedVolume("/dev/vdb1", "ext4", "/", NEW_ROOT, SRC_ROOT)
BOOT = PreparedVolume("/dev/vdb2", "ext4", "/boot", NEW_BOOT, SRC_BOOT)
SWAP = PreparedVolume("/dev/vdb5", "swap", None, NEW_SWAP, SRC_SWAP)
DATA = PreparedVolume("/dev/vdc1", "ext4", "/data", NEW_DATA, SRC_DATA)


class TestRewriteFstab:
    def test_debian_fstab(self) -> None:
        """Entries on the target by new UUID under their old line; others untouched or off."""
        out = rewrite_fstab(DEBIAN_FSTAB, [ROOT, BOOT, SWAP])
        assert out == (
            "# /etc/fstab: static file system information.\n"
            "#\n"
            "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
            "# / was on /dev/sda1 during installation\n"
            f"# smsagent: was: UUID={SRC_ROOT} /               ext4    "
            "errors=remount-ro 0       1\n"
            f"UUID={NEW_ROOT} /               ext4    errors=remount-ro 0       1\n"
            "# /boot was on /dev/sda2 during installation\n"
            f'# smsagent: was: UUID="{SRC_BOOT}" /boot ext4 defaults 0 2\n'
            f"UUID={NEW_BOOT} /boot ext4 defaults 0 2\n"
            "# swap was on /dev/sda5 during installation\n"
            f"# smsagent: was: UUID={SRC_SWAP} none            swap    sw              0       0\n"
            f"UUID={NEW_SWAP} none            swap    sw              0       0\n"
            "/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0\n"
            "# smsagent: not on the target: /dev/sdb1\t/data\text4\tdefaults,nofail\t0\t2\n"
            "tmpfs /tmp tmpfs defaults,size=1G 0 0\n"
            "nas:/export /mnt/nas nfs4 defaults,_netdev 0 0\n"
        )

    def test_idempotent(self) -> None:
        """Rewriting the output again changes nothing."""
        once = rewrite_fstab(DEBIAN_FSTAB, [ROOT, BOOT, SWAP, DATA])
        assert rewrite_fstab(once, [ROOT, BOOT, SWAP, DATA]) == once

    def test_new_uuids_again_keep_the_first_comment(self) -> None:
        """A second prepare (new UUIDs again) replaces the source but adds no second comment."""
        once = rewrite_fstab(f"UUID={SRC_ROOT} / ext4 defaults 0 1\n", [ROOT])
        again = rewrite_fstab(once, [PreparedVolume("/dev/vdb1", "ext4", "/", "eeee", NEW_ROOT)])
        assert again == (
            f"# smsagent: was: UUID={SRC_ROOT} / ext4 defaults 0 1\nUUID=eeee / ext4 defaults 0 1\n"
        )

    @pytest.mark.parametrize(
        "source",
        [
            "/dev/sda1",
            "LABEL=root",
            "PARTUUID=0b3c5a9e-01",
            "/dev/mapper/vg0-root",
            "/dev/disk/by-id/wwn-0x5000-part1",
            "UUID='abc'",
        ],
    )
    def test_any_device_reference(self, source: str) -> None:
        """Whatever named the device, the target's entry names the new UUID."""
        out = rewrite_fstab(f"{source}\t/\text4\tdefaults\t0\t1\n", [ROOT])
        assert out.splitlines()[1] == f"UUID={NEW_ROOT}\t/\text4\tdefaults\t0\t1"

    def test_swaps_pair_by_uuid_then_in_order(self) -> None:
        """A swap named by the source's UUID gets its own; the others pair in order."""
        other = PreparedVolume("/dev/vdb6", "swap", None, "new-2", "src-2")
        text = f"/dev/sda6 none swap sw 0 0\nUUID={SRC_SWAP} none swap sw 0 0\n"
        out = rewrite_fstab(text, [ROOT, SWAP, other])
        entries = [line for line in out.splitlines() if not line.startswith("#")]
        assert entries[:2] == ["UUID=new-2 none swap sw 0 0", f"UUID={NEW_SWAP} none swap sw 0 0"]

    def test_swap_file_and_bind_mounts_untouched(self) -> None:
        """A swap file, a bind mount and a loop image are not devices of the target."""
        text = (
            "/swapfile none swap sw 0 0\n"
            "/srv/www /var/www none bind 0 0\n"
            "/srv/img.iso /mnt/iso iso9660 loop,ro 0 0\n"
        )
        assert rewrite_fstab(text, [ROOT]) == text + (
            f"# smsagent: added: mounted on the source without an entry here\n"
            f"UUID={NEW_ROOT} / ext4 defaults 0 1\n"
        )

    def test_missing_mounts_are_added(self) -> None:
        """A target volume without an entry is appended (parents first), and a new swap too."""
        out = rewrite_fstab(f"UUID={SRC_ROOT} / ext4 defaults 0 1", [ROOT, BOOT, SWAP])
        assert out.splitlines()[2:] == [
            "# smsagent: added: mounted on the source without an entry here",
            f"UUID={NEW_BOOT} /boot ext4 defaults 0 2",
            "# smsagent: added: mounted on the source without an entry here",
            f"UUID={NEW_SWAP} none swap sw 0 0",
        ]

    def test_escaped_mount_point_and_type_fixed(self) -> None:
        """`\\040` in a mount point matches; a type that differs from the target's is fixed."""
        volume = PreparedVolume("/dev/vdc1", "xfs", "/srv/my data", NEW_DATA, SRC_DATA)
        out = rewrite_fstab("/dev/sdc1 /srv/my\\040data ext4 noatime 0 2\n", [ROOT, volume])
        assert f"UUID={NEW_DATA} /srv/my\\040data xfs noatime 0 2" in out.splitlines()

    def test_missing_noauto_entry_is_kept(self) -> None:
        """A noauto entry for a device the target lacks is left (it never holds up the boot)."""
        text = "/dev/sdz1 /mnt/usb vfat noauto,user 0 0\n"
        assert rewrite_fstab(text, [ROOT]).startswith(text)


class TestHelpers:
    def test_unquote(self) -> None:
        """A quoted tag value is unquoted; anything else stays."""
        assert unquote_spec('UUID="abc"') == "UUID=abc"
        assert unquote_spec("/dev/sda1") == "/dev/sda1"

    def test_decode_mount_point(self) -> None:
        """Octal escapes are undone and the path normalised."""
        assert decode_mount_point("/srv/a\\040b/") == "/srv/a b"


class TestResume:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (f"RESUME=UUID={SRC_SWAP}", f"RESUME=UUID={NEW_SWAP}"),
            (f'RESUME="UUID={SRC_SWAP}"', f"RESUME=UUID={NEW_SWAP}"),
            ("RESUME=/dev/sda5", f"RESUME=UUID={NEW_SWAP}"),
            (f"RESUME=UUID={NEW_SWAP}", f"RESUME=UUID={NEW_SWAP}"),
            ("RESUME=none", "RESUME=none"),
            ("# RESUME=/dev/sda5", "# RESUME=/dev/sda5"),
        ],
    )
    def test_resume(self, line: str, expected: str) -> None:
        """RESUME names the target's swap by its new UUID."""
        assert rewrite_resume_conf(line + "\n", [SWAP]) == expected + "\n"

    def test_no_swap_on_the_target(self) -> None:
        """Without a swap on the target, RESUME=none (the initramfs would wait for it)."""
        assert rewrite_resume_conf("RESUME=UUID=x\n", []) == "RESUME=none\n"
