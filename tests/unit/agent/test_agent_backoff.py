"""The poll schedule: intervals with jitter, backoff with a floor and a cap, Retry-After."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsagent.agent.backoff import (
    Outcome,
    OutcomeKind,
    Schedule,
    error_delay_bounds,
    honour_retry_after,
    max_requests_in_window,
)
from smsagent.api.errors import ForbiddenError, NotFoundError, ServerError, TransportError


def _schedule(seed: int = 7, cap_s: float = 300.0) -> Schedule:
    return Schedule(10.0, 3.0, cap_s, random.Random(seed))


class TestIntervals:
    def test_first_delay_spreads_over_one_idle_period(self) -> None:
        """The first poll waits somewhere in [0, poll_interval], not always the same time."""
        delays = [_schedule(seed).first_delay() for seed in range(200)]
        assert all(0.0 <= d <= 10.0 for d in delays)
        assert min(delays) < 2.0 and max(delays) > 8.0

    def test_idle_and_active_periods_have_twenty_percent_jitter(self) -> None:
        """Idle polls wait 10 s +-20 %, active polls 3 s +-20 %."""
        schedule = _schedule()
        idle = [schedule.next_delay(Outcome.ok_idle) for _ in range(500)]
        active = [schedule.next_delay(Outcome.ok_active) for _ in range(500)]
        assert 8.0 <= min(idle) < 8.2 and 11.8 < max(idle) <= 12.0
        assert 2.4 <= min(active) < 2.5 and 3.5 < max(active) <= 3.6

    def test_same_seed_same_schedule(self) -> None:
        """A seeded generator makes the schedule reproducible."""
        outcomes = [Outcome.ok_idle, Outcome.error(), Outcome.error(), Outcome.ok_active]
        first, second = _schedule(3), _schedule(3)
        assert [first.next_delay(o) for o in outcomes] == [second.next_delay(o) for o in outcomes]


class TestBackoff:
    def test_errors_grow_exponentially_up_to_the_cap(self) -> None:
        """The n-th consecutive error waits within [1, min(cap, 2**n)]."""
        schedule = _schedule(cap_s=60.0)
        for attempt in range(1, 20):
            delay = schedule.next_delay(Outcome.error())
            assert 1.0 <= delay <= min(60.0, 2.0**attempt)
        assert schedule.consecutive_errors == 19

    def test_full_jitter_uses_the_whole_range(self) -> None:
        """At the cap the delays spread over [1, cap] rather than clustering at the top."""
        delays = []
        for seed in range(300):
            schedule = _schedule(seed, cap_s=64.0)
            for _ in range(7):
                delay = schedule.next_delay(Outcome.error())
            delays.append(delay)
        assert min(delays) < 10.0 and max(delays) > 55.0

    def test_success_resets_the_backoff(self) -> None:
        """After a success the next error starts again from the shortest range."""
        schedule = _schedule()
        for _ in range(10):
            schedule.next_delay(Outcome.error())
        schedule.next_delay(Outcome.ok_active)
        assert schedule.consecutive_errors == 0
        assert schedule.next_delay(Outcome.error()) <= 2.0

    @pytest.mark.parametrize("kind", [Outcome.forbidden, Outcome.unexpected])
    def test_forbidden_and_unexpected_wait_near_the_cap(self, kind: Outcome) -> None:
        """A 403 or an unexpected failure waits in [0.8 cap, cap] from the first time."""
        schedule = _schedule(cap_s=300.0)
        delays = [schedule.next_delay(kind) for _ in range(100)]
        assert all(240.0 <= d <= 300.0 for d in delays)

    def test_small_cap_keeps_the_floor(self) -> None:
        """With a cap near one second, waits at the cap still respect the one-second floor."""
        schedule = _schedule(cap_s=1.1)
        assert all(1.0 <= schedule.next_delay(Outcome.forbidden) <= 1.1 for _ in range(200))

    def test_retry_after_is_never_undercut(self) -> None:
        """A Retry-After longer than the jittered delay is waited in full."""
        schedule = _schedule()
        assert schedule.next_delay(Outcome.error(retry_after_s=42.0)) >= 42.0

    def test_retry_after_is_capped(self) -> None:
        """A server asking for a day gets the cap."""
        schedule = _schedule(cap_s=300.0)
        assert schedule.next_delay(Outcome.error(retry_after_s=86400.0)) == 300.0

    @pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), float("inf")])
    def test_nonsense_retry_after_is_ignored(self, bad: float) -> None:
        """Zero, negative or non-finite Retry-After values change nothing."""
        assert honour_retry_after(3.0, bad, 300.0) == 3.0


class TestFromError:
    def test_classification(self) -> None:
        """Network, 5xx and 404 errors back off; 403 waits at the cap; Retry-After is kept."""
        kwargs = {"method": "GET", "path": "/v3/sources/abc/command"}
        assert Outcome.from_error(TransportError(**kwargs)).kind is OutcomeKind.error
        throttled = Outcome.from_error(ServerError(status=429, retry_after_s=7.0, **kwargs))
        assert throttled == Outcome.error(7.0)
        assert Outcome.from_error(ForbiddenError(status=403, **kwargs)) is Outcome.forbidden
        assert Outcome.from_error(NotFoundError(status=404, **kwargs)).kind is OutcomeKind.error


class TestRequestBound:
    def test_bound_for_the_floor(self) -> None:
        """With a one-second floor, a 30 s failing window sees at most 31 polls."""
        assert max_requests_in_window(30.0, 300.0) == 31
        assert max_requests_in_window(0.0, 300.0) == 1

    def test_short_cap_is_the_floor(self) -> None:
        """A cap under a second is itself the floor."""
        assert error_delay_bounds(1, 0.5) == (0.5, 0.5)
        assert max_requests_in_window(2.0, 0.5) == 5

    @settings(max_examples=200, deadline=None)
    @given(
        seed=st.integers(0, 2**32),
        cap_s=st.floats(1.0, 600.0),
        window_s=st.floats(0.0, 900.0),
        outcomes=st.lists(
            st.sampled_from([Outcome.error(), Outcome.forbidden, Outcome.error(30.0)]),
            min_size=1,
            max_size=200,
        ),
    )
    def test_no_failing_period_exceeds_the_bound(
        self, seed: int, cap_s: float, window_s: float, outcomes: list[Outcome]
    ) -> None:
        """However errors arrive, polls inside any window never exceed the documented bound."""
        schedule = Schedule(10.0, 3.0, cap_s, random.Random(seed))
        times = [0.0]
        for outcome in outcomes:
            times.append(times[-1] + schedule.next_delay(outcome))
        bound = max_requests_in_window(window_s, cap_s)
        for start_index, start in enumerate(times):
            inside = sum(1 for t in times[start_index:] if t - start <= window_s)
            assert inside <= bound
