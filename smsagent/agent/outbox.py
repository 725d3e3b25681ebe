"""Durable, ordered, exactly-once-from-our-side delivery of command results.

A result is written to `outbox/` (one file per entry, named by its position) before it is
sent, and leaves only after the server accepted it. Each entry has a key (task id, command,
command sequence); enqueueing a key that is pending or was delivered recently keeps the one
there is, so a command the server repeats is answered once. Failed sends are retried with the
backoff schedule; the attempt count and the next attempt time are stored in the entry, so a
restart neither hammers the server nor forgets to retry.
"""

from __future__ import annotations

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
    created_at: float
    attempts: int = Field(default=0, ge=0)
    next_attempt_at: float = 0.0
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
        max_age_s: an entry older than this is dropped (to `outbox/rejected/`) unsent.
        remember: how many delivered keys are kept to recognise a repeat.
        rng: jitter source for retry delays.
        clock: wall-clock seconds (stored, so waits survive a restart).
    """

    def __init__(
        self,
        store: Store,
        *,
        backoff_cap_s: float = 300.0,
        max_age_s: float = 2 * 86400.0,
        remember: int = 256,
        rng: Optional[random.Random] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.directory: Final = store.outbox_dir
        self._backoff_cap_s = backoff_cap_s
        self._max_age_s = max_age_s
        self._remember = remember
        self._rng = rng or random.Random()
        self._clock = clock
        self._entries: dict[str, OutboxEntry] = {}
        self._delivered: list[str] = []
        self._last_position = 0

    def open(self) -> list[Path]:
        """Load the queue from disk; returns where unreadable entries were quarantined."""
        ensure_private_directory(self.directory)
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink()
        quarantined: list[Path] = []
        self._delivered = self._load_delivered(quarantined)
        for path in sorted(self.directory.glob("*.json")):
            if path.name == DELIVERED_FILE:
                continue
            entry = self._load_entry(path, quarantined)
            if entry is not None:
                self._entries[entry.key] = entry
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

    def enqueue(self, key: ResultKey, body: CommandBody) -> bool:
        """Persist a result for delivery; False (and nothing written) if the key is known."""
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
            created_at=self._clock(),
        )
        self._write(entry)
        self._last_position = entry.position
        self._entries[entry.key] = entry
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
        """
        sent = dropped = 0
        for entry in self.pending():
            if entry.key in self._delivered:
                self._remove(entry)
                continue
            now_s = self._clock()
            if now_s - entry.created_at > self._max_age_s:
                self._drop(entry, "expired before the server accepted it")
                dropped += 1
                continue
            if now_s < entry.next_attempt_at:
                return DeliveryReport(
                    sent, dropped, len(self._entries), entry.next_attempt_at - now_s
                )
            try:
                await send(entry.body())
            # Any failure to send leaves the result owed; only its classification differs.
            except Exception as exc:
                if is_permanent(exc):
                    self._drop(entry, str(exc))
                    dropped += 1
                    continue
                retry_in_s = self._postpone(entry, exc, now_s)
                return DeliveryReport(sent, dropped, len(self._entries), retry_in_s)
            self._mark_delivered(entry)
            sent += 1
        return DeliveryReport(sent, dropped, len(self._entries), None)

    def _postpone(self, entry: OutboxEntry, exc: Exception, now_s: float) -> float:
        attempts = entry.attempts + 1
        retry_after_s = exc.retry_after_s if isinstance(exc, SmsError) else None
        delay_s = honour_retry_after(
            error_delay_s(attempts, self._backoff_cap_s, self._rng),
            retry_after_s,
            self._backoff_cap_s,
        )
        updated = entry.model_copy(
            update={
                "attempts": attempts,
                "next_attempt_at": now_s + delay_s,
                "last_error": str(exc),
            }
        )
        self._write(updated)
        self._entries[entry.key] = updated
        log.warning(
            "result_send_failed",
            result_key=entry.key,
            attempts=attempts,
            retry_in_s=round(delay_s, 3),
            error=str(exc),
        )
        return delay_s

    def _mark_delivered(self, entry: OutboxEntry) -> None:
        # The key is recorded before the entry goes: a crash in between leaves an entry that
        # the next pass recognises as delivered, instead of a forgotten key.
        self._delivered = [*self._delivered, entry.key][-self._remember :]
        write_atomic(
            self.directory / DELIVERED_FILE,
            DeliveredKeys(keys=self._delivered).model_dump_json().encode("utf-8"),
        )
        self._remove(entry)
        log.info("result_delivered", result_key=entry.key, attempts=entry.attempts + 1)

    def _drop(self, entry: OutboxEntry, reason: str) -> None:
        rejected = self.directory / REJECTED_DIR
        ensure_private_directory(rejected)
        self._entry_path(entry).replace(rejected / self._entry_path(entry).name)
        self._entries.pop(entry.key, None)
        log.error("result_dropped", result_key=entry.key, reason=reason, moved_to=str(rejected))

    def _remove(self, entry: OutboxEntry) -> None:
        remove_durably(self._entry_path(entry))
        self._entries.pop(entry.key, None)

    def _entry_path(self, entry: OutboxEntry) -> Path:
        return self.directory / f"{entry.position:0{_ENTRY_DIGITS}d}.json"

    def _write(self, entry: OutboxEntry) -> None:
        write_atomic(self._entry_path(entry), entry.model_dump_json(indent=2).encode("utf-8"))
