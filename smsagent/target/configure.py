"""The CONFIGURE_LINUX_FILE stage: make the migrated copy boot and behave on its new hardware.

`configure` works on the copy through a `TargetTree` (what SMS does, spec §7.8): it detects the
OS and its kernels in the tree, then changes files (the agent masked, `/etc/fstab` by the new
UUIDs, DHCP for the NICs, cloud-init disabled, LVM's devices file and SELinux, GRUB's settings,
the VirtIO drivers' configuration), then, chrooted with /dev, /proc, /sys and /run bound, builds
an initramfs for every kernel and installs GRUB with a menu for the target's disks.

Every change backs up the source's original once and is idempotent: a second run (a resumed
task) changes no file again and says what it left as is; only the commands run again. Between
steps `cancel` is called, so STOP ends the stage at the next step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Final, Optional

from smsagent.target.configure_boot import (
    add_virtio_drivers,
    device_links,
    esp_mount_point,
    install_grub,
    rebuild_initramfs,
    update_grub_settings,
)
from smsagent.target.configure_cmdline import BootIdentity, boot_identity
from smsagent.target.configure_files import edit_files, write_if_changed
from smsagent.target.configure_fstab import rewrite_fstab, rewrite_resume_conf
from smsagent.target.configure_net import configure_network
from smsagent.target.configure_os import OsInfo, detect_os
from smsagent.target.configure_report import (
    CONFIGURE_FAILED,
    ConfigureError,
    ConfigureReport,
)
from smsagent.target.configure_services import (
    disable_agent,
    disable_cloud_init,
    move_lvm_devices_file,
    request_relabel,
)
from smsagent.target.layout import BootMode
from smsagent.target.prepared import PreparedTarget
from smsagent.target.tree import TargetTree, TreeError, system_dirs_bound

FSTAB: Final = "/etc/fstab"
RESUME_CONF: Final = "/etc/initramfs-tools/conf.d/resume"

# A checkpoint between steps: returns if the stage may go on, raises (e.g. `WorkCancelled`)
# if it must stop.
Checkpoint = Callable[[], None]


@dataclass(frozen=True)
class _Run:
    """One configure run: what every step needs."""

    tree: TargetTree
    prepared: PreparedTarget
    os_info: OsInfo
    ident: BootIdentity
    report: ConfigureReport
    log: Any


Step = Callable[[_Run], Awaitable[None]]


async def _agent(run: _Run) -> None:
    await disable_agent(run.tree, run.report)


async def _fstab(run: _Run) -> None:
    old = (await run.tree.read_files([FSTAB]))[FSTAB]
    text = old.decode("utf-8", "surrogateescape") if old is not None else ""
    new = rewrite_fstab(text, run.prepared.volumes)
    await write_if_changed(run.tree, run.report, FSTAB, old, new, "mounts by the new UUIDs")
    swaps = [v for v in run.prepared.volumes if v.is_swap]
    await edit_files(
        run.tree,
        run.report,
        {RESUME_CONF: lambda t: rewrite_resume_conf(t, swaps)},
        "resume device by the new swap's UUID",
    )


async def _network(run: _Run) -> None:
    await configure_network(run.tree, run.report)


async def _cloud_init(run: _Run) -> None:
    await disable_cloud_init(run.tree, run.report)


async def _storage_ids(run: _Run) -> None:
    await move_lvm_devices_file(run.tree, run.report)
    await request_relabel(run.tree, run.report)


async def _grub_settings(run: _Run) -> None:
    await update_grub_settings(run.tree, run.report, run.ident)


async def _virtio_config(run: _Run) -> None:
    await add_virtio_drivers(run.tree, run.report, run.os_info)


async def _initramfs(run: _Run) -> None:
    await rebuild_initramfs(run.tree, run.report, run.log, run.os_info)


async def _grub(run: _Run) -> None:
    await install_grub(run.tree, run.report, run.log, run.os_info, run.prepared, run.ident)


# The agent goes first: whatever fails later, the copy must never act as the source.
FILE_STEPS: Final[Sequence[tuple[str, Step]]] = (
    ("agent", _agent),
    ("fstab", _fstab),
    ("network", _network),
    ("cloud_init", _cloud_init),
    ("storage_ids", _storage_ids),
    ("grub_settings", _grub_settings),
    ("virtio_config", _virtio_config),
)
# In the chroot; the initramfs first, so that grub-mkconfig lists the new ones.
CHROOT_STEPS: Final[Sequence[tuple[str, Step]]] = (
    ("initramfs", _initramfs),
    ("grub", _grub),
)


def check_prepared(prepared: PreparedTarget) -> None:
    """Refuse a prepared target this stage cannot make bootable.

    Raises:
        ConfigureError: no root file system, or a UEFI target without an ESP.
    """
    if prepared.by_mount_point("/") is None:
        raise ConfigureError(CONFIGURE_FAILED, "the prepared target has no file system at '/'")
    if prepared.boot_mode is BootMode.UEFI and esp_mount_point(prepared) is None:
        raise ConfigureError(
            CONFIGURE_FAILED, "the prepared target boots by UEFI but has no vfat /boot/efi or /efi"
        )


async def configure(
    tree: TargetTree,
    prepared: PreparedTarget,
    log: Any,
    *,
    cancel: Optional[Checkpoint] = None,
) -> ConfigureReport:
    """Configure the migrated tree to boot on the target (see the module's description).

    Args:
        tree: the copy, mounted as `prepared` says.
        prepared: what the prepare stage made (devices, new UUIDs, boot mode, boot disk).
        log: a structlog-style logger (`.info(event, **kw)`).
        cancel: called between steps; it raises to stop the stage there.

    Raises:
        ConfigureError: with SMS.3102 for the initramfs, SMSAGENT.CONFIGURE otherwise.
        TargetError: the target could not be reached (from the session, unchanged).
    """
    checkpoint: Checkpoint = cancel or (lambda: None)
    check_prepared(prepared)
    report = ConfigureReport()
    try:
        os_info = await detect_os(tree)
        report.os_id, report.os_family = os_info.id, os_info.family.value
        report.kernels = os_info.kernels
        log.info(
            "configure_os",
            os_id=os_info.id,
            family=os_info.family.value,
            kernels=list(os_info.kernels),
        )
        run = _Run(tree, prepared, os_info, boot_identity(prepared), report, log)
        await _run_steps(run, FILE_STEPS, checkpoint)
        checkpoint()
        async with system_dirs_bound(tree), device_links(tree, prepared) as made:
            log.info("configure_chroot_ready", device_links=made)
            await _run_steps(run, CHROOT_STEPS, checkpoint)
        await tree.sync()
    except TreeError as exc:
        raise ConfigureError(CONFIGURE_FAILED, str(exc)) from exc
    log.info(
        "configure_done",
        changed=len(report.changed()),
        unchanged=len(report.files) - len(report.changed()),
        commands=len(report.commands),
    )
    return report


async def _run_steps(run: _Run, steps: Sequence[tuple[str, Step]], checkpoint: Checkpoint) -> None:
    for name, step in steps:
        checkpoint()
        before = len(run.report.changed())
        await step(run)
        run.log.info("configure_step", step=name, changed=len(run.report.changed()) - before)
