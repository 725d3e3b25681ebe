"""A task's resource limits put in force for its movers at the start of each pass.

At each pass (and verification) the limits read with the settings are written to the movers'
cgroup (`smsagent.cgroups`), so a change made while the task was paused or waiting for its next
sync takes effect there. Where a limit cannot be applied, the agent says why once per reason for
the work of a command, and copies without it rather than not at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

import structlog

from smsagent.api.enums import ConfigKey
from smsagent.cgroups import (
    CPU_PERIOD_US,
    PROC_CGROUPS,
    PROC_SELF_CGROUP,
    PROC_SELF_MOUNTINFO,
    SYS_DEV_BLOCK,
    CgroupUnavailable,
    CgroupValues,
    MoversCgroup,
    cgroup2_mount,
    own_cgroup,
    prepare_movers,
    v1_controllers,
    whole_disk,
    write_limits,
)
from smsagent.migration.limits import MIB, ResourceLimits

log = structlog.get_logger()

_CONTROLLER_OF: Final = {
    ConfigKey.LINUX_CPU_LIMIT: "cpu",
    ConfigKey.LINUX_MEM_LIMIT: "memory",
    ConfigKey.LINUX_IO_LIMIT: "io",
}


@dataclass(frozen=True)
class SystemPaths:
    """Where the kernel's facts are read (tests point them at a fake tree)."""

    mountinfo: Path = PROC_SELF_MOUNTINFO
    own_cgroup: Path = PROC_SELF_CGROUP
    proc_cgroups: Path = PROC_CGROUPS
    sys_dev_block: Path = SYS_DEV_BLOCK


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _set_keys(limits: ResourceLimits) -> list[ConfigKey]:
    pairs = (
        (ConfigKey.LINUX_CPU_LIMIT, limits.cpu_percent),
        (ConfigKey.LINUX_MEM_LIMIT, limits.memory_mib),
        (ConfigKey.LINUX_IO_LIMIT, limits.io_mib_s),
    )
    return [key for key, value in pairs if value is not None]


class MoverLimits:
    """Applies a task's limits to its movers, pass by pass; one per command's work.

    Args:
        paths: where the kernel's facts are read.
    """

    def __init__(self, paths: SystemPaths = SystemPaths()) -> None:
        self._paths = paths
        self._group: Optional[MoversCgroup] = None
        self._warned: set[str] = set()
        self._applied: Optional[CgroupValues] = None

    def apply(self, limits: ResourceLimits, source_paths: Sequence[str]) -> Optional[Path]:
        """Write `limits` for the movers of the next pass; return the `cgroup.procs` to start
        them in, or None to start them in the agent's own cgroup (no limit set, or none can be
        applied: then a warning says why).

        Args:
            limits: the task's limits as read for this pass.
            source_paths: the absolute paths of the file systems the pass reads.
        """
        if not limits.any_set and self._group is None:
            return None  # nothing asked, nothing made: an unlimited copy costs nothing extra
        try:
            group = self._group or self._prepare()
        except CgroupUnavailable as exc:
            self._warn(str(exc), settings=[k.value for k in _set_keys(limits)])
            return None
        self._group = group
        self._warn_missing_controllers(group, limits)
        values = self._values(limits, source_paths)
        try:
            write_limits(group, values)
        except CgroupUnavailable as exc:
            self._warn(str(exc), settings=[k.value for k in _set_keys(limits)])
            return None
        if values != self._applied:
            self._applied = values
            log.info("resource_limits_applied", cgroup=str(group.path), **_fields(limits))
        return group.procs

    def _prepare(self) -> MoversCgroup:
        root = cgroup2_mount(_text(self._paths.mountinfo))
        own = own_cgroup(_text(self._paths.own_cgroup))
        if root is None or own is None:
            raise CgroupUnavailable("no cgroup v2 hierarchy is mounted on this server")
        return prepare_movers(root, own)

    def _warn_missing_controllers(self, group: MoversCgroup, limits: ResourceLimits) -> None:
        in_v1 = v1_controllers(_text(self._paths.proc_cgroups))
        for key in _set_keys(limits):
            controller = _CONTROLLER_OF[key]
            if controller in group.controllers:
                continue
            where = (
                "the kernel has it in a cgroup v1 hierarchy; the agent limits through cgroup v2"
                if controller in in_v1
                else f"it is not in {group.path.parent / 'cgroup.controllers'}"
            )
            self._warn(
                f"the cgroup v2 controller {controller!r} is unavailable: {where}", [key.value]
            )

    def _values(self, limits: ResourceLimits, source_paths: Sequence[str]) -> CgroupValues:
        devices: list[tuple[int, int]] = []
        if limits.io_mib_s is not None:
            for path in source_paths:
                disk = self._disk_of(path)
                if disk is not None and disk not in devices:
                    devices.append(disk)
        return CgroupValues(
            cpu_quota_us=None
            if limits.cpu_percent is None
            else CPU_PERIOD_US * limits.cpu_percent // 100,
            memory_bytes=None if limits.memory_mib is None else limits.memory_mib * MIB,
            io_bytes_s=None if limits.io_mib_s is None else limits.io_mib_s * MIB,
            io_devices=tuple(devices),
        )

    def _disk_of(self, path: str) -> Optional[tuple[int, int]]:
        try:
            device = Path(path).stat().st_dev
        except OSError as exc:
            self._warn(
                f"{path} cannot be looked at ({exc.strerror})", [ConfigKey.LINUX_IO_LIMIT.value]
            )
            return None
        number = (os.major(device), os.minor(device))
        disk = whole_disk(number, self._paths.sys_dev_block)
        if disk is None:
            reason = (
                f"the file system at {path} (device {number[0]}:{number[1]}) has no block "
                "device of its own, so its reads are not limited"
            )
            self._warn(reason, [ConfigKey.LINUX_IO_LIMIT.value])
        return disk

    def _warn(self, reason: str, settings: list[str]) -> None:
        if reason in self._warned:
            return
        self._warned.add(reason)
        log.warning("resource_limits_not_applied", settings=settings, reason=reason)


def _fields(limits: ResourceLimits) -> dict[str, Optional[int]]:
    return {
        "cpu_percent": limits.cpu_percent,
        "memory_mib": limits.memory_mib,
        "io_mib_s": limits.io_mib_s,
    }
