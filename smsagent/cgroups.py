"""The movers' cgroup (cgroup v2): found or made in the right place, its limits written.

Where the movers' cgroup goes:

* Under systemd the agent's unit is delegated to it (`Delegate=` in the unit). cgroup v2 lets a
  cgroup either hold processes or pass controllers to its children, not both, so the agent first
  moves itself (and anything else in the unit's cgroup) into the leaf `<unit>/agent`, then
  enables the controllers for the unit's children and makes `<unit>/movers`.
* In the foreground the agent's own cgroup usually holds the shell that started it, which the
  agent must not move; the movers go to `smsagent-movers` directly below the hierarchy's root
  (the root is exempt from that rule), as SMS's own agent makes `sms_mig_cgroup` there.

Anything that prevents this is a `CgroupUnavailable` whose message says why.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

AGENT_LEAF: Final = "agent"
MOVERS_LEAF: Final = "movers"
FOREGROUND_MOVERS: Final = "smsagent-movers"
CONTROLLERS: Final = ("cpu", "memory", "io")
CPU_PERIOD_US: Final = 100_000
UNLIMITED: Final = "max"
# systemd marks a cgroup it delegates with one of these (trusted.* from v246, user.* from v252).
DELEGATE_XATTRS: Final = ("trusted.delegate", "user.delegate")

PROC_SELF_CGROUP: Final = Path("/proc/self/cgroup")
PROC_SELF_MOUNTINFO: Final = Path("/proc/self/mountinfo")
PROC_CGROUPS: Final = Path("/proc/cgroups")
SYS_DEV_BLOCK: Final = Path("/sys/dev/block")


class CgroupUnavailable(Exception):
    """No cgroup for the movers can be made here; the message says why."""


@dataclass(frozen=True)
class MoversCgroup:
    """The movers' cgroup.

    Attributes:
        path: its directory.
        controllers: the controllers (of `CONTROLLERS`) that its limits can be written for.
        under_unit: whether it lies in the agent's delegated systemd unit.
    """

    path: Path
    controllers: frozenset[str]
    under_unit: bool

    @property
    def procs(self) -> Path:
        """The file a process writes its pid to, to move into the cgroup."""
        return self.path / "cgroup.procs"


@dataclass(frozen=True)
class CgroupValues:
    """Limits in the kernel's terms.

    Attributes:
        cpu_quota_us: CPU time per `CPU_PERIOD_US`; None is unlimited.
        memory_bytes: `memory.max`; None is unlimited.
        io_bytes_s: `rbps` and `wbps` on each of `io_devices`; None is unlimited.
        io_devices: whole block devices (major, minor).
    """

    cpu_quota_us: Optional[int] = None
    memory_bytes: Optional[int] = None
    io_bytes_s: Optional[int] = None
    io_devices: tuple[tuple[int, int], ...] = ()


def cgroup2_mount(mountinfo: str) -> Optional[Path]:
    """Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
    on a hybrid system), from the text of /proc/self/mountinfo."""
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split()[:1] == ["cgroup2"] and len(fields) > 4:
            return Path(fields[4].replace("\\040", " "))
    return None


def own_cgroup(proc_cgroup: str) -> Optional[str]:
    """This process's cgroup v2 path (`/system.slice/smsagent.service`), from /proc/self/cgroup."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def v1_controllers(proc_cgroups: str) -> frozenset[str]:
    """The controllers the kernel has bound to a cgroup v1 hierarchy (from /proc/cgroups),
    which are therefore not available to cgroup v2."""
    bound = set()
    for line in proc_cgroups.splitlines():
        fields = line.split()
        if len(fields) >= 4 and not line.startswith("#") and fields[1] != "0":
            bound.add(fields[0])
    return frozenset(bound)


def unit_cgroup(own: str) -> Optional[str]:
    """The systemd service's cgroup the agent runs in (also once it sits in its `agent` leaf);
    None when it runs in no service."""
    parts = own.rstrip("/").split("/")
    if parts[-1] == AGENT_LEAF and len(parts) > 1:
        parts = parts[:-1]
    return "/".join(parts) if parts[-1].endswith(".service") else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CgroupUnavailable(f"{path} cannot be read ({exc.strerror})") from exc


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as file:
            file.write(value)
    except OSError as exc:
        raise CgroupUnavailable(f"{path} cannot be written ({exc.strerror}): {value!r}") from exc


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise CgroupUnavailable(f"{path} cannot be made ({exc.strerror})") from exc


def _is_delegated(unit: Path) -> bool:
    """Whether systemd delegated `unit` (True too when the marker cannot be read)."""
    for name in DELEGATE_XATTRS:
        try:
            os.getxattr(unit, name)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                return True  # not allowed to look: assume the unit file's Delegate= holds
    return False


def _move_all(source: Path, leaf: Path) -> None:
    """Move every process of `source` into `leaf`."""
    for pid in _read(source / "cgroup.procs").split():
        try:
            with open(leaf / "cgroup.procs", "w") as file:
                file.write(pid)
        except ProcessLookupError:
            continue  # exited meanwhile
        except OSError as exc:
            raise CgroupUnavailable(
                f"process {pid} cannot move to {leaf} ({exc.strerror})"
            ) from exc


def _enable(parent: Path) -> frozenset[str]:
    """Enable the controllers of `CONTROLLERS` that `parent` has for its children."""
    available = set(_read(parent / "cgroup.controllers").split())
    enabled = set(_read(parent / "cgroup.subtree_control").split())
    wanted = [name for name in CONTROLLERS if name in available]
    missing = [name for name in wanted if name not in enabled]
    if missing:
        _write(parent / "cgroup.subtree_control", " ".join(f"+{name}" for name in missing))
    return frozenset(wanted)


def prepare_movers(root: Path, own: str) -> MoversCgroup:
    """Make the movers' cgroup (see the module docstring) and return it.

    Args:
        root: where the cgroup v2 hierarchy is mounted.
        own: this process's cgroup path within it.

    Raises:
        CgroupUnavailable: saying why no cgroup can be made.
    """
    unit = unit_cgroup(own)
    if unit is None:
        movers = root / FOREGROUND_MOVERS
        controllers = _enable(root)
        _mkdir(movers)
        return MoversCgroup(movers, controllers, under_unit=False)
    unit_dir = root / unit.lstrip("/")
    if not _is_delegated(unit_dir):
        msg = f"the unit's cgroup {unit_dir} is not delegated to the agent (Delegate= is off)"
        raise CgroupUnavailable(msg)
    leaf = unit_dir / AGENT_LEAF
    _mkdir(leaf)
    _move_all(unit_dir, leaf)
    controllers = _enable(unit_dir)
    _mkdir(unit_dir / MOVERS_LEAF)
    return MoversCgroup(unit_dir / MOVERS_LEAF, controllers, under_unit=True)


def whole_disk(
    device: tuple[int, int], sys_dev_block: Path = SYS_DEV_BLOCK
) -> Optional[tuple[int, int]]:
    """The block device `io.max` takes for a file system on `device`: the device itself, or
    the disk a partition belongs to (the kernel refuses partitions there); None when there is
    no block device (tmpfs, overlay, btrfs's anonymous devices, network file systems)."""
    entry = sys_dev_block / f"{device[0]}:{device[1]}"
    if not entry.exists():
        return None
    if (entry / "partition").exists():
        entry = entry.resolve().parent
    try:
        major, minor = (entry / "dev").read_text().strip().split(":")
    except (OSError, ValueError):
        return None
    return int(major), int(minor)


def io_lines(values: CgroupValues, current: str) -> list[str]:
    """The `io.max` lines to write: the limit on each device, and every device limited before
    but not now set back to unlimited. `current` is the file's present text."""
    rate = UNLIMITED if values.io_bytes_s is None else str(values.io_bytes_s)
    wanted = {f"{major}:{minor}" for major, minor in values.io_devices}
    lines = [f"{device} rbps={rate} wbps={rate}" for device in sorted(wanted)]
    for line in current.splitlines():
        device = line.split(" ", 1)[0]
        if device and device not in wanted:
            lines.append(f"{device} rbps={UNLIMITED} wbps={UNLIMITED}")
    return lines


def _limit_text(value: Optional[int]) -> str:
    return UNLIMITED if value is None else str(value)


def write_limits(group: MoversCgroup, values: CgroupValues) -> None:
    """Write `values` into the files of the controllers `group` has.

    Raises:
        CgroupUnavailable: a file cannot be written (the message names it and the value).
    """
    if "cpu" in group.controllers:
        _write(group.path / "cpu.max", f"{_limit_text(values.cpu_quota_us)} {CPU_PERIOD_US}")
    if "memory" in group.controllers:
        _write(group.path / "memory.max", _limit_text(values.memory_bytes))
        swap = group.path / "memory.swap.max"
        if swap.exists():
            # Swap on top would let the movers take more of the server than the limit says.
            _write(swap, "0" if values.memory_bytes is not None else UNLIMITED)
    if "io" in group.controllers:
        for line in io_lines(values, _read(group.path / "io.max")):
            _write(group.path / "io.max", line)
