"""The handler registry: loads handlers from the `smsagent.handlers` entry-point group, and
`invoke`, the boundary every handler call passes.

A handler serves either commands by name (`commands`: STOP, SKIP, DELETE, ...) or the work of
task types (`task_types`: START, PREMIGRATE and SYNC of `MIGRATE_FILE`, a plugin's own type).
Built-ins and plugins load the same way, once at startup, and are validated then: a broken or
clashing handler stops the agent from starting with an error naming it and its distribution.
What a handler itself sees (protocol, context, outcome) is `handler_api`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import Distribution, EntryPoint, distributions
from typing import Any, Callable, Final, Optional

import structlog

from smsagent.agent.handler_api import CommandEnvelope, Handler, HandlerContext, HandlerOutcome
from smsagent.agent.machine import WORK_ACTIONS, Action, State
from smsagent.agent.work import CancelReason, WorkCancelled
from smsagent.api.enums import CommandName
from smsagent.log import scrub

__all__ = [
    "ENTRY_POINT_GROUP",
    "ERROR_HANDLER_FAILED",
    "ERROR_NO_HANDLER",
    "REQUIRED_COMMANDS",
    "WORK_COMMANDS",
    "HandlerInfo",
    "HandlerLoadError",
    "HandlerRegistry",
    "invoke",
    "no_handler_outcome",
]

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP: Final = "smsagent.handlers"
OWN_DISTRIBUTION: Final = "smsagent"
# Dispatched to the handler of the task's type, never by command name.
WORK_COMMANDS: Final = frozenset({CommandName.START, CommandName.PREMIGRATE, CommandName.SYNC})
# The machine's actions for these need a handler; one serving them cannot be disabled.
REQUIRED_COMMANDS: Final = frozenset(
    {
        CommandName.STOP,
        CommandName.SKIP,
        CommandName.DELETE,
        CommandName.TASK_NOT_STARTED,
        CommandName.TASK_HAS_STOPPED,
        CommandName.TASK_HAS_FINISHED,
    }
)
ERROR_HANDLER_FAILED: Final = "SMSAGENT.HANDLER_FAILED"
ERROR_NO_HANDLER: Final = "SMSAGENT.NO_HANDLER"


class HandlerLoadError(Exception):
    """A handler could not be loaded or clashes with another; names the entry point(s)."""


@dataclass(frozen=True)
class HandlerInfo:
    """A loaded handler and where it came from."""

    name: str
    target: str
    distribution: str
    version: str
    handler: Handler
    commands: frozenset[CommandName]
    task_types: frozenset[str]

    @property
    def origin(self) -> str:
        """`name (distribution version)`, for messages."""
        return f"{self.name!r} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class _Candidate:
    entry_point: EntryPoint
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        point = self.entry_point
        return f"{point.name!r} = {point.value!r} ({self.distribution} {self.version})"


def _distribution_name(dist: Distribution) -> str:
    try:
        name = dist.metadata["Name"]
    except KeyError:
        name = None
    return str(name) if name else "unknown"


def _candidates(group: str, dists: Iterable[Distribution]) -> list[_Candidate]:
    """Entry points of `group`, once per (distribution, name) even if a package is on the path
    twice. `entry_points(group=...)` does not exist on Python 3.9, so distributions are walked."""
    seen: set[tuple[str, str]] = set()
    found: list[_Candidate] = []
    for dist in dists:
        points = [point for point in dist.entry_points if point.group == group]
        if not points:
            # Reading every distribution's METADATA would leave about a megabyte behind.
            continue
        name = _distribution_name(dist)
        for entry_point in points:
            key = (name.lower(), entry_point.name)
            if key in seen:
                continue
            seen.add(key)
            found.append(_Candidate(entry_point, name, dist.version))
    return found


def _declared(candidate: _Candidate, obj: Any, attribute: str) -> frozenset[Any]:
    value: object = getattr(obj, attribute, frozenset())
    if isinstance(value, str) or not isinstance(value, Collection):
        msg = f"handler {candidate.origin}: `{attribute}` must be a set, not {type(value).__name__}"
        raise HandlerLoadError(msg)
    return frozenset(value)


def _commands_of(candidate: _Candidate, handler: Any) -> frozenset[CommandName]:
    commands: set[CommandName] = set()
    for name in _declared(candidate, handler, "commands"):
        try:
            commands.add(CommandName(name))
        except ValueError:
            msg = f"handler {candidate.origin} declares unknown command {name!r}"
            raise HandlerLoadError(msg) from None
    misplaced = sorted(c.value for c in commands & WORK_COMMANDS)
    if misplaced:
        msg = (
            f"handler {candidate.origin} declares {', '.join(misplaced)}: these go to the handler "
            "of the task's type; declare `task_types` instead"
        )
        raise HandlerLoadError(msg)
    return frozenset(commands)


def _task_types_of(candidate: _Candidate, handler: Any) -> frozenset[str]:
    task_types = _declared(candidate, handler, "task_types")
    bad = [t for t in task_types if not isinstance(t, str) or not t.strip()]
    if bad:
        msg = f"handler {candidate.origin} declares invalid task types {bad!r}"
        raise HandlerLoadError(msg)
    return frozenset(str(t) for t in task_types)


def _instantiate(candidate: _Candidate) -> Any:
    try:
        loaded = candidate.entry_point.load()
    except Exception as exc:  # a plugin's import may fail in any way; name it and stop
        msg = f"handler {candidate.origin} failed to import: {type(exc).__name__}: {exc}"
        raise HandlerLoadError(msg) from exc
    if not inspect.isclass(loaded):
        msg = f"handler {candidate.origin} is a {type(loaded).__name__}, not a class"
        raise HandlerLoadError(msg)
    try:
        return loaded()
    except Exception as exc:  # the constructor is plugin code too
        msg = f"handler {candidate.origin} cannot be created: {type(exc).__name__}: {exc}"
        raise HandlerLoadError(msg) from exc


def _load_one(candidate: _Candidate) -> HandlerInfo:
    handler = _instantiate(candidate)
    if not inspect.iscoroutinefunction(getattr(handler, "handle", None)):
        msg = f"handler {candidate.origin} has no `async def handle(self, ctx, command)`"
        raise HandlerLoadError(msg)
    commands = _commands_of(candidate, handler)
    task_types = _task_types_of(candidate, handler)
    if not commands and not task_types:
        msg = f"handler {candidate.origin} declares neither `commands` nor `task_types`"
        raise HandlerLoadError(msg)
    return HandlerInfo(
        name=candidate.entry_point.name,
        target=candidate.entry_point.value,
        distribution=candidate.distribution,
        version=candidate.version,
        handler=handler,
        commands=commands,
        task_types=task_types,
    )


def _index(
    infos: Sequence[HandlerInfo], kind: str, keys_of: Callable[[HandlerInfo], Iterable[str]]
) -> dict[str, HandlerInfo]:
    index: dict[str, HandlerInfo] = {}
    for info in infos:
        for key in keys_of(info):
            if key in index:
                msg = (
                    f"{kind} {key} is served by two handlers: {index[key].origin} and {info.origin}"
                )
                raise HandlerLoadError(msg)
            index[key] = info
    return index


class HandlerRegistry:
    """The loaded handlers, indexed by command and by task type; built by `load()`.

    Raises:
        HandlerLoadError: two handlers serve the same command or task type, or a command the
            machine needs has no handler.
    """

    def __init__(self, infos: Sequence[HandlerInfo], disabled: Collection[str] = ()) -> None:
        self.infos: Final = tuple(infos)
        self.disabled: Final = tuple(sorted(disabled))
        self._by_command = _index(self.infos, "command", lambda i: (c.value for c in i.commands))
        self._by_task_type = _index(self.infos, "task type", lambda i: i.task_types)
        missing = sorted(c.value for c in REQUIRED_COMMANDS if c.value not in self._by_command)
        if missing:
            msg = f"no handler for {', '.join(missing)}; the smsagent installation is incomplete"
            raise HandlerLoadError(msg)

    @classmethod
    def load(
        cls,
        disabled: Collection[str] = (),
        *,
        group: str = ENTRY_POINT_GROUP,
        dists: Optional[Iterable[Distribution]] = None,
    ) -> HandlerRegistry:
        """Import, create and validate every handler of the entry-point group.

        Args:
            disabled: entry-point names not to load (`disabled_handlers`). A plugin named
                here is not even imported; a built-in serving a required command cannot be
                disabled.
            group: the entry-point group.
            dists: the distributions to search (default: all installed).

        Raises:
            HandlerLoadError: naming the entry point and distribution at fault.
        """
        wanted_off = set(disabled)
        infos: list[HandlerInfo] = []
        found_names: set[str] = set()
        for candidate in _candidates(group, distributions() if dists is None else dists):
            found_names.add(candidate.entry_point.name)
            if candidate.entry_point.name in wanted_off and not _is_own(candidate):
                continue
            info = _load_one(candidate)
            if info.name in wanted_off:
                _refuse_if_required(info)
                continue
            infos.append(info)
        for name in sorted(wanted_off - found_names):
            log.warning("disabled_handler_not_installed", handler=name)
        return cls(infos, wanted_off & found_names)

    def for_command(self, command: CommandName) -> Optional[Handler]:
        """The handler serving `command` by name."""
        info = self._by_command.get(command.value)
        return None if info is None else info.handler

    def for_task_type(self, task_type: Optional[str]) -> Optional[Handler]:
        """The handler doing the work of `task_type`."""
        info = self._by_task_type.get(task_type or "")
        return None if info is None else info.handler

    def resolve(self, envelope: CommandEnvelope) -> Optional[Handler]:
        """The handler for a decided action: by task type for work, else by command name."""
        if envelope.action in WORK_ACTIONS:
            return self.for_task_type(envelope.task_type)
        return self.for_command(envelope.command)

    @property
    def task_types(self) -> frozenset[str]:
        """Every task type some handler can work on."""
        return frozenset(self._by_task_type)


def _is_own(candidate: _Candidate) -> bool:
    return candidate.distribution.lower() == OWN_DISTRIBUTION


def _refuse_if_required(info: HandlerInfo) -> None:
    needed = sorted(c.value for c in info.commands & REQUIRED_COMMANDS)
    if needed:
        msg = (
            f"SMSAGENT_DISABLED_HANDLERS: handler {info.origin} serves {', '.join(needed)}, "
            "which the agent needs; it cannot be disabled"
        )
        raise HandlerLoadError(msg)


def no_handler_outcome(envelope: CommandEnvelope) -> HandlerOutcome:
    """The `fail` answer when no handler is installed for a command or task type."""
    if envelope.action in WORK_ACTIONS:
        kind = f"task type {envelope.task_type or '(unknown)'}"
        state = State.idle if envelope.action is Action.run_premigrate else State.failed
    else:
        kind, state = f"command {envelope.command.value}", None
    return HandlerOutcome.failure(
        ERROR_NO_HANDLER, f"no handler is installed for {kind}", next_state=state
    )


def _state_after_stop(envelope: CommandEnvelope) -> Optional[State]:
    if envelope.action is Action.run_premigrate:
        return State.idle
    return State.stopped if envelope.action in WORK_ACTIONS else None


def _state_after_crash(envelope: CommandEnvelope) -> Optional[State]:
    if envelope.action is Action.run_premigrate:
        return State.idle
    return State.failed if envelope.action in WORK_ACTIONS else None


async def invoke(
    handler: Optional[Handler], ctx: HandlerContext, envelope: CommandEnvelope
) -> HandlerOutcome:
    """Run one handler call and turn however it ends into an outcome; never raises but for
    the asyncio cancellation of the calling task.

    Work stopped by a command settles `stopped` with no result (the stopping command answers);
    work stopped for shutdown leaves the state for a resume; an exception becomes `fail`.
    """
    if handler is None:
        return no_handler_outcome(envelope)
    try:
        outcome = await handler.handle(ctx, envelope)
    except WorkCancelled as exc:
        if exc.reason is CancelReason.shutdown:
            ctx.log.info("handler_interrupted")
            return HandlerOutcome.interrupted()
        ctx.log.info("handler_stopped")
        state = _state_after_stop(envelope)
        return HandlerOutcome() if state is None else HandlerOutcome.settled(state, "stopped")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the handler boundary: a plugin's bug must not reach the loop
        ctx.log.exception("handler_failed", handler=type(handler).__name__)
        message = scrub(f"{type(exc).__name__}: {exc}")
        return HandlerOutcome.failure(
            ERROR_HANDLER_FAILED, message, next_state=_state_after_crash(envelope)
        )
    if not isinstance(outcome, HandlerOutcome):
        message = f"handler {type(handler).__name__} returned {type(outcome).__name__}"
        return HandlerOutcome.failure(
            ERROR_HANDLER_FAILED, message, next_state=_state_after_crash(envelope)
        )
    return outcome
