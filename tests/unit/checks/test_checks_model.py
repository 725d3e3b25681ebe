"""Check results: how they combine, how they read as JSON, and the bounded runner."""

from __future__ import annotations

import asyncio

import pytest

from smsagent import log
from smsagent.api.enums import CheckResult
from smsagent.checks.model import (
    CHECK_CRASHED,
    CHECK_TIMED_OUT,
    Check,
    all_failed_as,
    bounded,
    failed_as,
    first_error,
    overall,
    worst,
)

OK, WARN, ERROR = CheckResult.OK, CheckResult.WARN, CheckResult.ERROR


class TestAggregation:
    @pytest.mark.parametrize(
        ("results", "expected"),
        [
            ([], OK),
            ([OK, OK], OK),
            ([OK, WARN, OK], WARN),
            ([WARN, ERROR, OK], ERROR),
            ([ERROR, WARN], ERROR),
        ],
    )
    def test_worst(self, results: list[CheckResult], expected: CheckResult) -> None:
        """The overall result is the most severe one; none at all is OK."""
        assert worst(results) is expected
        assert overall(Check(f"c{i}", r, "why") for i, r in enumerate(results)) is expected

    def test_first_error(self) -> None:
        """The first ERROR is the one whose code the command result carries."""
        checks = [
            Check.warn("a", "w", "SMS.1"),
            Check.error("b", "e", "SMS.2"),
            Check.error("c", "e", "SMS.3"),
        ]
        found = first_error(checks)
        assert found is not None and found.error_code == "SMS.2"
        assert first_error([Check.ok("a", "fine")]) is None


class TestCheckJson:
    def test_fields(self) -> None:
        """A check reads as name, result, reason and error_code; details only when present."""
        assert Check.ok("clock", "agrees").to_json() == {
            "name": "clock",
            "result": "OK",
            "reason": "agrees",
            "error_code": None,
        }
        document = Check.error("target_space", "too little", "X.1", free_bytes=3).to_json()
        assert document["result"] == "ERROR" and document["error_code"] == "X.1"
        assert document["details"] == {"free_bytes": 3}

    def test_not_checked(self) -> None:
        """A check that could not run is a WARN that says why, with no code."""
        check = Check.not_checked("target_login", "port 22 is not reachable")
        assert (check.result, check.error_code) == (WARN, None)
        assert check.reason == "not checked: port 22 is not reachable"


class TestBounded:
    async def test_result_passes_through(self) -> None:
        """A check that finishes in time returns its own result."""

        async def fine() -> Check:
            return Check.ok("x", "fine")

        assert await bounded(fine, 1.0, failed_as("x")) == Check.ok("x", "fine")

    async def test_timeout_becomes_error(self) -> None:
        """A check that hangs is cut off and becomes ERROR SMS.5113 naming the limit."""
        never = asyncio.Event()

        async def hang() -> Check:
            await never.wait()
            raise AssertionError("unreachable")

        check = await bounded(hang, 0.05, failed_as("slow"))
        assert (check.name, check.result, check.error_code) == ("slow", ERROR, CHECK_TIMED_OUT)
        assert "0.05 s" in check.reason

    async def test_crash_becomes_error_without_secrets(self) -> None:
        """A check that raises becomes its ERROR; a registered secret never reaches the reason."""
        log.register_secret("s3cr3t-value")

        async def crash() -> Check:
            raise RuntimeError("boom with s3cr3t-value inside")

        try:
            check = await bounded(crash, 1.0, failed_as("buggy"))
        finally:
            log.forget_secrets()
        assert (check.result, check.error_code) == (ERROR, CHECK_CRASHED)
        assert "RuntimeError: boom" in check.reason
        assert "s3cr3t-value" not in check.reason

    async def test_group_failure_names_every_check(self) -> None:
        """A group that fails reports the same ERROR under each of its names."""

        async def crash() -> list[Check]:
            raise OSError("gone")

        checks = await bounded(crash, 1.0, all_failed_as("a", "b"))
        assert [(c.name, c.result) for c in checks] == [("a", ERROR), ("b", ERROR)]

    async def test_cancellation_is_not_swallowed(self) -> None:
        """Cancelling the drill cancels the running check instead of turning it into a result."""
        started = asyncio.Event()

        async def hang() -> Check:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        running = asyncio.ensure_future(bounded(hang, 30.0, failed_as("x")))
        await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
