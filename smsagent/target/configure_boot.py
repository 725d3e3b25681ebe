"""Boot on the target's hardware: GRUB's settings and menu, VirtIO in the initramfs, GRUB itself.

The file parts (`/etc/default/grub`, BLS entries, grubenv, the initramfs module lists) run
without a chroot; the commands run in the chroot of the tree with /dev, /proc, /sys and /run
bound (`tree.system_dirs_bound`), for every kernel of the tree, never the helper's.

grub-mkconfig writes `root=UUID=<uuid>` only if `/dev/disk/by-uuid/<uuid>` exists, else
`root=/dev/vdb2`, the helper's name for a disk that has another name once the target boots as
itself. Its `GRUB_DEVICE` cannot be passed in (grub-mkconfig sets it from grub-probe), so where
the helper's udev did not make the link, `device_links` makes it in the bound /dev for the
duration of the commands: only for the target's own volumes, and only where it is missing.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Optional

from smsagent.target.configure_cmdline import (
    BootIdentity,
    is_efi_stub,
    rewrite_bls_entry,
    rewrite_default_grub,
    rewrite_efi_stub,
    rewrite_grubenv,
)
from smsagent.target.configure_files import decode, edit_files, write_if_changed
from smsagent.target.configure_os import OsFamily, OsInfo
from smsagent.target.configure_report import (
    CONFIGURE_FAILED,
    INITRD_FAILED,
    Action,
    CommandRun,
    ConfigureReport,
    command_failure,
)
from smsagent.target.layout import BootMode
from smsagent.target.prepared import PreparedTarget, PreparedVolume
from smsagent.target.tree import EntryKind, TargetTree

VIRTIO_MODULES: Final = (
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_pci",
    "virtio_ring",
    "virtio",
)
INITRAMFS_MODULES: Final = "/etc/initramfs-tools/modules"
DRACUT_CONF: Final = "/etc/dracut.conf.d/smsagent-virtio.conf"
DRACUT_TEXT: Final = (
    "# Written by smsagent: the VirtIO drivers of the target's hardware in every initramfs.\n"
    'add_drivers+=" virtio_blk virtio_scsi virtio_net virtio_pci "\n'
)
# A slow target takes about a minute per initramfs; GRUB's commands are quicker.
INITRAMFS_TIMEOUT_S: Final = 600.0
GRUB_TIMEOUT_S: Final = 300.0
# os-prober would put the helper's own disks in the menu; Debian asks nothing.
CHROOT_ENV: Final = {"GRUB_DISABLE_OS_PROBER": "true", "DEBIAN_FRONTEND": "noninteractive"}
_ESP_MOUNT_POINTS: Final = ("/boot/efi", "/efi")
_GRUBENV_PATHS: Final = ("/boot/grub2/grubenv", "/boot/grub/grubenv")


def rewrite_initramfs_modules(text: str) -> str:
    """initramfs-tools' `modules` list with every VirtIO driver (one a line, missing ones only)."""
    present = {line.split()[0] for line in text.splitlines() if line.split()[:1] != []}
    missing = [m for m in VIRTIO_MODULES if m not in present]
    if not missing:
        return text
    lead = text if not text or text.endswith("\n") else text + "\n"
    return (
        lead + "# smsagent: VirtIO drivers of the target's hardware\n" + "\n".join(missing) + "\n"
    )


async def run_checked(
    tree: TargetTree,
    report: ConfigureReport,
    log: Any,
    argv: Sequence[str],
    *,
    error_code: str,
    timeout_s: float,
) -> None:
    """Run a command in the chroot; record it; a failure raises `ConfigureError(error_code)`."""
    log.info("configure_command", argv=list(argv))
    result = await tree.run_chroot(argv, timeout_s=timeout_s, env=CHROOT_ENV)
    report.commands.append(CommandRun(tuple(argv), result.returncode, result.stderr_tail))
    if not result.ok:
        raise command_failure(error_code, argv, result.returncode, result.stderr_tail)


def esp_mount_point(prepared: PreparedTarget) -> Optional[str]:
    """Where the target's EFI system partition is mounted, if it has one."""
    for volume in prepared.volumes:
        if volume.fstype == "vfat" and volume.mount_point in _ESP_MOUNT_POINTS:
            return volume.mount_point
    return None


def boot_volume(prepared: PreparedTarget) -> Optional[PreparedVolume]:
    """The file system holding `/boot`: its own, else the root's."""
    return prepared.by_mount_point("/boot") or prepared.by_mount_point("/")


async def update_grub_settings(
    tree: TargetTree, report: ConfigureReport, ident: BootIdentity
) -> None:
    """`/etc/default/grub` (and `grub.d/*.cfg`), BLS entries and grubenv by the target's disks."""
    edits = {"/etc/default/grub": lambda t: rewrite_default_grub(t, ident, main=True)}
    for path in await tree.glob("/etc/default/grub.d/*.cfg"):
        edits[path] = lambda t: rewrite_default_grub(t, ident, main=False)
    await edit_files(tree, report, edits, "kernel command line by the target's disks")
    entries = await tree.glob("/boot/loader/entries/*.conf")
    await edit_files(
        tree,
        report,
        {p: (lambda t: rewrite_bls_entry(t, ident)) for p in entries},
        "boot entry's root= and resume= by the target's disks",
    )
    envs = await _distinct_files(tree, _GRUBENV_PATHS)
    await edit_files(
        tree, report, {p: (lambda t: rewrite_grubenv(t, ident)) for p in envs}, "kernelopts"
    )


async def _distinct_files(tree: TargetTree, paths: Sequence[str]) -> list[str]:
    """The paths that exist, one per file they lead to (grubenv is often a link to another)."""
    seen: dict[str, str] = {}
    for path in paths:
        entry = await tree.stat(path)
        if entry is not None and entry.kind is EntryKind.FILE:
            seen.setdefault(await tree.resolve(path), path)
    return list(seen.values())


async def add_virtio_drivers(tree: TargetTree, report: ConfigureReport, os_info: OsInfo) -> None:
    """Name the VirtIO drivers in the initramfs configuration of the tree's family."""
    detail = "VirtIO drivers in the initramfs"
    if os_info.family is OsFamily.DEBIAN:
        old = (await tree.read_files([INITRAMFS_MODULES]))[INITRAMFS_MODULES]
        new = rewrite_initramfs_modules(decode(old) if old is not None else "")
        await write_if_changed(tree, report, INITRAMFS_MODULES, old, new, detail)
    else:
        old = (await tree.read_files([DRACUT_CONF]))[DRACUT_CONF]
        await write_if_changed(tree, report, DRACUT_CONF, old, DRACUT_TEXT, detail)


async def rebuild_initramfs(
    tree: TargetTree, report: ConfigureReport, log: Any, os_info: OsInfo
) -> None:
    """A new initramfs for every kernel of the tree.

    Raises:
        ConfigureError: SMS.3102, naming the command and the end of its stderr.
    """
    for version in os_info.kernels:
        if os_info.family is OsFamily.DEBIAN:
            exists = await tree.lstat(f"/boot/initrd.img-{version}") is not None
            argv = ["update-initramfs", "-u" if exists else "-c", "-k", version]
        else:
            argv = ["dracut", "-f", f"/boot/initramfs-{version}.img", version]
        await run_checked(
            tree, report, log, argv, error_code=INITRD_FAILED, timeout_s=INITRAMFS_TIMEOUT_S
        )


@contextlib.asynccontextmanager
async def device_links(tree: TargetTree, prepared: PreparedTarget) -> AsyncIterator[list[str]]:
    """`/dev/disk/by-uuid/<uuid>` for each of the target's volumes that lacks it, in the bound
    /dev, for the block; the links made here are removed after it."""
    made: list[str] = []
    try:
        for volume in prepared.volumes:
            link = f"/dev/disk/by-uuid/{volume.uuid}"
            if await tree.stat(link) is not None:
                continue
            if await tree.lstat(link) is not None:
                await tree.remove(link)  # dangling: it names a device that is gone
            await tree.symlink(link, volume.device, make_parents=True)
            made.append(link)
        yield made
    finally:
        for link in made:
            await tree.remove(link)


async def _rhel_efi_config(
    tree: TargetTree,
    report: ConfigureReport,
    ident: BootIdentity,
    prepared: PreparedTarget,
    esp: str,
    os_info: OsInfo,
) -> str:
    """Where grub2-mkconfig writes on a RHEL-family UEFI target; the ESP's stub (RHEL 9) gets
    the target's UUID, and the removable-media path a loader if it has none."""
    configs = [p for p in await tree.glob(f"{esp}/EFI/*/grub.cfg") if "/EFI/BOOT/" not in p.upper()]
    efi_dir = posixpath.dirname(configs[0]) if configs else f"{esp}/EFI/{os_info.efi_id}"
    await _removable_loader(tree, report, esp, efi_dir)
    config = f"{efi_dir}/grub.cfg"
    data = (await tree.read_files([config]))[config]
    boot = boot_volume(prepared)
    if data is None or not is_efi_stub(decode(data)) or boot is None:
        return config
    new = rewrite_efi_stub(decode(data), ident, boot.uuid)
    await write_if_changed(tree, report, config, data, new, "hands over to /boot/grub2/grub.cfg")
    return "/boot/grub2/grub.cfg"


async def _removable_loader(
    tree: TargetTree, report: ConfigureReport, esp: str, efi_dir: str
) -> None:
    """`EFI/BOOT/BOOTX64.EFI` (what firmware without a boot entry starts) from the
    distribution's shim, with its GRUB beside it, unless the ESP has one."""
    fallback = f"{esp}/EFI/BOOT/BOOTX64.EFI"
    if await tree.stat(fallback) is not None:
        return
    for loader in ("shimx64.efi", "grubx64.efi"):
        source = f"{efi_dir}/{loader}"
        if await tree.stat(source) is None:
            continue
        await tree.copy_file(source, fallback, make_parents=True)
        report.add(
            fallback, Action.CREATED, f"a copy of {source} for firmware without boot entries"
        )
        grub = f"{efi_dir}/grubx64.efi"
        if loader == "shimx64.efi" and await tree.stat(grub) is not None:
            beside = f"{esp}/EFI/BOOT/grubx64.efi"
            if await tree.lstat(beside) is None:
                await tree.copy_file(grub, beside)
                report.add(beside, Action.CREATED, "the GRUB the shim at EFI/BOOT starts")
        return


def grub_install_commands(os_info: OsInfo, prepared: PreparedTarget) -> list[list[str]]:
    """grub-install's runs: the boot disk's MBR (BIOS), or the ESP by the distribution's
    name and at the removable-media path, without touching the helper's NVRAM (UEFI).

    RHEL-family UEFI targets get none: their signed shim and GRUB are packaged files in the
    ESP, copied with it (grub2-install refuses to replace them for Secure Boot).
    """
    if os_info.family is OsFamily.RHEL:
        if prepared.boot_mode is BootMode.UEFI:
            return []
        return [["grub2-install", "--target=i386-pc", prepared.boot_disk]]
    if prepared.boot_mode is BootMode.BIOS:
        return [["grub-install", "--target=i386-pc", prepared.boot_disk]]
    esp = esp_mount_point(prepared) or "/boot/efi"
    common = ["grub-install", "--target=x86_64-efi", f"--efi-directory={esp}", "--no-nvram"]
    return [[*common, f"--bootloader-id={os_info.efi_id}"], [*common, "--removable"]]


async def install_grub(
    tree: TargetTree,
    report: ConfigureReport,
    log: Any,
    os_info: OsInfo,
    prepared: PreparedTarget,
    ident: BootIdentity,
) -> None:
    """GRUB installed for the target's firmware and its menu made for the target's disks.

    Raises:
        ConfigureError: SMSAGENT.CONFIGURE, naming the command and the end of its stderr.
    """
    for argv in grub_install_commands(os_info, prepared):
        await run_checked(
            tree, report, log, argv, error_code=CONFIGURE_FAILED, timeout_s=GRUB_TIMEOUT_S
        )
    if os_info.family is OsFamily.DEBIAN:
        argv = ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]
    else:
        output = "/boot/grub2/grub.cfg"
        esp = esp_mount_point(prepared)
        if prepared.boot_mode is BootMode.UEFI and esp is not None:
            output = await _rhel_efi_config(tree, report, ident, prepared, esp, os_info)
        argv = ["grub2-mkconfig", "-o", output]
    await run_checked(
        tree, report, log, argv, error_code=CONFIGURE_FAILED, timeout_s=GRUB_TIMEOUT_S
    )
