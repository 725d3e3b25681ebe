"""The poll loop: deliver owed results, fetch the command, let the ledger accept it, dispatch.

One iteration is `poll_once()`; the loop around it only waits (for the schedule's delay, the
stop event, or a wake-up from settled work) and never blocks on work. Two polls start at least
`min_gap_s` apart, whatever woke the second, so no answer of the server and no handler that
settles at once can make the loop spin. Errors are classified by `SmsError.action` and turned
into an outcome for the schedule; anything else is caught once here, logged with its
traceback, and backed off at the cap, so one bad poll never ends the agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Final, Optional

import structlog

from smsagent.agent.backoff import MIN_POLL_GAP_S, Outcome, Schedule
from smsagent.agent.copystate import copy_state_for
from smsagent.agent.dispatch import AgentParts, Dispatcher
from smsagent.agent.ledger import Received
from smsagent.agent.machine import UnknownCommand, UnknownNames, parse_command
from smsagent.agent.store import ConnectionTracker
from smsagent.api.errors import ErrorAction, SmsError
from smsagent.api.models import CommandBody, PutCopyStateReq, ShowCommandResponse
from smsagent.sdnotify import Notifier
from smsagent.waits import wait_any

log = structlog.get_logger(__name__)

CLOCK_SKEW_LIMIT_S: Final = 900.0


@dataclass
class Identity:
    """This agent's source-server id, and how to get a new one when SMS forgot the old."""

    server_id: str
    reregister: Callable[[], Awaitable[str]]


@dataclass
class LoopHealth:
    """Whether the loop is waiting or since when it has been polling, for the watchdog."""

    polling_since: Optional[float] = None
    polls: int = 0

    def stalled_s(self, now_s: float) -> float:
        """How long the current poll has run (0 while waiting between polls)."""
        return 0.0 if self.polling_since is None else now_s - self.polling_since

    def is_healthy(self, now_s: float, limit_s: float) -> bool:
        """Whether the loop is waiting, or its poll has run less than `limit_s`."""
        return self.stalled_s(now_s) < limit_s


class Poller:
    """Polls for commands until stopped.

    Args:
        parts: the shared seams.
        dispatcher: runs what the ledger accepted.
        identity: the server id and re-registration.
        schedule: the delay before each poll.
        connection: records poll health for `smsagent status`.
        notifier: systemd status.
        min_gap_s: the shortest time between the starts of two polls.
    """

    def __init__(
        self,
        parts: AgentParts,
        dispatcher: Dispatcher,
        identity: Identity,
        schedule: Schedule,
        connection: ConnectionTracker,
        notifier: Notifier,
        min_gap_s: float = MIN_POLL_GAP_S,
    ) -> None:
        self._parts = parts
        self._dispatcher = dispatcher
        self._identity = identity
        self._schedule = schedule
        self._connection = connection
        self._notifier = notifier
        self._min_gap_s = min_gap_s
        self._unknown = UnknownNames()
        self._copy_state_sent: Optional[PutCopyStateReq] = None
        self.health = LoopHealth()

    async def run(self, stop: asyncio.Event, max_polls: Optional[int] = None) -> None:
        """Poll until `stop` is set (or `max_polls` polls have run)."""
        delay_s = self._schedule.first_delay()
        last_start: Optional[float] = None
        while not stop.is_set():
            await wait_any(stop, self._dispatcher.wake, timeout_s=delay_s)
            if last_start is not None:
                # A wake-up (a settled command) comes early; the floor still holds.
                await wait_any(stop, timeout_s=last_start + self._min_gap_s - time.monotonic())
            if stop.is_set():
                return
            self._dispatcher.wake.clear()
            last_start = self.health.polling_since = time.monotonic()
            try:
                outcome = await self.poll_once()
            finally:
                self.health.polling_since = None
            self.health.polls += 1
            delay_s = self._schedule.next_delay(outcome)
            self._notifier.status(self._status_text(outcome))
            if max_polls is not None and self.health.polls >= max_polls:
                return

    async def poll_once(self) -> Outcome:
        """One iteration; never raises but for cancellation."""
        try:
            await self.deliver_results()
            response = await self._parts.client.show_command(self._identity.server_id)
            await self._connection.succeeded()
            await self._accept(response)
            await self._report_copy_state()
        except SmsError as exc:
            return await self._on_error(exc)
        except OSError as exc:  # the state directory refused a write the loop needed
            log.error("poll_state_write_failed", error=str(exc))
            return Outcome.error()
        except Exception as exc:  # the loop boundary: log once, back off at the cap
            log.exception("poll_crashed", error=type(exc).__name__)
            await self._connection.failed(f"unexpected {type(exc).__name__}", "unexpected")
            return Outcome.unexpected
        return Outcome.ok_active if self._active() else Outcome.ok_idle

    async def deliver_results(self) -> None:
        """Send owed command results, oldest first, as far as the server takes them."""
        ledger = self._parts.ledger
        if not ledger.owed_count():
            return
        server_id = self._identity.server_id

        async def send(body: CommandBody) -> None:
            about = {
                "command": body.command_name.value,
                "task_id": body.result_detail.get("task_id"),
                "result": body.result.value,
            }
            log.info("result_sending", **about)
            await self._parts.client.update_command_result(server_id, body)
            log.info("result_sent", **about)

        report = await ledger.deliver(send)
        if report.pending:
            log.info("results_pending", pending=report.pending, retry_in_s=report.retry_in_s)

    def _active(self) -> bool:
        return self._dispatcher.busy or self._parts.ledger.is_active()

    async def _accept(self, response: ShowCommandResponse) -> None:
        command = parse_command(response.command_name)
        if command is None or isinstance(command, UnknownCommand):
            if isinstance(command, UnknownCommand) and self._unknown.first_sight(command):
                log.warning("unknown_command_ignored", name=command.name)
            self._parts.ledger.passed_over()
            return
        param = response.command_param
        received = Received(
            command,
            task_id=param.task_id if param is not None and param.task_id else None,
            bucket=param.bucket if param is not None else None,
        )
        envelope = await self._parts.ledger.accept(received)
        if envelope is not None:
            self._dispatcher.dispatch(envelope)

    async def _report_copy_state(self) -> None:
        """Tell SMS the source state that matches the task, if it changed since last told."""
        wanted = copy_state_for(self._parts.ledger.record)
        if wanted is None or wanted == self._copy_state_sent:
            return
        try:
            await self._parts.client.update_copy_state(self._identity.server_id, wanted)
        except SmsError as exc:
            log.warning("copy_state_failed", copystate=wanted.copystate.value, error=str(exc))
            return
        self._copy_state_sent = wanted
        log.info("copy_state_sent", copystate=wanted.copystate.value)

    async def _on_error(self, exc: SmsError) -> Outcome:
        await self._connection.failed(str(exc), exc.action.value)
        if exc.action is ErrorAction.reregister:
            log.warning("source_unknown_reregistering", error=str(exc))
            try:
                self._identity.server_id = await self._identity.reregister()
            except SmsError as again:
                log.warning("reregister_failed", error=str(again))
            return Outcome.error(exc.retry_after_s)
        if exc.action is ErrorAction.reauthenticate:
            self._diagnose_auth(exc)
        elif exc.action in (ErrorAction.forbidden, ErrorAction.fatal):
            log.error("poll_refused", error=str(exc), action=exc.action.value)
        else:
            log.warning("poll_failed", error=str(exc))
        return Outcome.from_error(exc)

    def _diagnose_auth(self, exc: SmsError) -> None:
        skew_s = exc.clock_skew_s(datetime.fromtimestamp(self._parts.clock(), timezone.utc))
        if skew_s is not None and abs(skew_s) > CLOCK_SKEW_LIMIT_S:
            log.error(
                "clock_skew",
                error_code="SMS.0205",
                skew_s=round(skew_s, 1),
                hint="the system clock differs from the server's by more than 15 minutes; "
                "fix the time (NTP) or AK/SK authentication keeps failing",
            )
        else:
            log.error("authentication_failed", error=str(exc), error_code="SMS.0202")

    def _status_text(self, outcome: Outcome) -> str:
        ledger = self._parts.ledger
        record = ledger.record
        task = "no task" if record is None else f"task {record.task_id} {record.state.value}"
        if record is not None and record.stage:
            task += f" ({record.stage})"
        text = f"{outcome.kind.value}; {task}; {ledger.owed_count()} results owed"
        return text if ledger.fault is None else f"FAULT {ledger.fault}; {text}"
