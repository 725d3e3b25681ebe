"""The task's block-level settings (spec §3.17), read at each pass start.

* `LINUX_BLOCK_COMPRESS_THREAD_NUM`: compression threads, `auto` (the default: by idle CPU,
  at most 3) or 0..3 (0 sends raw);
* `LINUX_BLOCK_CACHE_SIZE`: one cache node in MB, 1..8 (default 4); six nodes are in flight;
* `MIGRATE_DST_IP`: a transit address of the target the data channel connects to instead of
  the target's own (a private line), optional;
* `LINUX_IO_LIMIT`: MiB/s, 10..1000, the rate the copy reads the source at, at most (its live
  passes; the frozen final pass is not held back, a freeze must stay short), optional.

A bad value is a `SettingError` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Final, Optional

from smsagent.api.enums import ConfigKey
from smsagent.migration.limits import IO_MIB_S_RANGE, MIB
from smsagent.migration.settings import SettingError

THREADS_KEY: Final = "LINUX_BLOCK_COMPRESS_THREAD_NUM"
CACHE_KEY: Final = "LINUX_BLOCK_CACHE_SIZE"
TRANSIT_KEY: Final = "MIGRATE_DST_IP"
IO_LIMIT_KEY: Final = ConfigKey.LINUX_IO_LIMIT.value
MAX_THREADS: Final = 3
DEFAULT_CACHE_MB: Final = 4
MB: Final = 1024 * 1024


@dataclass(frozen=True)
class BlockSettings:
    """What a block pass runs with."""

    threads: int = 1
    cache_bytes: int = DEFAULT_CACHE_MB * MB
    transit_address: Optional[str] = None
    read_bytes_s: Optional[int] = None  # LINUX_IO_LIMIT


def idle_threads(cpu_count: Optional[int], load_1m: float) -> int:
    """`auto`: the cores the server is not using (by its load average), one at least, three at
    most, and never all of a server's cores."""
    cores = cpu_count or 1
    idle = int(cores - load_1m)
    return max(1, min(MAX_THREADS, idle, max(1, cores - 1)))


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def parse_block_settings(
    entries: Iterable[Mapping[str, Any]],
    *,
    cpu_count: Callable[[], Optional[int]] = os.cpu_count,
    load: Callable[[], float] = _load,
) -> BlockSettings:
    """The block settings from the `configurations` of `GET configuration-setting`.

    Raises:
        SettingError: naming the key whose value cannot be used.
    """
    values = {
        str(e.get("config_key")): str(e.get("config_value") or "").strip()
        for e in entries
        if e.get("config_key")
    }
    raw_threads = values.get(THREADS_KEY, "").lower()
    if raw_threads in ("", "auto"):
        threads = idle_threads(cpu_count(), load())
    else:
        threads = _whole(THREADS_KEY, raw_threads, 0, MAX_THREADS)
    raw_cache = values.get(CACHE_KEY, "")
    cache_mb = _whole(CACHE_KEY, raw_cache, 1, 8) if raw_cache else DEFAULT_CACHE_MB
    transit = values.get(TRANSIT_KEY) or None
    if transit is not None:
        try:
            transit = str(ipaddress.ip_address(transit))
        except ValueError:
            raise SettingError(f"{TRANSIT_KEY}: {transit!r} is not an IP address") from None
    raw_io = values.get(IO_LIMIT_KEY, "")
    # The movers' limit, with its range and unit (limits.py); here it paces the reads.
    read_bytes_s = _whole(IO_LIMIT_KEY, raw_io, *IO_MIB_S_RANGE) * MIB if raw_io else None
    return BlockSettings(threads, cache_mb * MB, transit, read_bytes_s)


def _whole(key: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise SettingError(f"{key}: {raw!r} is not a whole number from {low} to {high}")
    return value
