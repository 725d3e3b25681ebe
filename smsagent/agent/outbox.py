"""Durable, ordered, exactly-once-from-our-side delivery of command results.

A result is written to `outbox/` (one file per entry, named by its position) before it is
sent, and leaves only after the server accepted it (a 2xx). Each entry has a key (task id,
command, command sequence); enqueueing a key that is pending or was delivered recently keeps
the one there is, so a command the server repeats is answered once. Failed sends are retried
with the backoff schedule; the attempt count and the last delay are stored in the entry, so a
restart neither hammers the server nor forgets to retry.

Time here is monotonic: an entry ages only while an agent runs and tries to deliver it, and it
is given up only when it is both old (`max_age_s` of trying) and has been tried many times, so
neither a step of the wall clock nor a long power-off drops a result. Files are written off
the event loop; the in-memory queue changes only on the loop, after its file did.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Literal, Optional

import structlog
from pydantic import Field, JsonValue, ValidationError

from smsagent.agent.backoff import error_delay_s, honour_retry_after
from smsagent.agent.machine import State
from smsagent.agent.store import (
    Record,
    Store,
    describe_invalid,
    ensure_private_directory,
    remove_durably,
    write_atomic,
)
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.errors import SmsError
from smsagent.api.models import CommandBody

log = structlog.get_logger(__name__)

DELIVERED_FILE: Final = "delivered.json"
REJECTED_DIR: Final = "rejected"
RESULT_KEY_FIELD: Final = "result_key"
_ENTRY_DIGITS: Final = 12


@dataclass(frozen=True)
class ResultKey:
    """Identifies one owed result: the task, the command, and the task's command sequence."""

    task_id: Optional[str]
    command: CommandName
    sequence: int

    @property
    def text(self) -> str:
        """The key as stored and sent in `result_detail.result_key`."""
        return f"{self.task_id or '-'}/{self.command.value}/{self.sequence}"


class OutboxEntry(Record):
    """One result waiting for delivery."""

    schema_version: Literal[1] = 1
    key: str = Field(min_length=1)
    position: int = Field(ge=1)
    command_name: CommandName
    result: CommandResult
    result_detail: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: float = Field(description="wall-clock seconds when owed, for people only")
    attempts: int = Field(default=0, ge=0)
    age_s: float = Field(default=0.0, ge=0.0, description="seconds owed while an agent ran")
    retry_delay_s: float = Field(default=0.0, ge=0.0, description="wait after the last failure")
    last_error: Optional[str] = None

    def body(self) -> CommandBody:
        """The request body of `POST .../command_result`."""
        return CommandBody(
            command_name=self.command_name, result=self.result, result_detail=self.result_detail
        )


class DeliveredKeys(Record):
    """`outbox/delivered.json`: keys delivered recently, oldest first."""

    schema_version: Literal[1] = 1
    keys: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class DeliveryReport:
    """What one `deliver()` pass did.

    Attributes:
        sent: entries the server accepted.
        dropped: entries given up (refused for good, or too old).
        pending: entries still waiting.
        retry_in_s: when the head entry is due, if one waits.
    """

    sent: int
    dropped: int
    pending: int
    retry_in_s: Optional[float]


def result_body(
    command: CommandName,
    result: CommandResult,
    *,
    task_id: Optional[str],
    state: Optional[State],
    stage: Optional[str] = None,
    error_code: Optional[str] = None,
    message: str = "",
    extra: Optional[Mapping[str, JsonValue]] = None,
) -> CommandBody:
    """A command result with the standard `result_detail` (task, state, stage, error, message)."""
    detail: dict[str, JsonValue] = {
        "task_id": task_id,
        "state": None if state is None else state.value,
        "stage": stage,
        "error_code": error_code,
        "message": message,
    }
    detail.update(extra or {})
    compact = {key: value for key, value in detail.items() if value not in (None, "")}
    return CommandBody(command_name=command, result=result, result_detail=compact)


def _never_permanent(_: Exception) -> bool:
    return False


class Outbox:
    """The queue of results in `<state_dir>/outbox/`.

    Args:
        store: the state directory (quarantine goes to its `corrupt/`).
        backoff_cap_s: longest wait between attempts of one entry.
        max_age_s: an entry owed this long (monotonic, while an agent ran) and tried at least
            `min_attempts` times is dropped (to `outbox/rejected/`) unsent.
        min_attempts: how often an entry is tried before it may be dropped.
        remember: how many delivered keys are kept to recognise a repeat.
        rng: jitter source for retry delays.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        store: Store,
        *,
        backoff_cap_s: float = 300.0,
        max_age_s: float = 2 * 86400.0,
        min_attempts: int = 20,
        remember: int = 256,
        rng: Optional[random.Random] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.directory: Final = store.outbox_dir
        self._backoff_cap_s = backoff_cap_s
        self._max_age_s = max_age_s
        self._min_attempts = min_attempts
        self._remember = remember
        self._rng = rng or random.Random()
        self._clock = clock
        self._entries: dict[str, OutboxEntry] = {}
        # Monotonic bookkeeping of this run: since when each entry's age was last counted, and
        # when it is due again.
        self._counted_at: dict[str, float] = {}
        self._due_at: dict[str, float] = {}
        self._delivered: list[str] = []
        self._last_position = 0

    def open(self) -> list[Path]:
        """Load the queue from disk; returns where unreadable entries were quarantined.

        An entry that failed before the restart waits its last delay again, from now.
        """
        ensure_private_directory(self.directory)
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink()
        quarantined: list[Path] = []
        self._delivered = self._load_delivered(quarantined)
        now_s = self._clock()
        for path in sorted(self.directory.glob("*.json")):
            if path.name == DELIVERED_FILE:
                continue
            entry = self._load_entry(path, quarantined)
            if entry is not None:
                self._entries[entry.key] = entry
                self._counted_at[entry.key] = now_s
                self._due_at[entry.key] = now_s + entry.retry_delay_s
                self._last_position = max(self._last_position, entry.position)
        return quarantined

    def _load_entry(self, path: Path, quarantined: list[Path]) -> Optional[OutboxEntry]:
        try:
            return OutboxEntry.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            reason = describe_invalid(exc) if isinstance(exc, ValidationError) else str(exc)
            moved = self._store.quarantine(path, reason)
            if moved is not None:
                quarantined.append(moved)
            return None

    def _load_delivered(self, quarantined: list[Path]) -> list[str]:
        path = self.directory / DELIVERED_FILE
        try:
            return DeliveredKeys.model_validate_json(path.read_bytes()).keys
        except FileNotFoundError:
            return []
        except (OSError, ValidationError) as exc:
            reason = describe_invalid(exc) if isinstance(exc, ValidationError) else str(exc)
            moved = self._store.quarantine(path, reason)
            if moved is not None:
                quarantined.append(moved)
            return []

    def knows(self, key: ResultKey) -> bool:
        """Whether a result with this key is waiting or was delivered recently."""
        return key.text in self._entries or key.text in self._delivered

    def pending(self) -> list[OutboxEntry]:
        """The waiting entries, oldest first."""
        return sorted(self._entries.values(), key=lambda entry: entry.position)

    def has_pending(self, prefix: str) -> bool:
        """Whether a waiting entry's key starts with `prefix`."""
        return any(key.startswith(prefix) for key in self._entries)

    async def enqueue(self, key: ResultKey, body: CommandBody) -> bool:
        """Persist a result for delivery; False (and nothing written) if the key is known.

        Raises:
            OSError: the entry could not be written; nothing is queued.
        """
        if self.knows(key):
            log.debug("result_already_queued", result_key=key.text)
            return False
        detail = {**body.result_detail, RESULT_KEY_FIELD: key.text}
        entry = OutboxEntry(
            key=key.text,
            position=self._last_position + 1,
            command_name=body.command_name,
            result=body.result,
            result_detail=detail,
            created_at=time.time(),
        )
        await asyncio.to_thread(self._write, entry)
        self._last_position = entry.position
        self._entries[entry.key] = entry
        self._counted_at[entry.key] = self._due_at[entry.key] = self._clock()
        log.info("result_queued", result_key=key.text, result=body.result.value)
        return True

    async def deliver(
        self,
        send: Callable[[CommandBody], Awaitable[object]],
        *,
        is_permanent: Callable[[Exception], bool] = _never_permanent,
    ) -> DeliveryReport:
        """Send the due entries in order; stop at the first failure, which waits its backoff.

        Args:
            send: posts one body; returning means the server accepted it (2xx).
            is_permanent: whether a send error can never succeed; such an entry is dropped.

        Raises:
            OSError: the outcome of a send could not be recorded (the entry stays owed).
        """
        sent = dropped = 0
        for entry in self.pending():
            if entry.key in self._delivered:
                await asyncio.to_thread(self._remove_file, entry)
                self._forget(entry)
                continue
            now_s = self._clock()
            entry = self._aged(entry, now_s)
            if self._expired(entry):
                await self._drop(entry, "owed too long without the server accepting it")
                dropped += 1
                continue
            due_at = self._due_at.get(entry.key, now_s)
            if now_s < due_at:
                return DeliveryReport(sent, dropped, len(self._entries), due_at - now_s)
            try:
                await send(entry.body())
            # Any failure to send leaves the result owed; only its classification differs.
            except Exception as exc:
                if is_permanent(exc):
                    await self._drop(entry, str(exc))
                    dropped += 1
                    continue
                retry_in_s = await self._postpone(entry, exc)
                return DeliveryReport(sent, dropped, len(self._entries), retry_in_s)
            await self._mark_delivered(entry)
            sent += 1
        return DeliveryReport(sent, dropped, len(self._entries), None)

    def _aged(self, entry: OutboxEntry, now_s: float) -> OutboxEntry:
        """`entry` with the time since its age was last counted added (in memory)."""
        counted_at = self._counted_at.get(entry.key, now_s)
        self._counted_at[entry.key] = now_s
        aged = entry.model_copy(update={"age_s": entry.age_s + max(now_s - counted_at, 0.0)})
        self._entries[entry.key] = aged
        return aged

    def _expired(self, entry: OutboxEntry) -> bool:
        return entry.age_s > self._max_age_s and entry.attempts >= self._min_attempts

    async def _postpone(self, entry: OutboxEntry, exc: Exception) -> float:
        attempts = entry.attempts + 1
        retry_after_s = exc.retry_after_s if isinstance(exc, SmsError) else None
        delay_s = honour_retry_after(
            error_delay_s(attempts, self._backoff_cap_s, self._rng),
            retry_after_s,
            self._backoff_cap_s,
        )
        updated = entry.model_copy(
            update={"attempts": attempts, "retry_delay_s": delay_s, "last_error": str(exc)}
        )
        # Due again later in any case: a failed write must not make the loop retry at once.
        self._due_at[entry.key] = self._clock() + delay_s
        log.warning(
            "result_send_failed",
            result_key=entry.key,
            attempts=attempts,
            retry_in_s=round(delay_s, 3),
            error=str(exc),
        )
        await asyncio.to_thread(self._write, updated)
        self._entries[entry.key] = updated
        return delay_s

    async def _mark_delivered(self, entry: OutboxEntry) -> None:
        # The key is recorded before the entry goes: a crash in between leaves an entry that
        # the next pass recognises as delivered, instead of a forgotten key.
        delivered = [*self._delivered, entry.key][-self._remember :]
        document = DeliveredKeys(keys=delivered).model_dump_json().encode("utf-8")
        await asyncio.to_thread(write_atomic, self.directory / DELIVERED_FILE, document)
        self._delivered = delivered
        await asyncio.to_thread(self._remove_file, entry)
        self._forget(entry)
        log.info("result_delivered", result_key=entry.key, attempts=entry.attempts + 1)

    async def _drop(self, entry: OutboxEntry, reason: str) -> None:
        rejected = self.directory / REJECTED_DIR
        path = self._entry_path(entry)

        def move() -> None:
            ensure_private_directory(rejected)
            path.replace(rejected / path.name)

        await asyncio.to_thread(move)
        self._forget(entry)
        log.error("result_dropped", result_key=entry.key, reason=reason, moved_to=str(rejected))

    def _forget(self, entry: OutboxEntry) -> None:
        self._entries.pop(entry.key, None)
        self._counted_at.pop(entry.key, None)
        self._due_at.pop(entry.key, None)

    def _remove_file(self, entry: OutboxEntry) -> None:
        remove_durably(self._entry_path(entry))

    def _entry_path(self, entry: OutboxEntry) -> Path:
        return self.directory / f"{entry.position:0{_ENTRY_DIGITS}d}.json"

    def _write(self, entry: OutboxEntry) -> None:
        write_atomic(self._entry_path(entry), entry.model_dump_json(indent=2).encode("utf-8"))
