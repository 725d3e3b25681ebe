"""What stops `smsagent run` from starting: one verdict, for `run` and for `check`.

`run` stops on the first blocker with its sentence (exit 3); `check` shows each blocker as an
ERROR with the same sentence under the check's name. A new reason for `run` to refuse to start
belongs here, so that `check` cannot pass on what `run` refuses.

Two groups, because the second needs SMS: the local ones (`local_preflight`: the state
directory, the handlers), which `run` decides before it opens anything, and the privacy
statement (`privacy_blocker`), which `run` decides during registration and `check` asks SMS
about without accepting anything.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

from smsagent.agent.registry import HandlerLoadError, HandlerRegistry
from smsagent.agent.statedir import StateDirVerdict, inspect_state_dir
from smsagent.errors import StartupError

STATE_DIR: Final = "state_dir"
HANDLERS: Final = "handlers"
PRIVACY_STATEMENT: Final = "privacy_statement"

HANDLERS_BROKEN: Final = "SMSAGENT.HANDLERS"
# SMS's code for "the privacy statement was not accepted" (spec §6.3).
PRIVACY_NOT_ACCEPTED: Final = "SMS.0208"
PRIVACY_SETTING: Final = "SMSAGENT_ACCEPT_PRIVACY_STATEMENT"


@dataclass(frozen=True)
class Blocker:
    """One reason the agent does not start.

    Attributes:
        check: the name of the `check` row that shows it.
        reason: the sentence `run` stops with and `check` shows.
        error_code: the code `check` shows with it.
    """

    check: str
    reason: str
    error_code: str


class Blocked(StartupError):
    """`run` found a blocker; the message is the blocker's sentence."""

    def __init__(self, blocker: Blocker) -> None:
        super().__init__(blocker.reason)
        self.blocker: Final = blocker


@dataclass(frozen=True)
class LocalPreflight:
    """What this server alone says about starting the agent.

    Attributes:
        state_dir: the verdict on the state directory (with its warnings).
        registry: the handlers, loaded, or None when they do not load.
        blockers: what stops the agent, in the order `run` meets them.
    """

    state_dir: StateDirVerdict
    registry: Optional[HandlerRegistry]
    blockers: tuple[Blocker, ...]

    def require(self) -> HandlerRegistry:
        """The loaded handlers, for the agent to run with.

        Raises:
            Blocked: for the first blocker, if there is one.
        """
        if self.blockers:
            raise Blocked(self.blockers[0])
        if self.registry is None:  # a registry that did not load is always a blocker
            raise AssertionError("handlers missing without a blocker")
        return self.registry


def local_preflight(state_dir: Path, disabled_handlers: Collection[str]) -> LocalPreflight:
    """Inspect the state directory and load the handlers, as `run` does before it opens them.

    Args:
        state_dir: the `state_dir` setting.
        disabled_handlers: the `disabled_handlers` setting.
    """
    verdict = inspect_state_dir(state_dir)
    blockers: list[Blocker] = []
    if verdict.problem is not None:
        blockers.append(Blocker(STATE_DIR, verdict.problem, verdict.error_code))
    registry: Optional[HandlerRegistry] = None
    try:
        registry = HandlerRegistry.load(disabled_handlers)
    except HandlerLoadError as exc:
        blockers.append(Blocker(HANDLERS, str(exc), HANDLERS_BROKEN))
    return LocalPreflight(verdict, registry, tuple(blockers))


def privacy_blocker(accepted: bool, accept_setting: bool) -> Optional[Blocker]:
    """The blocker when the account has not accepted the privacy statement and the settings do
    not accept it either; None when the agent may go on (accepting it itself if it must).

    Args:
        accepted: what SMS says (`GET /v3/privacy-agreements`).
        accept_setting: the `accept_privacy_statement` setting.
    """
    if accepted or accept_setting:
        return None
    return Blocker(
        PRIVACY_STATEMENT,
        "the SMS privacy statement has not been accepted for this account; read it in the "
        f"SMS console, then set {PRIVACY_SETTING}=true to accept it",
        PRIVACY_NOT_ACCEPTED,
    )
