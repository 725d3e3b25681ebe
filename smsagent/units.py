"""The one way the agent shows sizes and rates to people: MiB with one decimal, Mbit/s.

Machine-read figures (progress bodies, result details, log fields) stay in bytes.
"""

from __future__ import annotations

from typing import Final

MIB: Final = 1024 * 1024
BITS_PER_MBIT: Final = 1_000_000


def mib(size_bytes: int) -> str:
    """`12.3 MiB`."""
    return f"{size_bytes / MIB:.1f} MiB"


def mbit_s(bytes_per_s: float) -> str:
    """`41.6 Mbit/s`."""
    return f"{bytes_per_s * 8 / BITS_PER_MBIT:.1f} Mbit/s"
