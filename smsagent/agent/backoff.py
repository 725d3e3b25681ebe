"""The poll schedule: jittered idle and active intervals, exponential backoff on errors.

All delays are in seconds and come from an injected `random.Random`, so a seeded generator
makes every schedule reproducible.

- Polls after a success wait `poll_interval` (idle) or `active_poll_interval` (a task is
  active), each scaled by a factor drawn from [0.8, 1.2].
- The first poll waits a random time in [0, poll_interval], so a fleet that boots together
  does not poll together.
- After the n-th consecutive error the delay is drawn from [1, min(cap, 2**n)]: full jitter
  above a one-second floor, so no server behaviour can make a tight loop. A success resets n.
- A `Retry-After` is honoured: the delay is never shorter than it, up to the cap (a server
  asking for longer gets the cap, since a longer silence shows the agent as disconnected).
- A refusal (403) or an unexpected failure waits near the cap: in [0.8 cap, cap], never under
  the one-second floor.
- Whatever the schedule says and whatever wakes the loop early, two polls start at least
  `MIN_POLL_GAP_S` apart (the poller enforces it; tests may pass a shorter gap in code, an
  operator cannot set one).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Final, Optional

from smsagent.api.errors import ErrorAction, SmsError

JITTER: Final = 0.2
MIN_POLL_GAP_S: Final = 1.0
MIN_ERROR_DELAY_S: Final = 1.0
AT_CAP_LOW: Final = 0.8


class OutcomeKind(str, Enum):
    """How one poll went, as far as the schedule cares."""

    ok_idle = "ok_idle"
    ok_active = "ok_active"
    error = "error"
    forbidden = "forbidden"
    unexpected = "unexpected"


@dataclass(frozen=True)
class Outcome:
    """The result of one poll: `Outcome.ok_idle`, `Outcome.error(retry_after_s)`, ..."""

    kind: OutcomeKind
    retry_after_s: Optional[float] = None

    ok_idle: ClassVar[Outcome]
    ok_active: ClassVar[Outcome]
    forbidden: ClassVar[Outcome]
    unexpected: ClassVar[Outcome]

    @classmethod
    def error(cls, retry_after_s: Optional[float] = None) -> Outcome:
        """A failed poll worth retrying (network, 5xx, 429, 401, 404), with the server's wish."""
        return cls(OutcomeKind.error, retry_after_s)

    @classmethod
    def from_error(cls, exc: SmsError) -> Outcome:
        """The outcome for a classified SMS failure: 403 and fatal errors wait at the cap."""
        if exc.action is ErrorAction.forbidden:
            return cls.forbidden
        if exc.action is ErrorAction.fatal:
            return cls.unexpected
        return cls.error(exc.retry_after_s)


Outcome.ok_idle = Outcome(OutcomeKind.ok_idle)
Outcome.ok_active = Outcome(OutcomeKind.ok_active)
Outcome.forbidden = Outcome(OutcomeKind.forbidden)
Outcome.unexpected = Outcome(OutcomeKind.unexpected)


def error_delay_bounds(attempt: int, cap_s: float) -> tuple[float, float]:
    """The range the delay after the `attempt`-th consecutive error (1, 2, ...) is drawn from."""
    low = min(MIN_ERROR_DELAY_S, cap_s)
    # 2**attempt overflows a float past 1023; any cap is reached long before 2**64.
    high = min(cap_s, 2.0 ** min(attempt, 64))
    return low, max(low, high)


def error_delay_s(attempt: int, cap_s: float, rng: random.Random) -> float:
    """A delay after the `attempt`-th consecutive error: full jitter above a one-second floor."""
    low, high = error_delay_bounds(attempt, cap_s)
    return rng.uniform(low, high)


def honour_retry_after(delay_s: float, retry_after_s: Optional[float], cap_s: float) -> float:
    """`delay_s`, lengthened to the server's `Retry-After` when given, never beyond the cap."""
    if retry_after_s is None or not math.isfinite(retry_after_s) or retry_after_s <= 0:
        return delay_s
    return max(delay_s, min(retry_after_s, cap_s))


def max_requests_in_window(window_s: float, cap_s: float) -> int:
    """The most polls a failing period of `window_s` seconds can see, counting the first.

    Every poll in a run of errors is followed by at least the lower bound of
    `error_delay_bounds` (one second, or the cap when the cap is shorter); `Retry-After` and
    at-cap outcomes only lengthen delays. So n polls need at least the sum of the first n-1
    lower bounds, and the bound is the largest n whose sum fits in the window.
    """
    if window_s < 0:
        return 0
    requests, elapsed_s = 1, 0.0
    while True:
        low, _ = error_delay_bounds(requests, cap_s)
        if elapsed_s + low > window_s:
            return requests
        elapsed_s += low
        requests += 1


class Schedule:
    """Delays between polls; remembers the count of consecutive errors.

    Args:
        poll_interval_s: idle period.
        active_poll_interval_s: period while a task is active.
        backoff_cap_s: longest delay after errors.
        rng: source of jitter (seed it in tests).
    """

    def __init__(
        self,
        poll_interval_s: float,
        active_poll_interval_s: float,
        backoff_cap_s: float,
        rng: random.Random,
    ) -> None:
        self.poll_interval_s: Final = poll_interval_s
        self.active_poll_interval_s: Final = active_poll_interval_s
        self.backoff_cap_s: Final = backoff_cap_s
        self._rng: Final = rng
        self._errors = 0

    @property
    def consecutive_errors(self) -> int:
        """Errors since the last success."""
        return self._errors

    def first_delay(self) -> float:
        """The wait before the very first poll: uniform in [0, poll_interval]."""
        return self._rng.uniform(0.0, self.poll_interval_s)

    def next_delay(self, outcome: Outcome) -> float:
        """The wait before the next poll, given how the last one went."""
        if outcome.kind is OutcomeKind.ok_idle:
            self._errors = 0
            return self._jittered(self.poll_interval_s)
        if outcome.kind is OutcomeKind.ok_active:
            self._errors = 0
            return self._jittered(self.active_poll_interval_s)
        self._errors += 1
        if outcome.kind is OutcomeKind.error:
            delay_s = error_delay_s(self._errors, self.backoff_cap_s, self._rng)
        else:
            floor_s, _ = error_delay_bounds(1, self.backoff_cap_s)
            low_s = max(AT_CAP_LOW * self.backoff_cap_s, floor_s)
            delay_s = self._rng.uniform(low_s, self.backoff_cap_s)
        return honour_retry_after(delay_s, outcome.retry_after_s, self.backoff_cap_s)

    def _jittered(self, period_s: float) -> float:
        return period_s * self._rng.uniform(1.0 - JITTER, 1.0 + JITTER)
