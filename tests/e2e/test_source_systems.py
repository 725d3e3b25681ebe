"""The source servers the migration tests start from, checked as a user would look at a disk.

Each layout is built once per module from the cached image (about 20 s each; the image itself
about a minute the first time) and inspected with the ordinary tools: sfdisk, blkid, mtools,
lvm. Booting is slow under TCG, so only `test_source_boots` boots, and only when asked with
SMSAGENT_BOOT_SOURCE_TESTS=1: CI boots the migrated targets, not the sources.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import qemuboot, sourcesys

BUILD_TIMEOUT_S = 900  # the first build of the cached image, then one layout
BOOT_TIMEOUT_S = 1200

pytestmark = [pytest.mark.root]


def _require_builder() -> None:
    reason = sourcesys.missing_requirements()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's disk images and mounted trees live; a killed run's leftovers go first."""
    path = tmp_path_factory.mktemp("sourcesys")
    if os.geteuid() == 0:
        sourcesys.sweep_stale([path.parent])
    return path


@pytest.fixture(scope="module", params=sourcesys.LAYOUTS)
def source(request: pytest.FixtureRequest, workdir: Path) -> Iterator[sourcesys.SourceSystem]:
    """One built source layout, mounted, shared by the module's tests; undone after them."""
    _require_builder()
    with sourcesys.source_system(request.param, workdir) as built:
        yield built


def tool(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def blkid(device: str) -> dict[str, str]:
    out = tool("blkid", "-p", "-o", "export", device)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def fstab_entries(source: sourcesys.SourceSystem) -> dict[str, tuple[str, str]]:
    """Mount point (or `[SWAP]`) -> (spec, fstype) of every fstab line."""
    entries = {}
    for line in source.fstab.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        mount_point = "[SWAP]" if fields[2] == "swap" else fields[1]
        entries[mount_point] = (fields[0], fields[2])
    return entries


EXPECTED = {
    # layout: (table, [(mount point or None, fstype, partition type)])
    "mbr-bios": ("dos", [("/boot", "ext4", "83"), ("/", "ext4", "83"), ("[SWAP]", "swap", "82")]),
    "gpt-uefi": (
        "gpt",
        [("/boot/efi", "vfat", sourcesys.ESP_GUID), ("/", "ext4", sourcesys.LINUX_GUID)],
    ),
    "gpt-bios-lvm": (
        "gpt",
        [(None, None, sourcesys.BIOS_BOOT_GUID), (None, "LVM2_member", sourcesys.LVM_GUID)],
    ),
}


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_partition_table_is_the_layouts(source: sourcesys.SourceSystem) -> None:
    """The disk has the table type and the partitions (count, types, order) of its layout."""
    table, parts = EXPECTED[source.layout]
    dump = json.loads(tool("sfdisk", "--json", source.disks[0]))["partitiontable"]
    assert dump["label"] == table
    assert [p["type"].upper() for p in dump["partitions"]] == [type_ for _, _, type_ in parts]
    if source.layout == "mbr-bios":
        assert dump["partitions"][0].get("bootable") is True


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_volumes_match_what_blkid_sees(source: sourcesys.SourceSystem) -> None:
    """The description the migration tests turn into a target layout is what is on the disk."""
    for volume in source.volumes:
        info = blkid(volume.device)
        assert info.get("TYPE") == volume.fstype, volume
        if volume.uuid is not None:
            assert info.get("UUID") == volume.uuid, volume
        size = int(tool("blockdev", "--getsize64", volume.device))
        assert size == volume.size_bytes, volume
    by_mount = {v.mount_point: v.fstype for v in source.volumes if v.mount_point}
    _, parts = EXPECTED[source.layout]
    for mount_point, fstype, _ in parts:
        if mount_point is not None:
            assert by_mount[mount_point] == fstype
    if source.layout == "gpt-bios-lvm":
        assert by_mount == {"/": "ext4", "/var": "xfs"}


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_fstab_names_every_volume_by_uuid(source: sourcesys.SourceSystem) -> None:
    """Every mounted volume and swap is in fstab by its UUID, as the Debian installer writes."""
    entries = fstab_entries(source)
    mounted = [v for v in source.volumes if v.mount_point]
    assert sorted(entries) == sorted(v.mount_point for v in mounted)
    for volume in mounted:
        assert entries[volume.mount_point] == (f"UUID={volume.uuid}", volume.fstype)


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_tree_is_mounted_in_mount_point_order(source: sourcesys.SourceSystem) -> None:
    """The agent reads the source from `root`: every file system is mounted there."""
    for volume in source.volumes:
        if volume.mount_point and volume.mount_point != "[SWAP]":
            target = source.root / volume.mount_point.lstrip("/")
            found = tool("findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(target)).strip()
            assert found == volume.device, volume
    assert (source.root / "etc" / "hostname").read_text().strip() == sourcesys.HOSTNAME


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_kernel_initrd_and_grub_config(source: sourcesys.SourceSystem) -> None:
    """A kernel with its initramfs, and a grub.cfg that boots it on the serial console."""
    version = source.kernel_version
    boot = source.root / "boot"
    assert (boot / f"vmlinuz-{version}").stat().st_size > 1_000_000
    assert (boot / f"initrd.img-{version}").stat().st_size > 1_000_000
    grub_cfg = (boot / "grub" / "grub.cfg").read_text()
    root = source.volume("/")
    if root.kind == "lv":
        # What grub-mkconfig writes for a root LV, and GRUB must read LVM to find the kernel.
        assert f"root=/dev/mapper/{sourcesys._dm_name(root.vg or '', 'root')} " in grub_cfg
        assert "insmod lvm" in grub_cfg
    else:
        assert f"root=UUID={root.uuid} " in grub_cfg
    assert "console=ttyS0,115200n8" in grub_cfg
    assert "terminal_output serial" in grub_cfg
    assert "quiet" not in grub_cfg.split("### BEGIN /etc/grub.d/10_linux ###")[1]


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_initramfs_can_assemble_the_root(source: sourcesys.SourceSystem) -> None:
    """The initramfs carries what mounting the root needs: virtio, ext4, and lvm for an LV."""
    with sourcesys.chroot_mounts(source.root):
        listing = sourcesys.chroot(
            source.root, "lsinitramfs", f"/boot/initrd.img-{source.kernel_version}"
        )
    assert "virtio_blk.ko" in listing
    assert "/ext4.ko" in listing
    if source.layout == "gpt-bios-lvm":
        assert "sbin/lvm" in listing


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("source", ["mbr-bios", "gpt-bios-lvm"], indirect=True)
def test_bios_boot_code_is_on_the_disk(source: sourcesys.SourceSystem) -> None:
    """BIOS layouts: GRUB's boot code in the MBR and its core image behind it."""
    with open(source.disks[0], "rb") as disk:
        head = disk.read(1024 * 1024)
    assert head[510:512] == b"\x55\xaa"
    assert head[:440].strip(b"\0"), "no boot code in the MBR"
    assert b"GRUB" in head[:512]
    if source.layout == "mbr-bios":
        # core.img is embedded in the gap before the first partition (sector 1 on).
        assert head[512 : 64 * 1024].strip(b"\0"), "no core image after the MBR"
    else:
        bios_grub = source.volumes[0]
        with open(bios_grub.device, "rb") as part:
            assert part.read(64 * 1024).strip(b"\0"), "no core image in the bios_grub partition"
    assert (source.root / "boot/grub/i386-pc/core.img").exists()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("source", ["gpt-uefi"], indirect=True)
def test_esp_has_the_removable_and_debian_loaders(
    source: sourcesys.SourceSystem, tmp_path: Path
) -> None:
    """UEFI: \\EFI\\BOOT\\BOOTX64.EFI (found without NVRAM) and \\EFI\\debian, readable through
    the fusefat mount the agent will read the source's /boot/efi from."""
    esp = source.volume("/boot/efi")
    for directory, loader in (("EFI/BOOT", "BOOTX64.EFI"), ("EFI/debian", "grubx64.efi")):
        listing = tool("mdir", "-b", "-i", esp.device, f"::/{directory}")
        assert f"::/{directory}/{loader}".upper() in listing.upper(), listing
    copy = tmp_path / "BOOTX64.EFI"
    tool("mcopy", "-i", esp.device, "::/EFI/BOOT/BOOTX64.EFI", str(copy))
    mounted = source.root / "boot/efi/EFI/BOOT/BOOTX64.EFI"
    assert mounted.stat().st_size > 100_000
    assert mounted.read_bytes() == copy.read_bytes()
    fsck = subprocess.run(["fsck.vfat", "-n", esp.device], capture_output=True, check=False)
    assert fsck.returncode == 0, fsck.stdout


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("source", ["gpt-bios-lvm"], indirect=True)
def test_lvm_metadata_describes_the_lvs(source: sourcesys.SourceSystem) -> None:
    """LVM layout: the PV holds VG vgsrc with LVs root and var at the offsets the tree uses."""
    pv = next(v for v in source.volumes if v.fstype == "LVM2_member")
    lvm = sourcesys._Lvm(pv.device)
    names = sorted(name for name, _, _ in lvm.lvs())
    assert names == ["root", "var"]
    sizes = {name: size for name, _, size in lvm.lvs()}
    for volume in source.volumes:
        if volume.kind == "lv":
            assert volume.vg == "vgsrc"
            assert sizes[volume.name.split("/")[1]] == volume.size_bytes


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_agent_stand_in_and_network_fixtures(source: sourcesys.SourceSystem) -> None:
    """What the target's configure step must change: the agent service, static network,
    persistent-net rule and cloud-init config are all present on the source."""
    etc = source.root / "etc"
    wants = etc / "systemd/system/multi-user.target.wants/smsagent.service"
    assert os.readlink(wants) == "/etc/systemd/system/smsagent.service"
    assert (etc / "smsagent/smsagent.env").exists()
    assert (source.root / "var/lib/smsagent/task.json").exists()
    assert "inet static" in (etc / "network/interfaces").read_text()
    assert (etc / "udev/rules.d/70-persistent-net.rules").exists()
    assert (etc / "cloud/cloud.cfg").exists()
    bootcheck = etc / "systemd/system/multi-user.target.wants/smsagent-bootcheck.service"
    assert bootcheck.is_symlink()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_cleanup_leaves_nothing_behind(tmp_path: Path) -> None:
    """After the context, no loop device, mount or image of the layout is left."""
    _require_builder()
    with sourcesys.source_system("gpt-uefi", tmp_path) as built:
        images, root = list(built.images), built.root
    loops = json.loads(tool("losetup", "--json", "--list") or '{"loopdevices": []}')
    backing = {loop.get("back-file") for loop in loops.get("loopdevices", [])}
    assert not any(str(image) in (back or "") for image in images for back in backing)
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    assert not any(image.exists() for image in images)
    assert not root.exists()


@pytest.mark.timeout(30)
def test_bootcheck_lines_are_parsed() -> None:
    """The harness turns the guest's BOOTCHECK lines into fields, also amid console noise."""
    checks = qemuboot.BootChecks()
    lines = [
        "BOOTCHECK begin",
        "[   12.3] random kernel line BOOTCHECK system=degraded",
        "BOOTCHECK failed=networking.service,foo.mount",
        "BOOTCHECK findmnt-verify rc=1",
        "BOOTCHECK findmnt-verify | /var",
        "BOOTCHECK root=/dev/vda2 uuid=abcd fstype=ext4",
        "BOOTCHECK mount target=/boot source=/dev/vda1 uuid=1234 fstype=ext4",
        "BOOTCHECK swap source=/dev/vda3 uuid=5678 size_kib=131068",
        "BOOTCHECK smsagent active=inactive enabled=not-found",
        "BOOTCHECK marker /etc/with space/file e3b0c442",
        "BOOTCHECK cmdline=BOOT_IMAGE=/vmlinuz root=UUID=abcd ro",
        "BOOTCHECK done",
    ]
    for line in lines:
        match = qemuboot.BOOTCHECK_RE.search(line)
        assert match is not None
        checks.add(match.group(1))
    assert checks.begun and checks.done
    assert checks.system == "degraded"
    assert checks.failed == ["networking.service", "foo.mount"]
    assert checks.findmnt_verify_rc == 1
    assert checks.findmnt_verify_output == ["/var"]
    assert checks.root == {"source": "/dev/vda2", "uuid": "abcd", "fstype": "ext4"}
    assert checks.mounts["/boot"]["uuid"] == "1234"
    assert checks.swaps == [{"source": "/dev/vda3", "uuid": "5678", "size_kib": "131068"}]
    assert checks.smsagent == {"active": "inactive", "enabled": "not-found"}
    assert checks.markers == {"/etc/with space/file": "e3b0c442"}
    assert checks.facts["cmdline"] == "BOOT_IMAGE=/vmlinuz root=UUID=abcd ro"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_blank_disk_ends_as_quiet(tmp_path: Path) -> None:
    """A disk without boot code hangs the firmware without a word: the harness says `quiet`
    after the quiet limit instead of waiting for the whole timeout."""
    reason = qemuboot.missing_requirements("bios")
    if reason is not None:
        pytest.skip(reason)
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    result = qemuboot.boot([blank], "bios", timeout_s=90, quiet_limit_s=10)
    assert result.reason == "quiet", qemuboot.failure_message(result)
    assert result.duration_s < 60
    assert not result.checks.begun


BOOT_OPT_IN = "SMSAGENT_BOOT_SOURCE_TESTS"


@pytest.mark.slow
@pytest.mark.timeout(BOOT_TIMEOUT_S)
@pytest.mark.parametrize("layout", ["mbr-bios", "gpt-uefi", "gpt-bios-lvm"])
def test_source_boots(layout: str, tmp_path: Path) -> None:
    """The source itself boots cleanly under qemu, with its agent running: the baseline the
    migrated targets are held to. Opt-in (SMSAGENT_BOOT_SOURCE_TESTS=1): CI boots targets."""
    if os.environ.get(BOOT_OPT_IN) != "1":
        pytest.skip(f"booting sources is opt-in: set {BOOT_OPT_IN}=1")
    _require_builder()
    with sourcesys.source_system(layout, tmp_path) as built:
        reason = qemuboot.missing_requirements(built.firmware)
        if reason is not None:
            pytest.skip(reason)
        built.unmount_tree()  # never run a VM on file systems the host has mounted
        result = qemuboot.boot(
            built.disks, built.firmware, snapshot=True, log_path=tmp_path / "console.log"
        )
    message = qemuboot.failure_message(result)
    checks = result.checks
    assert result.reason == "done", message
    assert checks.system == "running", message
    assert checks.failed == [], message
    assert checks.findmnt_verify_rc == 0, message
    assert checks.smsagent == {"active": "active", "enabled": "enabled"}, message
    assert checks.root["uuid"] == built.volume("/").uuid, message
    assert checks.facts["hostname"] == sourcesys.HOSTNAME, message
    expected_swaps = [v.uuid for v in built.volumes if v.fstype == "swap"]
    assert [swap["uuid"] for swap in checks.swaps] == expected_swaps, message
