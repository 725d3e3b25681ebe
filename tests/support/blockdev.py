"""Real block-device layouts for inventory tests: loop disks, file systems, mounts, LVM, btrfs.

Every object made here carries the `smsinvtest` prefix and is undone by `BlockLab.close()`, which
keeps going when one step fails; `sweep_stale()` removes what a killed run left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

PREFIX = "smsinvtest"
_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "LVM_SUPPRESS_FD_WARNINGS": "1",
}
_TOOLS = (
    "losetup",
    "sfdisk",
    "partx",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.vfat",
    "mkfs.btrfs",
    "btrfs",
    "pvcreate",
    "vgcreate",
    "lvcreate",
    "vgremove",
    "blkid",
    "lsblk",
)
# Without device-mapper, LVs exist only in the metadata: created inactive, never zeroed.
_NO_ACTIVATION = ("--config", "global { activation = 0 }", "--activate", "n", "--zero", "n")
MIB = 1024 * 1024


def run(*argv: str, check: bool = True) -> str:
    """Run a tool with the C locale; raise with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, env=_ENV, timeout=60, check=False)
    if check and done.returncode != 0:
        msg = f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
        raise RuntimeError(msg)
    return done.stdout


def missing_requirements() -> Optional[str]:
    """Why real block devices cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for loop devices and mounts"
    missing = [tool for tool in _TOOLS if shutil.which(tool, path=_ENV["PATH"]) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control"
    if "vfat" not in kernel_file_systems() and shutil.which("fusefat", path=_ENV["PATH"]) is None:
        return "the kernel cannot mount vfat and fusefat is missing"
    return None


def device_mapper_available() -> bool:
    """Whether LVs can be activated (the kernel has device-mapper)."""
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def kernel_file_systems() -> set[str]:
    """The file system types this kernel can mount."""
    text = Path("/proc/filesystems").read_text()
    return {line.split()[-1] for line in text.splitlines() if line.strip()}


@dataclass(frozen=True)
class Partition:
    """One partition to create: size in MiB and the sfdisk type (`L`, `U`, `8e`, `83`...)."""

    size_mib: int
    type_code: str


@dataclass(frozen=True)
class LoopDisk:
    path: str
    image: Path
    partitions: tuple[str, ...]

    @property
    def kname(self) -> str:
        return Path(self.path).name


class BlockLab:
    """Builds a layout step by step and records how to undo each step."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # The PID in every name lets sweep_stale() tell a dead run's leftovers from a live run's.
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
        self.root = workdir / f"{self.tag}-root"  # the test root every mount goes under
        self._undo: list[tuple[str, Callable[[], object]]] = []

    def loop_disk(
        self, label: str, size_mib: int, table: str, parts: Sequence[Partition]
    ) -> LoopDisk:
        """A sparse image attached as a loop device, partitioned with sfdisk (`gpt` or `dos`)."""
        image = self.workdir / f"{self.tag}-{label}.img"
        with open(image, "wb") as handle:
            handle.truncate(size_mib * MIB)
        self._undo.append((f"remove {image}", lambda: image.unlink(missing_ok=True)))
        path = run("losetup", "--find", "--show", "--partscan", str(image)).strip()
        self._undo.append((f"detach {path}", lambda: run("losetup", "--detach", path)))
        _sfdisk([path], f"label: {table}\n{_script(parts)}")
        names = tuple(f"{path}p{number}" for number in range(1, len(parts) + 1))
        wait_for_nodes(path, names)
        return LoopDisk(path, image, names)

    def add_partition(self, disk: LoopDisk, part: Partition) -> LoopDisk:
        """Append a partition in the free space after the last one."""
        # A mounted partition makes the kernel refuse a full re-read; partx adds the new one.
        _sfdisk(["--append", "--no-reread", "--no-tell-kernel", disk.path], _script([part]))
        names = (*disk.partitions, f"{disk.path}p{len(disk.partitions) + 1}")
        wait_for_nodes(disk.path, names)
        return LoopDisk(disk.path, disk.image, names)

    def mkfs(self, device: str, fstype: str) -> None:
        """Make a file system; quiet, forced, default sizes."""
        commands = {
            "ext4": ("mkfs.ext4", "-q", "-F"),
            "xfs": ("mkfs.xfs", "-q", "-f"),
            "vfat": ("mkfs.vfat",),
            "btrfs": ("mkfs.btrfs", "-q", "-f"),
        }
        run(*commands[fstype], device)
        if fstype == "btrfs":
            self._undo.append((f"forget {device}", lambda: _forget_btrfs(device)))

    def mount(self, device: str, name: str, fstype: str, options: str = "") -> Path:
        """Mount under the lab's root; vfat through FUSE when the kernel cannot mount it."""
        mount_point = self.root / name
        mount_point.mkdir(parents=True, exist_ok=True)
        if fstype == "vfat" and "vfat" not in kernel_file_systems():
            # fsname makes mountinfo name the device, as a kernel mount would.
            run("fusefat", "-o", f"rw+,fsname={device}", device, str(mount_point))
        else:
            run(
                "mount",
                "-t",
                fstype,
                *(("-o", options) if options else ()),
                device,
                str(mount_point),
            )
        self._undo.append((f"unmount {mount_point}", lambda: _unmount(mount_point)))
        return mount_point

    def volume_group(self, pvs: Sequence[str]) -> str:
        """A VG named after the lab's tag on the given PVs."""
        name = f"{self.tag}vg"
        for pv in pvs:
            run("pvcreate", "--quiet", "--yes", pv)
            self._undo.append((f"pvremove {pv}", lambda pv=pv: run("pvremove", "-q", "-y", pv)))
        run("vgcreate", "--quiet", name, *pvs)
        self._undo.append((f"vgremove {name}", lambda: run("vgremove", "-q", "-f", name)))
        return name

    def logical_volume(self, vg: str, name: str, size_mib: int) -> None:
        """An LV, active when device-mapper exists, else only in the metadata."""
        extra = () if device_mapper_available() else _NO_ACTIVATION
        run("lvcreate", "--quiet", "--yes", *extra, "--size", f"{size_mib}m", "--name", name, vg)

    def close(self) -> None:
        """Undo every step, newest first; report all failures together at the end."""
        failures = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                failures.append(f"{what}: {exc}")
        if failures:
            raise RuntimeError("cleanup failed: " + "; ".join(failures))


def _script(parts: Sequence[Partition]) -> str:
    return "".join(f"size={p.size_mib}MiB, type={p.type_code}\n" for p in parts)


def _sfdisk(args: Sequence[str], script: str) -> None:
    done = subprocess.run(
        ["sfdisk", "--quiet", *args],
        input=script,
        text=True,
        env=_ENV,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        msg = f"sfdisk {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
        raise RuntimeError(msg)


def wait_for_nodes(disk: str, names: Sequence[str], timeout_s: float = 10.0) -> None:
    """Wait until the kernel made the partition nodes; ask it again if they are slow."""
    deadline = time.monotonic() + timeout_s
    while not all(Path(name).exists() for name in names):
        if time.monotonic() > deadline:
            msg = f"partition nodes of {disk} did not appear: {names}"
            raise RuntimeError(msg)
        run("partx", "--update", disk, check=False)
        run("partx", "--add", disk, check=False)
        time.sleep(0.05)


def sweep_stale() -> None:
    """Remove mounts, VGs and loop devices that a killed run left behind.

    Only objects whose creating process is gone are touched, so concurrent runs are safe.
    """
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        mount_point = line.split()[4]
        if _is_stale(mount_point):
            _unmount(Path(mount_point))
    report = json.loads(run("vgs", "--reportformat", "json", "-o", "vg_name", check=False) or "{}")
    for row in (report.get("report") or [{}])[0].get("vg", []):
        if _is_stale(row["vg_name"]):
            run("vgremove", "-q", "-f", row["vg_name"], check=False)
    loops = json.loads(run("losetup", "--json", "--list", check=False) or "{}")
    for loop in loops.get("loopdevices", []):
        if _is_stale(loop.get("back-file") or ""):
            _forget_btrfs_all(loop["name"])
            run("losetup", "--detach", loop["name"], check=False)


def _is_stale(name: str) -> bool:
    match = re.search(PREFIX + r"(\d+)x", name)
    return match is not None and not Path(f"/proc/{match.group(1)}").exists()


def _unmount(mount_point: Path) -> None:
    run("umount", str(mount_point), check=False)
    if _is_mounted(mount_point):
        run("umount", "--lazy", str(mount_point))


def _is_mounted(mount_point: Path) -> bool:
    text = Path("/proc/self/mountinfo").read_text()
    return any(line.split()[4] == str(mount_point) for line in text.splitlines())


def _forget_btrfs(device: str) -> None:
    # The kernel remembers scanned btrfs members; forget them so no stale entry outlives the loop.
    run("btrfs", "device", "scan", "--forget", device, check=False)


def _forget_btrfs_all(disk: str) -> None:
    for node in Path("/dev").glob(f"{Path(disk).name}p*"):
        _forget_btrfs(str(node))
