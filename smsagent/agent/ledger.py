"""The one writer of task state: the task record and the results owed to SMS.

The ledger holds the task record in memory (read from disk once, when opened) and is the only
code that writes `task.json` and the outbox. It offers what the loop needs:

- `accept(command)`: decide with `machine.decide`, persist the decision, owe an immediate
  answer, and return what the dispatcher should run (or None);
- `settle(envelope, outcome)`: owe the result (outbox first), then save the state it leads to;
- `recover()`: after a crash, finish a settle that was cut short, settle a stop that was under
  way, and return the work to resume;
- `update(task_id, change)` and `forget(task_id)` for handlers (stage progress, DELETE).

Persist before acting: the in-memory record changes only after its file did, and writes run
off the event loop, one at a time, in the order asked. A write that fails (disk full,
read-only) is retried with backoff until it succeeds, with the fault logged once and shown in
`health.json`; while the state directory fails, new commands are not acted on (they are not
answered either, so SMS offers them again).

A command that repeats without change (the same name, task and parameters, poll after poll,
with the local task as it was when the command was last acted on) is acted on once; repeats
are ignored while its handler runs, and after that until a delay has passed that starts at the
poll interval and doubles up to the backoff cap, so a control plane that offers the same
command for ever gets an answer now and then, not on every poll. Any other offer (or none)
in between makes the next one new.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Callable, Final, Optional

import structlog
from pydantic import JsonValue

from smsagent.agent.handler_api import SETTLED_STATES, CommandEnvelope, HandlerOutcome
from smsagent.agent.health import HealthFile
from smsagent.agent.machine import (
    WORK_ACTIONS,
    Action,
    Command,
    Decision,
    State,
    UnknownCommand,
    decide,
    is_active,
    recover,
)
from smsagent.agent.outbox import DeliveryReport, Outbox, ResultKey, result_body
from smsagent.agent.statedir import write_probe
from smsagent.agent.store import TASK, Store, TaskRecord
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.models import CommandBody

log = structlog.get_logger(__name__)

ERROR_NO_TASK_ID: Final = "SMSAGENT.NO_TASK_ID"
ERROR_BAD_TASK_ID: Final = "SMSAGENT.BAD_TASK_ID"
# SMS ids are UUIDs or hex strings; anything else is refused before it reaches a path or a file.
TASK_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
WRITE_RETRY_FIRST_S: Final = 1.0
WRITE_RETRY_CAP_S: Final = 30.0


@dataclass(frozen=True)
class Received:
    """One command as the poll returned it."""

    command: Command
    task_id: Optional[str] = None
    bucket: Optional[str] = None

    @property
    def fingerprint(self) -> str:
        """What makes two offers of a command the same offer."""
        name = self.command.name if isinstance(self.command, UnknownCommand) else self.command
        text = f"{name}\0{self.task_id}\0{self.bucket}"
        return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


Snapshot = tuple[Optional[str], Optional[State], int]


@dataclass
class _Taken:
    """The command last acted on, for recognising an unchanged repeat."""

    fingerprint: str
    acted_at: float
    hold_s: float
    settled_as: Optional[Snapshot] = None


class RepeatGuard:
    """Decides whether an offered command is an unchanged repeat of the last one acted on.

    Args:
        first_hold_s: how long a repeat is ignored after the first action (the poll interval).
        max_hold_s: the longest it is ignored (the backoff cap).
        monotonic: monotonic seconds.
    """

    def __init__(
        self,
        first_hold_s: float,
        max_hold_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._first_hold_s = first_hold_s
        self._max_hold_s = max(max_hold_s, first_hold_s)
        self._monotonic = monotonic
        self._taken: Optional[_Taken] = None

    def holds_back(self, received: Received, now: Snapshot) -> bool:
        """Whether `received` repeats the last command unchanged, inside its hold time."""
        taken = self._taken
        if taken is None or taken.fingerprint != received.fingerprint:
            return False
        if taken.settled_as is None:
            return True  # its handler still runs: the offer is the one being acted on
        if taken.settled_as != now:
            return False
        return self._monotonic() < taken.acted_at + taken.hold_s

    def took(self, received: Received, settled_as: Optional[Snapshot]) -> None:
        """`received` was acted on; `settled_as` is the task after it, if it settled at once."""
        taken = self._taken
        hold_s = self._first_hold_s
        if taken is not None and taken.fingerprint == received.fingerprint:
            hold_s = min(taken.hold_s * 2, self._max_hold_s)
        self._taken = _Taken(received.fingerprint, self._monotonic(), hold_s, settled_as)

    def settled(self, fingerprint: Optional[str], now: Snapshot) -> None:
        """The work or handler of the command with `fingerprint` settled; the task is `now`."""
        if self._taken is not None and self._taken.fingerprint == fingerprint:
            self._taken.settled_as = now

    def other(self) -> None:
        """Something else was offered (or nothing): the next offer is new."""
        self._taken = None


def valid_task_id(task_id: str) -> bool:
    """Whether `task_id` looks like an SMS id (and is safe in a path and a file)."""
    return TASK_ID_PATTERN.fullmatch(task_id) is not None


class Ledger:
    """The task record and the outbox, and the only writer of both.

    Args:
        store: the state directory.
        outbox: the owed results (opened).
        guard: recognises unchanged repeats.
        health: where a state-directory fault is shown.
        clock: wall-clock seconds (recorded in the task record).
    """

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        guard: RepeatGuard,
        health: Optional[HealthFile] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._guard = guard
        self._health = health
        self._clock = clock
        self._record: Optional[TaskRecord] = None
        self._lock: Optional[asyncio.Lock] = None
        self._fault: Optional[str] = None

    async def open(self) -> None:
        """Read the task record (a bad one is quarantined and the agent starts without it)."""
        self._lock = asyncio.Lock()
        loaded = await asyncio.to_thread(self._store.load, TASK)
        self._record = loaded.value

    # What the loop reads

    @property
    def record(self) -> Optional[TaskRecord]:
        """The task record, as persisted."""
        return self._record

    @property
    def fault(self) -> Optional[str]:
        """Why the state directory cannot be written now, or None."""
        return self._fault

    def record_of(self, task_id: Optional[str]) -> Optional[TaskRecord]:
        """The task record if it is `task_id`'s."""
        record = self._record
        return record if record is not None and record.task_id == task_id else None

    def is_active(self) -> bool:
        """Whether the task is in an active state."""
        return self._record is not None and is_active(self._record.state)

    def owed_count(self) -> int:
        """Results waiting for delivery."""
        return len(self._outbox.pending())

    async def deliver(self, send: Callable[[CommandBody], Awaitable[object]]) -> DeliveryReport:
        """Send owed results, oldest first, as far as the server takes them.

        Raises:
            OSError: a delivery could not be recorded; the result stays owed.
        """
        return await self._outbox.deliver(send)

    # Commands

    def passed_over(self) -> None:
        """A poll offered no command (or an unknown one)."""
        self._guard.other()

    async def accept(self, received: Received) -> Optional[CommandEnvelope]:
        """Take `received` as the machine decides: persist, owe an immediate answer.

        Returns:
            What the dispatcher runs (work or a command handler), or None.
        """
        command = received.command
        if isinstance(command, UnknownCommand):
            self._guard.other()
            return None
        if self._outbox.has_pending(f"{received.task_id or '-'}/{command.value}/"):
            return None  # the same command again, before its result reached the server
        if self._guard.holds_back(received, self._snapshot()):
            return None
        if self._fault is not None and not await self._try_task_write(self._record):
            log.info("command_deferred", command=command.value, reason=self._fault)
            return None
        if received.task_id is not None and not valid_task_id(received.task_id):
            await self._answer_bad_task_id(received, command)
            return None
        return await self._take(received, command)

    async def _take(self, received: Received, command: CommandName) -> Optional[CommandEnvelope]:
        record, task_id = self._record, received.task_id
        same_task = record is None or task_id is None or record.task_id == task_id
        state = record.state if record is not None else State.idle
        decision = decide(state, command, same_task=same_task)
        if _is_no_op(decision, state):
            return None
        log.info(
            "command_decided",
            command=command.value,
            task_id=task_id,
            state=state.value,
            next_state=decision.next_state.value,
            action=decision.action.value,
        )
        now_s = self._clock()
        takes_task = decision.action in (Action.start_task, Action.run_premigrate)
        if takes_task and task_id is None:
            key = ResultKey(None, command, _stamp(now_s))
            message = f"{command.value} came without a task id"
            await self._owe(key, CommandResult.fail, None, ERROR_NO_TASK_ID, message)
            self._guard.took(received, self._snapshot())
            return None
        if takes_task and (record is None or not same_task):
            assert task_id is not None
            record, same_task = TaskRecord.new(task_id, None, now_s), True
        sequence = _stamp(now_s)
        if record is not None and same_task and decision.takes_over(record.state):
            advanced = _advanced(record.apply(decision, command, now_s), decision, record.state)
            if not await self._try_task_write(advanced):
                return None
            sequence = advanced.command_seq
        if decision.result is not None:
            key = ResultKey(task_id, command, sequence)
            await self._owe(
                key, decision.result, decision.next_state, decision.error_code, decision.message
            )
        envelope = CommandEnvelope(
            command,
            decision.action,
            sequence,
            task_id,
            record.task_type if record is not None and same_task else None,
            bucket=received.bucket,
            fingerprint=received.fingerprint,
        )
        ran = decision.action is not Action.none and (
            task_id is not None or decision.action not in WORK_ACTIONS
        )
        self._guard.took(received, None if ran else self._snapshot())
        return envelope if ran else None

    async def _answer_bad_task_id(self, received: Received, command: CommandName) -> None:
        task_id = received.task_id or ""
        message = (
            f"{command.value} names a task id that is not an SMS id ({len(task_id)} characters, "
            f"starting {task_id[:16]!r}); it was not acted on"
        )
        log.warning("command_refused", command=command.value, error_code=ERROR_BAD_TASK_ID)
        key = ResultKey(None, command, _stamp(self._clock()))
        await self._owe(key, CommandResult.fail, None, ERROR_BAD_TASK_ID, message)
        self._guard.took(received, self._snapshot())

    # Outcomes

    async def settle(self, envelope: CommandEnvelope, outcome: HandlerOutcome) -> None:
        """Owe the result (outbox first), then save the state it leads to.

        A crash between the two is finished by `recover`: the queued result names the state.
        """
        if outcome.result is not None:
            record = self.record_of(envelope.task_id)
            state = outcome.next_state or (record.state if record is not None else None)
            body = result_body(
                envelope.command,
                outcome.result,
                task_id=envelope.task_id,
                state=state,
                stage=record.stage if record is not None else None,
                error_code=outcome.error_code,
                message=outcome.message,
                extra=outcome.detail,
            )
            await self._durably("result", lambda: self._outbox.enqueue(envelope.result_key, body))
        record = self.record_of(envelope.task_id)
        if outcome.next_state is not None and record is not None:
            settled = record.settle(
                outcome.next_state,
                self._clock(),
                error_code=outcome.error_code,
                message=outcome.message or None,
            )
            await self._durably("task", lambda: self._save_task(settled))
        self._guard.settled(envelope.fingerprint, self._snapshot())
        log.info(
            "command_settled",
            command=envelope.command.value,
            task_id=envelope.task_id,
            result=None if outcome.result is None else outcome.result.value,
            state=None if outcome.next_state is None else outcome.next_state.value,
            error_code=outcome.error_code,
            message=outcome.message or None,
        )

    async def recover(self) -> Optional[CommandEnvelope]:
        """After a restart: settle what was cut short, and return the work to resume."""
        record = self._record
        if record is None or await self._finish_interrupted_settle(record):
            return None
        decision = recover(record.state, record.command)
        command = record.command or CommandName.START
        if decision.next_state is not record.state or decision.result is not None:
            envelope = CommandEnvelope(command, decision.action, record.command_seq, record.task_id)
            outcome = HandlerOutcome(
                decision.result, decision.next_state, decision.error_code, decision.message
            )
            await self.settle(envelope, outcome)
        if decision.action not in WORK_ACTIONS:
            return None
        log.info("task_resumed", task_id=record.task_id, state=record.state.value)
        return CommandEnvelope(
            command, decision.action, record.command_seq, record.task_id, record.task_type
        )

    async def _finish_interrupted_settle(self, record: TaskRecord) -> bool:
        """Save the state a settle cut short by a crash led to; True if there was one.

        `settle` queues the result before it saves the state, so a task still active whose
        current command already has a result queued had ended: resuming it would run a
        finished step again. The queued result names the state it settled in.
        """
        if not is_active(record.state) or record.command is None:
            return False
        key = ResultKey(record.task_id, record.command, record.command_seq).text
        detail = next(
            (entry.result_detail for entry in self._outbox.pending() if entry.key == key), {}
        )
        state = _text(detail, "state")
        if state not in {settled.value for settled in SETTLED_STATES}:
            return False
        settled = record.settle(
            State(state),
            self._clock(),
            error_code=_text(detail, "error_code"),
            message=_text(detail, "message"),
        )
        await self._durably("task", lambda: self._save_task(settled))
        log.info("task_settled_at_restart", task_id=record.task_id, state=state, result_key=key)
        return True

    async def begin_continuous_sync(self, after: CommandEnvelope) -> Optional[CommandEnvelope]:
        """After the full copy of a task with `syncing`: its repeating sync passes, to run."""
        record = self.record_of(after.task_id)
        if record is None or record.state is not State.replicated:
            return None
        started = record.apply(
            Decision(State.running, Action.sync_task), after.command, self._clock()
        )
        await self._durably("task", lambda: self._save_task(started))
        log.info("continuous_sync_started", task_id=started.task_id)
        return CommandEnvelope(
            after.command,
            Action.sync_task,
            started.command_seq,
            started.task_id,
            started.task_type,
        )

    # What handlers change

    async def update(
        self, task_id: Optional[str], change: Callable[[TaskRecord], TaskRecord]
    ) -> Optional[TaskRecord]:
        """Apply `change` to `task_id`'s record and save it; None if the record is another's."""
        record = self.record_of(task_id)
        if record is None:
            return None
        updated = change(record)
        if updated != record:
            await self._durably("task", lambda: self._save_task(updated))
        return updated

    async def forget(self, task_id: Optional[str]) -> bool:
        """Remove `task_id`'s record; False if the ledger holds another (or none)."""
        if self.record_of(task_id) is None:
            return False
        await self._durably("task", self._delete_task)
        return True

    # Writing

    def _snapshot(self) -> Snapshot:
        record = self._record
        if record is None:
            return (None, None, 0)
        return (record.task_id, record.state, record.command_seq)

    async def _owe(
        self,
        key: ResultKey,
        result: CommandResult,
        state: Optional[State],
        error_code: Optional[str],
        message: str,
    ) -> None:
        body = result_body(
            key.command,
            result,
            task_id=key.task_id,
            state=state,
            error_code=error_code,
            message=message,
        )
        await self._durably("result", lambda: self._outbox.enqueue(key, body))

    async def _save_task(self, record: TaskRecord) -> None:
        await asyncio.to_thread(self._store.save, TASK, record)
        self._record = record

    async def _delete_task(self) -> None:
        await asyncio.to_thread(self._store.delete, TASK)
        self._record = None

    async def _try_task_write(self, record: Optional[TaskRecord]) -> bool:
        """Save `record` once (None: only probe that the state directory takes a file); False,
        with the fault recorded, when the state directory refuses."""
        try:
            async with self._locked():
                if record is not None:
                    await self._save_task(record)
                else:
                    failure = await asyncio.to_thread(write_probe, self._store.state_dir)
                    if failure is not None:
                        raise failure
        except OSError as exc:
            self._faulted("task", exc)
            return False
        self._recovered()
        return True

    async def _durably(self, what: str, write: Callable[[], Awaitable[object]]) -> None:
        """Run `write` (a coroutine function) until it succeeds, backing off while the state
        directory refuses."""
        delay_s = WRITE_RETRY_FIRST_S
        while True:
            try:
                async with self._locked():
                    await write()
            except OSError as exc:
                self._faulted(what, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, WRITE_RETRY_CAP_S)
                continue
            self._recovered()
            return

    def _locked(self) -> asyncio.Lock:
        assert self._lock is not None, "open() first"
        return self._lock

    def _faulted(self, what: str, exc: OSError) -> None:
        fault = f"state directory {self._store.state_dir}: {exc.strerror or exc}"
        if self._fault != fault:
            log.error("state_write_failed", what=what, error=fault, hint=_hint(exc))
        self._fault = fault
        if self._health is not None:
            self._health.set_fault(fault)

    def _recovered(self) -> None:
        if self._fault is None:
            return
        log.info("state_write_recovered", was=self._fault)
        self._fault = None
        if self._health is not None:
            self._health.clear_fault()


def _hint(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror and "space" in exc.strerror.lower():
        return "free some space; the agent retries by itself"
    return "the agent retries by itself until the state directory can be written"


def _is_no_op(decision: Decision, state: State) -> bool:
    return (
        decision.action is Action.none and decision.result is None and decision.next_state is state
    )


def _advanced(record: TaskRecord, decision: Decision, state_was: State) -> TaskRecord:
    """`record` with its command sequence advanced also when the state stayed, so that every
    command acted on keys its own result."""
    if decision.changes_state(state_was):
        return record
    return record.model_copy(update={"command_seq": record.command_seq + 1})


def _stamp(now_s: float) -> int:
    """A sequence for results that belong to no stored task: unique per millisecond."""
    return int(now_s * 1000)


def _text(detail: Mapping[str, JsonValue], name: str) -> Optional[str]:
    value = detail.get(name)
    return value if isinstance(value, str) else None
