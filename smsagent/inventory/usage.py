"""CPU and memory use of this host and of the agent (with its reaped children), from /proc."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Callable, Final, Optional

from smsagent.inventory.osinfo import MEMINFO_PATH

PROC_STAT: Final = "/proc/stat"
SELF_STATUS: Final = "/proc/self/status"


@dataclass(frozen=True)
class Usage:
    """One sample: CPU in percent of all cores since the last sample, memory in MB."""

    total_cpu_pct: float
    agent_cpu_pct: float
    total_mem_mb: float
    agent_mem_mb: float


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read()
    except OSError:
        return ""


def parse_cpu_jiffies(stat_text: str) -> Optional[tuple[int, int]]:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(value) for value in fields[1:] if value.isdigit()]
            idle = sum(values[3:5])  # idle + iowait
            return sum(values) - idle, sum(values)
    return None


def parse_used_memory_mb(meminfo_text: str) -> Optional[float]:
    """MemTotal - MemAvailable, in MB."""
    values: dict[str, int] = {}
    for line in meminfo_text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    if "MemTotal" not in values or "MemAvailable" not in values:
        return None
    return (values["MemTotal"] - values["MemAvailable"]) / 1024.0


def parse_rss_mb(status_text: str) -> Optional[float]:
    """VmRSS of /proc/self/status, in MB."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) / 1024.0
    return None


def _agent_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class UsageSampler:
    """Gives CPU shares over the interval since the previous sample.

    Args:
        monotonic: seconds, for the agent's own CPU share.
        read_text: reads a /proc file (a seam for tests).
    """

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        read_text: Callable[[str], str] = _read,
    ) -> None:
        self._monotonic = monotonic
        self._read = read_text
        self._cores = os.cpu_count() or 1
        self._host = parse_cpu_jiffies(self._read(PROC_STAT))
        self._agent = (monotonic(), _agent_cpu_s())

    def sample(self) -> Usage:
        """Usage since the last call (or since construction)."""
        host = parse_cpu_jiffies(self._read(PROC_STAT))
        total_cpu = 0.0
        if host is not None and self._host is not None and host[1] > self._host[1]:
            total_cpu = 100.0 * (host[0] - self._host[0]) / (host[1] - self._host[1])
        now_s, cpu_s = self._monotonic(), _agent_cpu_s()
        elapsed_s = now_s - self._agent[0]
        agent_cpu = 0.0
        if elapsed_s > 0:
            agent_cpu = 100.0 * (cpu_s - self._agent[1]) / (elapsed_s * self._cores)
        self._host, self._agent = host, (now_s, cpu_s)
        return Usage(
            total_cpu_pct=round(min(max(total_cpu, 0.0), 100.0), 2),
            agent_cpu_pct=round(min(max(agent_cpu, 0.0), 100.0), 2),
            total_mem_mb=round(parse_used_memory_mb(self._read(MEMINFO_PATH)) or 0.0, 1),
            agent_mem_mb=round(parse_rss_mb(self._read(SELF_STATUS)) or 0.0, 1),
        )
