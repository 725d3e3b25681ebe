"""`LINUX_IO_LIMIT` for the block copy's reads of the source.

The file-level movers are held back by the kernel (`io.max` on their cgroup). The block copy
reads in the agent's own process, so it paces itself: a token bucket of one second's worth of
reads, refilled at the limit. A pass slowed by something else (the network, the target) saves
no more than that second for later, so the source never sees a burst above the limit for longer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Final

BURST_S: Final = 1.0


class ReadPacer:
    """Holds reads to `rate_bytes_s` on average, with bursts of at most one second's worth.

    Args:
        rate_bytes_s: the limit, in bytes a second.
        clock: seconds, monotonic (tests give their own).
    """

    def __init__(self, rate_bytes_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = float(rate_bytes_s)
        self._capacity = self._rate * BURST_S
        self._clock = clock
        self._tokens = self._capacity
        self._last = clock()

    def delay(self, size: int) -> float:
        """Count a read of `size` bytes; the seconds to wait before it starts."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= size
        return max(0.0, -self._tokens / self._rate)

    async def take(self, size: int) -> None:
        """Wait until a read of `size` bytes keeps within the limit."""
        wait_s = self.delay(size)
        if wait_s > 0:
            await asyncio.sleep(wait_s)
