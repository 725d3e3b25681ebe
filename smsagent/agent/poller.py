"""The poll loop: deliver owed results, fetch the command, decide, persist, dispatch.

One iteration is `poll_once()`; the loop around it only waits (for the schedule's delay, the
stop event, or a wake-up from settled work) and never blocks on work. Errors are classified by
`SmsError.action` and turned into an outcome for the schedule; anything else is caught once
here, logged with its traceback, and backed off at the cap, so one bad poll never ends the agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Final, Optional

import structlog

from smsagent.agent.backoff import Outcome, Schedule
from smsagent.agent.dispatch import AgentParts, Dispatcher, owe_now
from smsagent.agent.handlers import CommandEnvelope
from smsagent.agent.machine import (
    Action,
    Decision,
    State,
    UnknownCommand,
    UnknownNames,
    decide,
    is_active,
    parse_command,
)
from smsagent.agent.outbox import ResultKey
from smsagent.agent.store import TASK, ConnectionTracker, TaskRecord
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.errors import ErrorAction, SmsError
from smsagent.api.models import CommandBody, ShowCommandResponse
from smsagent.sdnotify import Notifier

log = structlog.get_logger(__name__)

CLOCK_SKEW_LIMIT_S: Final = 900.0
ERROR_NO_TASK_ID: Final = "SMSAGENT.NO_TASK_ID"


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


async def wait_for_any(events: tuple[asyncio.Event, ...], timeout_s: float) -> None:
    """Return when one of `events` is set or `timeout_s` has passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=max(timeout_s, 0.0), return_when="FIRST_COMPLETED")
    finally:
        for waiter in waiters:
            waiter.cancel()


class Poller:
    """Polls for commands until stopped.

    Args:
        parts: the shared seams.
        dispatcher: runs what is decided.
        identity: the server id and re-registration.
        schedule: the delay before each poll.
        connection: records poll health for `smsagent status`.
        notifier: systemd status.
    """

    def __init__(
        self,
        parts: AgentParts,
        dispatcher: Dispatcher,
        identity: Identity,
        schedule: Schedule,
        connection: ConnectionTracker,
        notifier: Notifier,
    ) -> None:
        self._parts = parts
        self._dispatcher = dispatcher
        self._identity = identity
        self._schedule = schedule
        self._connection = connection
        self._notifier = notifier
        self._unknown = UnknownNames()
        self.health = LoopHealth()

    async def run(self, stop: asyncio.Event, max_polls: Optional[int] = None) -> None:
        """Poll until `stop` is set (or `max_polls` polls have run)."""
        delay_s = self._schedule.first_delay()
        while not stop.is_set():
            await wait_for_any((stop, self._dispatcher.wake), delay_s)
            if stop.is_set():
                return
            self._dispatcher.wake.clear()
            self.health.polling_since = time.monotonic()
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
            self._connection.succeeded()
            await self._handle(response)
            await self._dispatcher.sync_copy_state()
        except SmsError as exc:
            return await self._on_error(exc)
        except Exception as exc:  # the loop boundary: log once, back off at the cap
            log.exception("poll_crashed", error=type(exc).__name__)
            self._connection.failed(f"unexpected {type(exc).__name__}", "unexpected")
            return Outcome.unexpected
        return Outcome.ok_active if self._active() else Outcome.ok_idle

    async def deliver_results(self) -> None:
        """Send owed command results, oldest first, as far as the server takes them."""
        if not self._parts.outbox.pending():
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

        report = await self._parts.outbox.deliver(send)
        if report.pending:
            log.info("results_pending", pending=report.pending, retry_in_s=report.retry_in_s)

    def _active(self) -> bool:
        record = self._parts.store.load(TASK).value
        return self._dispatcher.busy or (record is not None and is_active(record.state))

    async def _handle(self, response: ShowCommandResponse) -> None:
        command = parse_command(response.command_name)
        if command is None:
            return
        if isinstance(command, UnknownCommand):
            if self._unknown.first_sight(command):
                log.warning("unknown_command_ignored", name=command.name)
            return
        param = response.command_param
        task_id = param.task_id if param is not None and param.task_id else None
        if self._result_pending(task_id, command):
            return  # the same command again, before its result reached the server
        record = self._parts.store.load(TASK).value
        same_task = record is None or task_id is None or record.task_id == task_id
        state = record.state if record is not None else State.idle
        decision = decide(state, command, same_task=same_task)
        if _is_no_op(decision, state):
            return
        log.info(
            "command_decided",
            command=command.value,
            task_id=task_id,
            state=state.value,
            next_state=decision.next_state.value,
            action=decision.action.value,
        )
        bucket = param.bucket if param is not None else None
        self._carry_out(command, task_id, record, same_task, decision, bucket)

    def _carry_out(
        self,
        command: CommandName,
        task_id: Optional[str],
        record: Optional[TaskRecord],
        same_task: bool,
        decision: Decision,
        bucket: Optional[str],
    ) -> None:
        """Persist the decision, owe its immediate result, then dispatch its action."""
        now_s = self._parts.clock()
        takes_task = decision.action in (Action.start_task, Action.run_premigrate)
        if takes_task and task_id is None:
            key = ResultKey(None, command, _stamp(now_s))
            message = f"{command.value} came without a task id"
            owe_now(
                self._parts,
                key,
                CommandResult.fail,
                state=None,
                error_code=ERROR_NO_TASK_ID,
                message=message,
            )
            return
        if takes_task and (record is None or not same_task):
            assert task_id is not None
            record = TaskRecord.new(task_id, None, now_s)
            same_task = True
        sequence = _stamp(now_s)
        if record is not None and same_task and decision.takes_over(record.state):
            record = _advanced(record.apply(decision, command, now_s), decision, state_was=record)
            self._parts.store.save(TASK, record)
            sequence = record.command_seq
        if decision.result is not None:
            key = ResultKey(task_id, command, sequence)
            owe_now(
                self._parts,
                key,
                decision.result,
                state=decision.next_state,
                error_code=decision.error_code,
                message=decision.message,
            )
        task_type = record.task_type if record is not None and same_task else None
        envelope = CommandEnvelope(
            command, decision.action, sequence, task_id, task_type, bucket=bucket
        )
        self._dispatcher.dispatch(envelope)

    def _result_pending(self, task_id: Optional[str], command: CommandName) -> bool:
        return any(
            entry.key.startswith(f"{task_id or '-'}/{command.value}/")
            for entry in self._parts.outbox.pending()
        )

    async def _on_error(self, exc: SmsError) -> Outcome:
        self._connection.failed(str(exc), exc.action.value)
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
        record = self._parts.store.load(TASK).value
        task = "no task" if record is None else f"task {record.task_id} {record.state.value}"
        if record is not None and record.stage:
            task += f" ({record.stage})"
        return f"{outcome.kind.value}; {task}; {len(self._parts.outbox.pending())} results owed"


def _is_no_op(decision: Decision, state: State) -> bool:
    return (
        decision.action is Action.none and decision.result is None and decision.next_state is state
    )


def _advanced(record: TaskRecord, decision: Decision, state_was: TaskRecord) -> TaskRecord:
    """`record` with its command sequence advanced also when the state stayed, so that every
    command acted on keys its own result."""
    if decision.changes_state(state_was.state):
        return record
    return record.model_copy(update={"command_seq": record.command_seq + 1})


def _stamp(now_s: float) -> int:
    """A sequence for results that belong to no stored task: unique per millisecond."""
    return int(now_s * 1000)
