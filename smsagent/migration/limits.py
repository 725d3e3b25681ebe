"""The movers' resource limits of a task (spec §3.17, §7.10): `LINUX_CPU_LIMIT`,
`LINUX_MEM_LIMIT` and `LINUX_IO_LIMIT`, read from its configuration settings and checked.

Units, as this agent applies them (SMS documents the ranges, not the arithmetic):

* `LINUX_CPU_LIMIT` 1..100: percent of ONE CPU core, as systemd's `CPUQuota=` counts; 20 lets the
  movers use a fifth of a core however many cores the server has (cgroup v2 `cpu.max`);
* `LINUX_MEM_LIMIT` 200..1000: MiB (2^20 bytes) of memory for all movers together (`memory.max`;
  swap is not allowed on top of it, so the figure is what they can take from the server);
* `LINUX_IO_LIMIT` 10..1000: MiB/s read and written on each block device that backs a file
  system the copy reads (`io.max` `rbps`/`wbps`).

An empty or absent key means no limit. A value that is not a whole number in its range is a
`SettingError` naming the key, like any other setting the migration cannot use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Optional

from smsagent.api.enums import ConfigKey

MIB: Final = 1024 * 1024
CPU_PERCENT_RANGE: Final = (1, 100)
MEMORY_MIB_RANGE: Final = (200, 1000)
IO_MIB_S_RANGE: Final = (10, 1000)


class LimitError(ValueError):
    """A resource limit's value is not a whole number in its range; the message names the key."""


@dataclass(frozen=True)
class ResourceLimits:
    """The movers' limits; None means unlimited.

    Attributes:
        cpu_percent: percent of one CPU core.
        memory_mib: MiB for all movers together.
        io_mib_s: MiB/s of reads (and of writes) per source block device.
    """

    cpu_percent: Optional[int] = None
    memory_mib: Optional[int] = None
    io_mib_s: Optional[int] = None

    @property
    def any_set(self) -> bool:
        """Whether any limit is set."""
        return any(v is not None for v in (self.cpu_percent, self.memory_mib, self.io_mib_s))


def _bounded(values: Mapping[str, str], key: ConfigKey, bounds: tuple[int, int]) -> Optional[int]:
    text = values.get(key.value, "").strip()
    if not text:
        return None
    low, high = bounds
    try:
        number = int(text)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        msg = f"{key.value}: {text!r} is not a whole number from {low} to {high}"
        raise LimitError(msg)
    return number


def parse_limits(values: Mapping[str, str]) -> ResourceLimits:
    """The limits from `config_key` -> `config_value` pairs.

    Raises:
        LimitError: naming the key whose value is out of range or not a number.
    """
    return ResourceLimits(
        cpu_percent=_bounded(values, ConfigKey.LINUX_CPU_LIMIT, CPU_PERCENT_RANGE),
        memory_mib=_bounded(values, ConfigKey.LINUX_MEM_LIMIT, MEMORY_MIB_RANGE),
        io_mib_s=_bounded(values, ConfigKey.LINUX_IO_LIMIT, IO_MIB_S_RANGE),
    )
