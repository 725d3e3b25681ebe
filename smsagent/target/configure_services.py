"""What must not run, or must run once, when the migrated server first boots as itself.

- cloud-init is disabled as SMS does (spec §7.8): its `cloud.cfg` moved aside and
  `cloud-init.disabled` made, so it does not reset keys, host name or network on the new cloud.
- This agent is masked and its settings and state moved aside: the migrated server must never
  register with SMS or act as the source it was copied from.
- LVM's devices file (it lists the source's disks by their IDs, so LVM would ignore the target's
  new ones) is moved aside.
- With SELinux enabled, `/.autorelabel` has the first boot relabel the copied files.
"""

from __future__ import annotations

import posixpath
from typing import Final

from smsagent.target.configure_cmdline import grub_value
from smsagent.target.configure_files import decode, move_aside
from smsagent.target.configure_report import Action, ConfigureReport
from smsagent.target.tree import EntryKind, TargetTree

AGENT_UNIT: Final = "smsagent.service"
AGENT_UNIT_PATH: Final = f"/etc/systemd/system/{AGENT_UNIT}"
AGENT_ENV_FILE: Final = "/etc/smsagent/smsagent.env"
AGENT_STATE_DIR: Final = "/var/lib/smsagent"
CLOUD_CFG: Final = "/etc/cloud/cloud.cfg"
CLOUD_DISABLED: Final = "/etc/cloud/cloud-init.disabled"
LVM_DEVICES_FILE: Final = "/etc/lvm/devices/system.devices"
AUTORELABEL: Final = "/.autorelabel"
SELINUX_CONFIG: Final = "/etc/selinux/config"
_CLOUD_DISABLED_TEXT: Final = (
    "Disabled by smsagent: the migrated server keeps the configuration of its source.\n"
)


async def disable_cloud_init(tree: TargetTree, report: ConfigureReport) -> None:
    """Move `cloud.cfg` aside and make `cloud-init.disabled`, where cloud-init is installed."""
    cloud_dir = await tree.stat("/etc/cloud")
    if cloud_dir is None or cloud_dir.kind is not EntryKind.DIR:
        return
    await move_aside(tree, report, CLOUD_CFG, "cloud-init is disabled on the migrated server")
    if await tree.lstat(CLOUD_DISABLED) is not None:
        report.add(CLOUD_DISABLED, Action.UNCHANGED, "cloud-init is disabled")
        return
    await tree.write_file(CLOUD_DISABLED, _CLOUD_DISABLED_TEXT.encode())
    report.add(CLOUD_DISABLED, Action.CREATED, "cloud-init is disabled")


async def disable_agent(tree: TargetTree, report: ConfigureReport) -> None:
    """Mask `smsagent.service` and move the agent's settings and state aside."""
    entry = await tree.lstat(AGENT_UNIT_PATH)
    if entry is not None and entry.kind is EntryKind.SYMLINK and entry.link == "/dev/null":
        report.add(AGENT_UNIT_PATH, Action.UNCHANGED, "masked")
    else:
        if entry is not None:
            # A local unit file (or a link to one) at the mask's path: kept, but out of the way.
            await move_aside(tree, report, AGENT_UNIT_PATH, "replaced by the mask")
        await tree.symlink(AGENT_UNIT_PATH, "/dev/null", make_parents=True)
        report.add(AGENT_UNIT_PATH, Action.CREATED, "masked: -> /dev/null")
    wanted = await tree.glob(f"/etc/systemd/system/*.wants/{AGENT_UNIT}")
    wanted += await tree.glob(f"/etc/systemd/system/*.requires/{AGENT_UNIT}")
    for link in wanted:
        target = await tree.lstat(link)
        if target is not None and target.kind is EntryKind.SYMLINK:
            await tree.remove(link)
            target_dir = posixpath.basename(posixpath.dirname(link))
            report.add(link, Action.REMOVED, f"no longer started by {target_dir}")
    await move_aside(tree, report, AGENT_ENV_FILE, "the source's agent settings")
    await move_aside(tree, report, AGENT_STATE_DIR, "the source's agent state")


async def move_lvm_devices_file(tree: TargetTree, report: ConfigureReport) -> None:
    await move_aside(tree, report, LVM_DEVICES_FILE, "lists the source's disks by their IDs")


async def request_relabel(tree: TargetTree, report: ConfigureReport) -> None:
    """Create `/.autorelabel` when the tree's SELinux is enforcing or permissive."""
    data = (await tree.read_files([SELINUX_CONFIG]))[SELINUX_CONFIG]
    mode = (grub_value(decode(data), "SELINUX") or "").lower() if data is not None else ""
    if mode not in ("enforcing", "permissive"):
        return
    detail = f"SELinux is {mode}: the first boot relabels the copied files"
    if await tree.lstat(AUTORELABEL) is not None:
        report.add(AUTORELABEL, Action.UNCHANGED, detail)
        return
    await tree.write_file(AUTORELABEL, b"")
    report.add(AUTORELABEL, Action.CREATED, detail)
