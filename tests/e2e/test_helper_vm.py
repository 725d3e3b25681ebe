"""The helper VM harness itself: a qemu (TCG) guest booted from the helper image, target disks
attached as virtio disks, reached over SSH on a loopback port.

What the migration tests will rely on: the guest sees the given loop devices as /dev/vdb, /dev/vdc
in order and at their sizes; its kernel has device-mapper and vfat (which the host's lacks), so
a GPT with an ESP and an LVM PV can be made, formatted and mounted there; and what the guest
wrote is on the host's loop devices after a clean shutdown. Also measured and reported: the image
build, boot-to-SSH under TCG, and rsync's throughput from the host into an ext4 in the guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import helpervm, targetdisks
from tests.support.blockdev import wait_for_nodes
from tests.support.helpervm import HelperImage, HelperVM, helper_vm
from tests.support.targetdisks import MIB, TargetDisks, probe, run, target_disks

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

ESP_TEXT = "written to the ESP by the helper VM\n"
LV_TEXT = "written to the LV by the helper VM\n"


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """Show a measurement in pytest's output, also without `-s` (and in the JUnit XML)."""
    if isinstance(request.node, pytest.Item):
        request.node.user_properties.append(("helper_vm", line))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with suspended:
        reporter.write_line(f"[helper vm] {line}")


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> HelperImage:
    """The helper image, built on first use; how long that took is reported."""
    reason = helpervm.missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    helpervm.sweep_stale()
    targetdisks.sweep_stale()
    started = time.monotonic()
    built = helpervm.helper_image()
    _report(request, f"helper image ready in {time.monotonic() - started:.1f} s ({built.disk})")
    return built


@pytest.fixture
def disks(tmp_path: Path, image: HelperImage) -> Iterator[TargetDisks]:
    """Blank sparse loop disks (`losetup --find --show --partscan`), detached after the test."""
    with target_disks(tmp_path) as made:
        yield made


def _lsblk(vm: HelperVM) -> dict[str, dict[str, str]]:
    text = vm.ssh("lsblk", "--json", "--bytes", "--nodeps", "--output", "NAME,SIZE,SERIAL").stdout
    return {row["name"]: row for row in json.loads(text)["blockdevices"]}


def test_disks_in_order_lvm_and_esp_written_through_to_the_loop_devices(
    tmp_path: Path, disks: TargetDisks, request: pytest.FixtureRequest
) -> None:
    first, second = disks.add(1024), disks.add(512)

    with helper_vm(tmp_path / "vm", [first, second]) as vm:
        _report(request, f"boot to SSH (TCG): {vm.boot_seconds:.1f} s")
        assert vm.guest_device(0) == "/dev/vdb"
        assert vm.guest_device(1) == "/dev/vdc"
        seen = _lsblk(vm)
        assert int(seen["vdb"]["size"]) == 1024 * MIB
        assert int(seen["vdc"]["size"]) == 512 * MIB
        assert (seen["vdb"]["serial"], seen["vdc"]["serial"]) == ("smstarget0", "smstarget1")
        assert vm.ssh("test", "-d", vm.root).returncode == 0

        vdb = vm.guest_device(0)
        vm.ssh(
            "sfdisk",
            "--quiet",
            vdb,
            input_text="label: gpt\nsize=64MiB, type=U\ntype=V\n",
        )
        vm.ssh("udevadm", "settle")
        vm.ssh("mkfs.vfat", "-n", "SMSESP", f"{vdb}1")
        vm.ssh("mkdir", "-p", f"{vm.root}/boot/efi")
        vm.ssh("mount", "-t", "vfat", f"{vdb}1", f"{vm.root}/boot/efi")
        vm.ssh("sh", "-c", f"cat >{vm.root}/boot/efi/hello.txt", input_text=ESP_TEXT)
        vm.ssh("umount", f"{vm.root}/boot/efi")

        vm.ssh("pvcreate", "--quiet", "--yes", f"{vdb}2")
        vm.ssh("vgcreate", "--quiet", "smshelpervg", f"{vdb}2")
        vm.ssh("lvcreate", "--quiet", "--yes", "--size", "200m", "--name", "root", "smshelpervg")
        vm.ssh("mkfs.ext4", "-q", "/dev/smshelpervg/root")
        vm.ssh("mount", "/dev/smshelpervg/root", vm.root)
        vm.ssh("sh", "-c", f"cat >{vm.root}/hello.txt", input_text=LV_TEXT)
        vm.ssh("umount", vm.root)
        # Where the LV's first extent lies on the PV, to read its file system from the host.
        pe_start = int(
            vm.ssh(
                "pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pe_start", f"{vdb}2"
            ).stdout.strip()
        )
        ranges = vm.ssh("lvs", "--noheadings", "-o", "seg_pe_ranges", "smshelpervg/root").stdout
        assert ranges.strip() == f"{vdb}2:0-49", ranges
        vm.ssh("vgchange", "--quiet", "-an", "smshelpervg")
        qemu_pid = vm.qemu_pid
        vm.shutdown()
        assert vm.qemu_pid is None

    assert qemu_pid is not None and not Path(f"/proc/{qemu_pid}").exists()
    assert not (tmp_path / "vm" / vm.name).exists()

    # The host reads what the VM wrote, straight from the loop device.
    run("blockdev", "--flushbufs", first)
    run("partx", "--update", first, check=False)
    esp, pv = f"{first}p1", f"{first}p2"
    wait_for_nodes(first, [esp, pv])
    assert probe(esp)["TYPE"] == "vfat"
    assert probe(esp)["LABEL"] == "SMSESP"
    assert probe(pv)["TYPE"] == "LVM2_member"
    mtype = subprocess.run(
        ["mtype", "-i", esp, "::/hello.txt"],
        capture_output=True,
        text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        timeout=30,
        check=True,
    )
    assert mtype.stdout.replace("\r\n", "\n") == ESP_TEXT
    lv_fs = f"{pv}?offset={pe_start}"
    assert (
        run("blkid", "-p", "-O", str(pe_start), "-o", "value", "-s", "TYPE", pv).strip() == "ext4"
    )
    assert run("debugfs", "-R", "cat /hello.txt", lv_fs) == LV_TEXT
    # The second disk was never written.
    assert probe(second) == {}


def test_a_boot_that_times_out_names_the_console_and_leaves_no_qemu(
    tmp_path: Path, image: HelperImage
) -> None:
    """A VM that never answers fails within its deadline with what its console said, and its
    qemu and files are gone: a hung boot must not hold the test or leak a process."""
    mine = f"{helpervm.PREFIX}{os.getpid()}x"
    started = time.monotonic()
    booting = helper_vm(tmp_path / "vm", [], boot_timeout_s=3)
    with pytest.raises(helpervm.HelperVMError, match="console") as failure, booting:
        pytest.fail("the VM cannot be up within 3 s under TCG")
    assert time.monotonic() - started < 60
    # The kernel's own lines, with their timestamps: the console was captured.
    assert re.search(r"\[\s*\d+\.\d+\] ", str(failure.value)), str(failure.value)
    assert [name for name in helpervm.running_vms().values() if name.startswith(mine)] == []
    assert list((tmp_path / "vm").iterdir()) == []


def test_sweep_stale_kills_the_qemu_of_a_dead_run(tmp_path: Path, image: HelperImage) -> None:
    """A qemu left by a killed test run (its pid, in the VM's name, is gone) is killed; one of a
    live run is not."""
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    idle = [helpervm.QEMU, "-accel", "tcg", "-machine", "none", "-nodefaults", "-display", "none"]
    stale = subprocess.Popen([*idle, "-name", f"{helpervm.PREFIX}{dead_pid}xdead"])
    live = subprocess.Popen([*idle, "-name", f"{helpervm.PREFIX}{os.getpid()}xlive"])
    try:
        assert not Path(f"/proc/{dead_pid}").exists()
        helpervm.sweep_stale()
        assert stale.wait(timeout=10) == -signal.SIGKILL
        assert live.poll() is None
    finally:
        for process in (stale, live):
            process.kill()
            process.wait(timeout=10)


def _make_files(directory: Path, total_bytes: int) -> int:
    """Incompressible files like a system's: mostly 1 MiB ones, some thousands of small ones."""
    directory.mkdir()
    small = directory / "small"
    small.mkdir()
    written = 0
    for index in range(2000):
        (small / f"{index:05}.dat").write_bytes(os.urandom(4096))
        written += 4096
    index = 0
    while written < total_bytes:
        (directory / f"big{index:04}.dat").write_bytes(os.urandom(MIB))
        written += MIB
        index += 1
    return written


def test_rsync_over_ssh_into_an_ext4_in_the_vm(
    tmp_path: Path, disks: TargetDisks, request: pytest.FixtureRequest
) -> None:
    """The throughput a whole migration into this VM would see (TCG: the guest's sshd and rsync
    run emulated), to judge which migrations fit a CI run."""
    disk = disks.add(1024)
    source = tmp_path / "source"
    total = _make_files(source, 200 * 1000 * 1000)

    with helper_vm(tmp_path / "vm", [disk]) as vm:
        _report(request, f"boot to SSH (TCG): {vm.boot_seconds:.1f} s")
        vm.ssh("mkfs.ext4", "-q", vm.guest_device(0))
        vm.ssh("mount", vm.guest_device(0), vm.root)
        started = time.monotonic()
        copied = subprocess.run(
            ["rsync", "-a", "-e", shlex.join(vm.ssh_argv()), f"{source}/", f"{vm.ip}:{vm.root}/"],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert copied.returncode == 0, copied.stderr
        copied_s = time.monotonic() - started
        vm.ssh("sync", timeout=300)
        synced_s = time.monotonic() - started
        listed = vm.ssh(
            "sh",
            "-c",
            f"find {vm.root} -type f | wc -l; du -sb --apparent-size {vm.root}/big0000.dat",
        )
        count, big = listed.stdout.splitlines()
        assert int(count) == 2000 + (total - 2000 * 4096) // MIB
        assert int(big.split()[0]) == MIB
        vm.ssh("umount", vm.root)
        vm.shutdown()

    megabytes = total / 1e6
    _report(
        request,
        f"rsync of {megabytes:.0f} MB ({int(count)} files) into the VM: {copied_s:.1f} s, "
        f"{megabytes / copied_s:.1f} MB/s; with the guest's sync {megabytes / synced_s:.1f} MB/s",
    )
