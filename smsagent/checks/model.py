"""A check's result (`Check`), how results combine, and the time-bounded runner of checks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Final, Optional, TypeVar

import structlog
from pydantic import JsonValue

from smsagent.api.enums import CheckResult
from smsagent.log import scrub
from smsagent.waits import within

if TYPE_CHECKING:  # the agent's start-up verdict is not needed to build a check at run time
    from smsagent.agent.preflight import Blocker

log = structlog.get_logger(__name__)

# SMS's code for "Check %s on Linux timed out" (spec §6.3).
CHECK_TIMED_OUT: Final = "SMS.5113"
CHECK_CRASHED: Final = "SMSAGENT.CHECK_FAILED"

T = TypeVar("T")

_SEVERITY: Final = {CheckResult.OK: 0, CheckResult.WARN: 1, CheckResult.ERROR: 2}


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes:
        name: a stable snake_case name, e.g. `target_login`.
        result: OK, WARN or ERROR.
        reason: one sentence for an operator: what was found, and for WARN/ERROR what to do.
        error_code: the SMS code (`SMS.3804`) or an `SMSAGENT.*` code when none fits.
        details: measured values (bytes, seconds, versions), JSON-ready.
    """

    name: str
    result: CheckResult
    reason: str
    error_code: Optional[str] = None
    details: Mapping[str, JsonValue] = field(default_factory=dict)

    @classmethod
    def ok(cls, name: str, reason: str, **details: JsonValue) -> Check:
        """A passed check."""
        return cls(name, CheckResult.OK, reason, None, details)

    @classmethod
    def warn(
        cls, name: str, reason: str, error_code: Optional[str] = None, **details: JsonValue
    ) -> Check:
        """A check that found something to look at that does not stop a migration."""
        return cls(name, CheckResult.WARN, reason, error_code, details)

    @classmethod
    def error(
        cls, name: str, reason: str, error_code: Optional[str] = None, **details: JsonValue
    ) -> Check:
        """A check that found something a migration cannot go past."""
        return cls(name, CheckResult.ERROR, reason, error_code, details)

    @classmethod
    def not_checked(cls, name: str, because: str) -> Check:
        """A check that could not run because one it depends on failed (WARN, no code)."""
        return cls(name, CheckResult.WARN, f"not checked: {because}")

    def to_json(self) -> dict[str, JsonValue]:
        """The check as a JSON object: name, result, reason, error_code, details (when any)."""
        document: dict[str, JsonValue] = {
            "name": self.name,
            "result": self.result.value,
            "reason": self.reason,
            "error_code": self.error_code,
        }
        if self.details:
            document["details"] = dict(self.details)
        return document


def blocker_check(blocker: Blocker, **details: JsonValue) -> Check:
    """What stops `smsagent run`, as the ERROR `check` shows: `run`'s sentence and code."""
    return Check.error(blocker.check, blocker.reason, blocker.error_code, **details)


def worst(results: Iterable[CheckResult]) -> CheckResult:
    """The most severe of `results` (OK when there are none)."""
    return max(results, key=_SEVERITY.__getitem__, default=CheckResult.OK)


def overall(checks: Iterable[Check]) -> CheckResult:
    """The result of a set of checks: ERROR if any is, else WARN if any is, else OK."""
    return worst(check.result for check in checks)


def first_error(checks: Iterable[Check]) -> Optional[Check]:
    """The first check that is ERROR, if any."""
    return next((check for check in checks if check.result is CheckResult.ERROR), None)


async def bounded(
    run: Callable[[], Awaitable[T]], timeout_s: float, failed: Callable[[str, str], T]
) -> T:
    """Run a check (or a group of checks) with a time limit; a timeout or a crash is not raised
    but turned into the value `failed(reason, error_code)` makes.

    Args:
        run: makes the check's coroutine.
        timeout_s: how long it may take.
        failed: builds the result for a check that timed out or crashed.
    """
    try:
        return await within(run(), timeout_s)
    except asyncio.TimeoutError:
        return failed(f"the check did not finish within {timeout_s:g} s", CHECK_TIMED_OUT)
    except Exception as exc:  # one check's bug must not stop the others; it becomes its ERROR
        log.exception("check_crashed")
        return failed(f"the check failed: {type(exc).__name__}: {scrub(str(exc))}", CHECK_CRASHED)


def failed_as(name: str) -> Callable[[str, str], Check]:
    """`failed` for `bounded` with one check: an ERROR of that name."""
    return lambda reason, error_code: Check.error(name, reason, error_code)


def all_failed_as(*names: str) -> Callable[[str, str], list[Check]]:
    """`failed` for `bounded` with a group of checks: the same ERROR under each name."""
    return lambda reason, error_code: [Check.error(name, reason, error_code) for name in names]
