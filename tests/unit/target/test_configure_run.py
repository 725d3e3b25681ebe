"""`configure` on fixture trees: files, backups, commands, idempotence, errors and STOP."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
import structlog

from smsagent.target.configure import configure
from smsagent.target.configure_report import Action, ConfigureError
from smsagent.target.session import CompletedRemote
from smsagent.target.tree_local import LocalTree
from tests.support.configure_trees import (
    KERNEL_DEBIAN,
    KERNEL_DEBIAN_OLD,
    KERNEL_RHEL,
    NEW_BOOT,
    NEW_ROOT,
    NEW_SWAP,
    RecordingRunner,
    debian_prepared,
    debian_tree,
    put,
    rhel_prepared,
    rhel_tree,
    snapshot,
    ubuntu_prepared,
    ubuntu_tree,
)

LOG: Any = structlog.get_logger()


def _backups(root: Path) -> list[str]:
    return sorted(p for p in snapshot(root) if ".smsagent.bak" in p)


class TestDebian:
    async def test_files_and_commands(self, tmp_path: Path) -> None:
        """Debian 12 BIOS: fstab, NICs, agent, cloud-init, GRUB settings; initramfs per kernel,
        grub-install to the boot disk, grub-mkconfig without os-prober."""
        debian_tree(tmp_path)
        runner = RecordingRunner()
        tree = LocalTree(tmp_path, runner)
        report = await configure(tree, debian_prepared(tmp_path), LOG)
        assert report.os_id == "debian" and report.kernels == (KERNEL_DEBIAN_OLD, KERNEL_DEBIAN)
        assert runner.argvs == [
            ("update-initramfs", "-c", "-k", KERNEL_DEBIAN_OLD),
            ("update-initramfs", "-u", "-k", KERNEL_DEBIAN),
            ("grub-install", "--target=i386-pc", "/dev/vdb"),
            ("grub-mkconfig", "-o", "/boot/grub/grub.cfg"),
        ]
        assert all(env["GRUB_DISABLE_OS_PROBER"] == "true" for _, env in runner.calls)
        assert [c.returncode for c in report.commands] == [0, 0, 0, 0]
        fstab = (tmp_path / "etc/fstab").read_text()
        assert f"UUID={NEW_ROOT} /" in fstab and f"UUID={NEW_BOOT} /boot" in fstab
        assert (tmp_path / "etc/initramfs-tools/conf.d/resume").read_text() == (
            f"RESUME=UUID={NEW_SWAP}\n"
        )
        assert "iface ens192 inet dhcp" in (tmp_path / "etc/network/interfaces").read_text()
        assert not (tmp_path / "etc/udev/rules.d/70-persistent-net.rules").exists()
        assert not tree.bound

    async def test_backups_are_the_originals(self, tmp_path: Path) -> None:
        """Each changed file has one backup holding the source's bytes, out of the read dirs."""
        debian_tree(tmp_path)
        before = snapshot(tmp_path)
        await configure(LocalTree(tmp_path, RecordingRunner()), debian_prepared(tmp_path), LOG)
        assert (tmp_path / "etc/fstab.smsagent.bak").read_bytes() == before["/etc/fstab"]
        # Sourced directories hold no backup: it would be read as configuration.
        assert sorted(os.listdir(tmp_path / "etc/network/interfaces.d")) == ["ens224"]
        assert sorted(os.listdir(tmp_path / "etc/initramfs-tools/conf.d")) == ["resume"]
        moved = tmp_path / "etc/network/interfaces.d.smsagent.bak/ens224"
        assert moved.read_bytes() == before["/etc/network/interfaces.d/ens224"]
        env_backup = tmp_path / "etc/smsagent/smsagent.env.smsagent.bak"
        assert stat.S_IMODE(env_backup.stat().st_mode) == 0o600

    async def test_agent_masked_and_cloud_init_disabled(self, tmp_path: Path) -> None:
        """smsagent.service is masked and unwanted, its env and state moved aside;
        cloud-init's config moved aside and cloud-init disabled."""
        debian_tree(tmp_path)
        await configure(LocalTree(tmp_path, RecordingRunner()), debian_prepared(tmp_path), LOG)
        unit = tmp_path / "etc/systemd/system/smsagent.service"
        assert unit.is_symlink() and str(unit.readlink()) == "/dev/null"
        wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
        assert sorted(os.listdir(wants)) == ["ssh.service"]
        assert not (tmp_path / "etc/smsagent/smsagent.env").exists()
        assert (tmp_path / "var/lib/smsagent.smsagent.bak/task.json").exists()
        assert not (tmp_path / "var/lib/smsagent").exists()
        assert not (tmp_path / "etc/cloud/cloud.cfg").exists()
        assert (tmp_path / "etc/cloud/cloud.cfg.smsagent.bak").exists()
        assert (tmp_path / "etc/cloud/cloud-init.disabled").exists()

    async def test_idempotent(self, tmp_path: Path) -> None:
        """A second run changes no byte, makes no backup, and says what it left as is."""
        debian_tree(tmp_path)
        prepared = debian_prepared(tmp_path)
        first = await configure(LocalTree(tmp_path, RecordingRunner()), prepared, LOG)
        after_first = snapshot(tmp_path)
        runner = RecordingRunner()
        second = await configure(LocalTree(tmp_path, runner), prepared, LOG)
        assert snapshot(tmp_path) == after_first
        assert second.changed() == []
        left = {f.path for f in second.files if f.action is Action.UNCHANGED}
        assert {"/etc/fstab", "/etc/default/grub", "/etc/systemd/system/smsagent.service"} <= left
        assert len(first.changed()) == 13
        assert len(runner.argvs) == 4  # the commands run again

    async def test_reappearing_files_are_moved_aside_again(self, tmp_path: Path) -> None:
        """A file a later sync copied back is moved aside to a numbered name, nothing lost."""
        debian_tree(tmp_path)
        prepared = debian_prepared(tmp_path)
        await configure(LocalTree(tmp_path, RecordingRunner()), prepared, LOG)
        put(tmp_path, "/etc/smsagent/smsagent.env", "SMSAGENT_SK=newer\n")
        await configure(LocalTree(tmp_path, RecordingRunner()), prepared, LOG)
        assert (tmp_path / "etc/smsagent/smsagent.env.smsagent.bak.1").read_text() == (
            "SMSAGENT_SK=newer\n"
        )
        assert (tmp_path / "etc/smsagent/smsagent.env.smsagent.bak").read_text() == (
            "SMSAGENT_SK=secret\n"
        )

    async def test_device_links_exist_while_grub_runs(self, tmp_path: Path) -> None:
        """/dev/disk/by-uuid links of the target's volumes exist for grub-mkconfig, and the
        ones configure made are gone after it."""
        debian_tree(tmp_path)
        seen: dict[str, list[str]] = {}
        recorder = RecordingRunner()

        async def runner(
            argv: Sequence[str], env: Mapping[str, str], stdin: Optional[bytes]
        ) -> CompletedRemote:
            by_uuid = tmp_path / "dev/disk/by-uuid"
            seen[argv[0]] = sorted(os.listdir(by_uuid)) if by_uuid.exists() else []
            return await recorder(argv, env, stdin)

        await configure(LocalTree(tmp_path, runner), debian_prepared(tmp_path), LOG)
        assert seen["grub-mkconfig"] == sorted([NEW_ROOT, NEW_BOOT, NEW_SWAP])
        assert os.listdir(tmp_path / "dev/disk/by-uuid") == []

    async def test_existing_device_links_are_left(self, tmp_path: Path) -> None:
        """A link udev made already is neither replaced nor removed."""
        debian_tree(tmp_path)
        put(tmp_path, "/dev/vdb1", "block device stand-in")
        (tmp_path / "dev/disk/by-uuid").mkdir(parents=True)
        (tmp_path / f"dev/disk/by-uuid/{NEW_ROOT}").symlink_to("../../vdb1")
        await configure(LocalTree(tmp_path, RecordingRunner()), debian_prepared(tmp_path), LOG)
        assert os.listdir(tmp_path / "dev/disk/by-uuid") == [NEW_ROOT]
        assert str((tmp_path / f"dev/disk/by-uuid/{NEW_ROOT}").readlink()) == "../../vdb1"

    async def test_uefi(self, tmp_path: Path) -> None:
        """UEFI: grub-install by the distribution's name and at the removable path, no NVRAM;
        the ESP gets an fstab entry by its new UUID."""
        debian_tree(tmp_path, uefi=True)
        runner = RecordingRunner()
        await configure(LocalTree(tmp_path, runner), debian_prepared(tmp_path, uefi=True), LOG)
        common = ("grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi", "--no-nvram")
        assert runner.argvs[2:] == [
            (*common, "--bootloader-id=debian"),
            (*common, "--removable"),
            ("grub-mkconfig", "-o", "/boot/grub/grub.cfg"),
        ]
        assert "UUID=EF00-0001 /boot/efi vfat umask=0077 0 2" in (
            (tmp_path / "etc/fstab").read_text().splitlines()
        )


class TestUbuntu:
    async def test_netplan_and_partuuid(self, tmp_path: Path) -> None:
        """netplan: the source's file moved aside, one DHCP file (0600) written;
        GRUB_FORCE_PARTUUID commented out; the swap file's entry untouched."""
        ubuntu_tree(tmp_path)
        await configure(LocalTree(tmp_path, RecordingRunner()), ubuntu_prepared(tmp_path), LOG)
        netplan = tmp_path / "etc/netplan"
        assert sorted(os.listdir(netplan)) == [
            "50-cloud-init.yaml.smsagent.bak",
            "50-smsagent.yaml",
        ]
        assert stat.S_IMODE((netplan / "50-smsagent.yaml").stat().st_mode) == 0o600
        assert "dhcp4: true" in (netplan / "50-smsagent.yaml").read_text()
        dropin = (tmp_path / "etc/default/grub.d/40-force-partuuid.cfg").read_text()
        assert dropin == "# smsagent: was: GRUB_FORCE_PARTUUID=0b3c5a9e-01\n"
        assert "/swap.img\tnone\tswap\tsw\t0\t0" in (tmp_path / "etc/fstab").read_text()

    async def test_idempotent(self, tmp_path: Path) -> None:
        """The netplan step recognises its own file on a second run."""
        ubuntu_tree(tmp_path)
        prepared = ubuntu_prepared(tmp_path)
        await configure(LocalTree(tmp_path, RecordingRunner()), prepared, LOG)
        after = snapshot(tmp_path)
        second = await configure(LocalTree(tmp_path, RecordingRunner()), prepared, LOG)
        assert snapshot(tmp_path) == after and second.changed() == []


class TestRhel:
    async def test_files_and_commands(self, tmp_path: Path) -> None:
        """Rocky 9 on LVM: ifcfg and NetworkManager to DHCP, BLS options, dracut with VirtIO,
        grub2-install and grub2-mkconfig, autorelabel, LVM devices file moved aside."""
        rhel_tree(tmp_path)
        runner = RecordingRunner()
        report = await configure(LocalTree(tmp_path, runner), rhel_prepared(tmp_path), LOG)
        assert report.os_family == "rhel" and report.kernels == (KERNEL_RHEL,)
        assert runner.argvs == [
            ("dracut", "-f", f"/boot/initramfs-{KERNEL_RHEL}.img", KERNEL_RHEL),
            ("grub2-install", "--target=i386-pc", "/dev/vdb"),
            ("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"),
        ]
        dracut = (tmp_path / "etc/dracut.conf.d/smsagent-virtio.conf").read_text()
        assert 'add_drivers+=" virtio_blk virtio_scsi virtio_net virtio_pci "' in dracut
        assert (
            'BOOTPROTO="dhcp"'
            in (tmp_path / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text()
        )
        assert (tmp_path / "etc/sysconfig/network-scripts/ifcfg-lo").read_text() == (
            "DEVICE=lo\nIPADDR=127.0.0.1\n"
        )
        keyfile = tmp_path / "etc/NetworkManager/system-connections/ens3.nmconnection"
        assert "method=auto" in keyfile.read_text()
        assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
        assert os.listdir(keyfile.parent) == ["ens3.nmconnection"]
        entry = next((tmp_path / "boot/loader/entries").glob("*.conf")).read_text()
        assert f"options root=/dev/mapper/rl-root ro resume=UUID={NEW_SWAP} " in entry
        assert (tmp_path / ".autorelabel").exists()
        assert not (tmp_path / "etc/lvm/devices/system.devices").exists()
        assert (tmp_path / "etc/lvm/devices/system.devices.smsagent.bak").exists()

    async def test_local_unit_file_moved_aside_before_masking(self, tmp_path: Path) -> None:
        """A unit file at the mask's path is kept aside, then the mask takes its place."""
        rhel_tree(tmp_path)
        await configure(LocalTree(tmp_path, RecordingRunner()), rhel_prepared(tmp_path), LOG)
        unit = tmp_path / "etc/systemd/system/smsagent.service"
        assert str(unit.readlink()) == "/dev/null"
        kept = tmp_path / "etc/systemd/system/smsagent.service.smsagent.bak"
        assert "ExecStart=/opt/smsagent run" in kept.read_text()

    async def test_uefi_stub_and_removable_path(self, tmp_path: Path) -> None:
        """RHEL UEFI: no grub2-install; the ESP stub names /boot's new UUID; grub2-mkconfig
        writes /boot/grub2/grub.cfg; the shim is copied to EFI/BOOT/BOOTX64.EFI."""
        rhel_tree(tmp_path, uefi=True)
        runner = RecordingRunner()
        await configure(LocalTree(tmp_path, runner), rhel_prepared(tmp_path, uefi=True), LOG)
        assert runner.argvs[1:] == [("grub2-mkconfig", "-o", "/boot/grub2/grub.cfg")]
        stub = (tmp_path / "boot/efi/EFI/rocky/grub.cfg").read_text()
        assert f"--set=dev {NEW_BOOT}\n" in stub
        assert (tmp_path / "boot/efi/EFI/BOOT/BOOTX64.EFI").read_text() == "shim"
        assert (tmp_path / "boot/efi/EFI/BOOT/grubx64.efi").read_text() == "grub"

    async def test_idempotent(self, tmp_path: Path) -> None:
        """A second run on the RHEL UEFI tree changes nothing and adds no backup."""
        rhel_tree(tmp_path, uefi=True)
        prepared = rhel_prepared(tmp_path, uefi=True)
        await configure(LocalTree(tmp_path, RecordingRunner()), prepared, LOG)
        after, backups = snapshot(tmp_path), _backups(tmp_path)
        second = await configure(LocalTree(tmp_path, RecordingRunner()), prepared, LOG)
        assert snapshot(tmp_path) == after and _backups(tmp_path) == backups
        assert second.changed() == []


class TestErrors:
    async def test_initramfs_failure_is_sms_3102(self, tmp_path: Path) -> None:
        """A failed update-initramfs raises SMS.3102 with its stderr; binds are undone."""
        debian_tree(tmp_path)
        runner = RecordingRunner(failures={"update-initramfs": (1, "W: x\nE: no space left")})
        tree = LocalTree(tmp_path, runner)
        with pytest.raises(ConfigureError) as caught:
            await configure(tree, debian_prepared(tmp_path), LOG)
        assert caught.value.error_code == "SMS.3102"
        assert "update-initramfs -c -k" in caught.value.message
        assert "E: no space left" in caught.value.message
        assert not tree.bound and tree.bind_count == 1
        assert not os.listdir(tmp_path / "dev/disk/by-uuid")

    async def test_grub_failure(self, tmp_path: Path) -> None:
        """A failed grub2-install raises the agent's code naming the command."""
        rhel_tree(tmp_path)
        runner = RecordingRunner(failures={"grub2-install": (1, "grub2-install: error: disk")})
        with pytest.raises(ConfigureError) as caught:
            await configure(LocalTree(tmp_path, runner), rhel_prepared(tmp_path), LOG)
        assert caught.value.error_code == "SMSAGENT.CONFIGURE"
        assert "grub2-install --target=i386-pc /dev/vdb exited 1" in caught.value.message

    async def test_timeout_is_named(self, tmp_path: Path) -> None:
        """A command that timed out (status 124) says so."""
        rhel_tree(tmp_path)
        runner = RecordingRunner(failures={"dracut": (124, "")})
        with pytest.raises(ConfigureError, match="timed out"):
            await configure(LocalTree(tmp_path, runner), rhel_prepared(tmp_path), LOG)

    async def test_unsupported_os(self, tmp_path: Path) -> None:
        """A SUSE tree is refused before anything changes."""
        put(
            tmp_path,
            "/etc/os-release",
            'ID="sles"\nPRETTY_NAME="SUSE Linux Enterprise Server 15"\n',
        )
        put(tmp_path, "/etc/fstab", "/dev/sda1 / ext4 defaults 0 1\n")
        before = snapshot(tmp_path)
        with pytest.raises(ConfigureError, match="SUSE Linux Enterprise Server 15"):
            await configure(LocalTree(tmp_path, RecordingRunner()), ubuntu_prepared(tmp_path), LOG)
        assert snapshot(tmp_path) == before

    async def test_no_kernel(self, tmp_path: Path) -> None:
        """A tree without a kernel image matching its modules is refused."""
        ubuntu_tree(tmp_path)
        (tmp_path / "boot/vmlinuz-5.15.0-91-generic").unlink()
        with pytest.raises(ConfigureError, match="has no kernel"):
            await configure(LocalTree(tmp_path, RecordingRunner()), ubuntu_prepared(tmp_path), LOG)


class Stopped(Exception):
    pass


class TestCancel:
    async def test_stop_between_steps(self, tmp_path: Path) -> None:
        """The checkpoint is called between steps; raising there stops before the next one."""
        debian_tree(tmp_path)
        calls: list[int] = []

        def checkpoint() -> None:
            calls.append(1)
            if len(calls) == 3:  # before the third step (network)
                raise Stopped

        runner = RecordingRunner()
        with pytest.raises(Stopped):
            await configure(
                LocalTree(tmp_path, runner), debian_prepared(tmp_path), LOG, cancel=checkpoint
            )
        assert (tmp_path / "etc/fstab.smsagent.bak").exists()  # step two ran
        assert "inet static" in (tmp_path / "etc/network/interfaces").read_text()
        assert runner.argvs == []
