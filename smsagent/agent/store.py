"""Durable state under the state directory: versioned JSON documents, written atomically.

Every write goes to a temporary file (mode 0600) in the same directory, is fsynced, renamed
over the old file, and the directory is fsynced, so a crash leaves either the old or the new
document. A document that cannot be read or does not validate is moved to `corrupt/` with a
log line and reported to the caller as quarantined; the agent carries on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Generic, Literal, Optional, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from smsagent.agent.machine import Action, Decision, State
from smsagent.api.enums import CommandName

log = structlog.get_logger(__name__)

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
TEMP_SUFFIX: Final = ".tmp"


class Record(BaseModel):
    """A persisted document: immutable, versioned, tolerant of fields a newer agent added."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class AgentRecord(Record):
    """`agent.json`: who this agent is on the SMS side."""

    schema_version: Literal[1] = 1
    server_id: str = Field(min_length=1, description="source-server id SMS assigned")
    endpoint: str = Field(description="SMS endpoint the server id was registered at")
    fingerprint: str = Field(description="digest of the machine facts registered")
    registered_at: float = Field(description="when, epoch seconds")


class StageProgress(Record):
    """How far one stage got; `resume` is the handler's own resume point (JSON)."""

    done: bool = False
    bytes_done: int = Field(default=0, ge=0)
    bytes_total: int = Field(default=0, ge=0)
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    resume: dict[str, JsonValue] = Field(default_factory=dict)


class TaskRecord(Record):
    """`task.json`: the current task, its local state, and how far each stage got."""

    schema_version: Literal[1] = 1
    task_id: str = Field(min_length=1)
    task_type: Optional[str] = None
    state: State = State.idle
    stage: Optional[str] = Field(default=None, description="stage now running or last run")
    stages: dict[str, StageProgress] = Field(default_factory=dict)
    command: Optional[CommandName] = Field(default=None, description="command being handled")
    command_seq: int = Field(default=0, ge=0, description="transitions taken; keys results")
    action: Action = Action.none
    error_code: Optional[str] = None
    message: Optional[str] = None
    created_at: float
    updated_at: float

    @classmethod
    def new(cls, task_id: str, task_type: Optional[str], now_s: float) -> TaskRecord:
        """A fresh record for a task that has not run here."""
        return cls(task_id=task_id, task_type=task_type, created_at=now_s, updated_at=now_s)

    def apply(self, decision: Decision, command: CommandName, now_s: float) -> TaskRecord:
        """This record after taking `decision` for `command`; a transition advances the sequence."""
        sequence = self.command_seq + (1 if decision.changes_state(self.state) else 0)
        return self.model_copy(
            update={
                "state": decision.next_state,
                "command": command,
                "command_seq": sequence,
                "action": decision.action,
                "updated_at": now_s,
            }
        )

    def settle(
        self,
        state: State,
        now_s: float,
        *,
        error_code: Optional[str] = None,
        message: Optional[str] = None,
    ) -> TaskRecord:
        """This record with the state work or a handler ended in."""
        return self.model_copy(
            update={
                "state": state,
                "action": Action.none,
                "error_code": error_code,
                "message": message,
                "updated_at": now_s,
            }
        )

    def with_stage(self, stage: str, progress: StageProgress, now_s: float) -> TaskRecord:
        """This record with `stage` current and its progress replaced."""
        stages = {**self.stages, stage: progress}
        return self.model_copy(update={"stage": stage, "stages": stages, "updated_at": now_s})

    def begin_stage(self, stage: str, now_s: float) -> TaskRecord:
        """This record with `stage` current (its stored progress kept, for a resume); a task
        still `prechecking` is now `running`."""
        progress = self.progress_of(stage)
        if progress.started_at is None:
            progress = progress.model_copy(update={"started_at": now_s})
        state = State.running if self.state is State.prechecking else self.state
        return self.with_stage(stage, progress, now_s).model_copy(update={"state": state})

    def record_progress(
        self,
        stage: str,
        bytes_done: int,
        bytes_total: int,
        now_s: float,
        resume: Optional[Mapping[str, JsonValue]] = None,
    ) -> TaskRecord:
        """This record with how far `stage` got, and where a resume would continue."""
        changes: dict[str, object] = {"bytes_done": bytes_done, "bytes_total": bytes_total}
        if resume is not None:
            changes["resume"] = dict(resume)
        progress = self.progress_of(stage).model_copy(update=changes)
        return self.with_stage(stage, progress, now_s)

    def finish_stage(self, stage: str, now_s: float) -> TaskRecord:
        """This record with `stage` done; a later resume skips it."""
        progress = self.progress_of(stage)
        changes = {"done": True, "finished_at": now_s, "bytes_done": progress.bytes_total}
        return self.with_stage(stage, progress.model_copy(update=changes), now_s)

    def reset(self, now_s: float) -> TaskRecord:
        """This record back to `idle` with all stage progress dropped (the task id stays)."""
        return self.model_copy(
            update={
                "state": State.idle,
                "stage": None,
                "stages": {},
                "action": Action.none,
                "error_code": None,
                "message": None,
                "updated_at": now_s,
            }
        )

    def progress_of(self, stage: str) -> StageProgress:
        """The stored progress of `stage` (empty if it never ran)."""
        return self.stages.get(stage, StageProgress())


class ConnectionRecord(Record):
    """`connection.json`: the last successful poll and the last error, for `smsagent status`."""

    schema_version: Literal[1] = 1
    last_ok_at: Optional[float] = None
    last_error_at: Optional[float] = None
    last_error: Optional[str] = None
    last_error_action: Optional[str] = None
    consecutive_errors: int = Field(default=0, ge=0)
    updated_at: float = 0.0

    @property
    def healthy(self) -> bool:
        """Whether the last poll succeeded."""
        return self.consecutive_errors == 0


RecordT = TypeVar("RecordT", bound=Record)


@dataclass(frozen=True)
class Document(Generic[RecordT]):
    """A named document in the state directory and the model it holds."""

    filename: str
    model: type[RecordT]


AGENT: Final = Document("agent.json", AgentRecord)
TASK: Final = Document("task.json", TaskRecord)
CONNECTION: Final = Document("connection.json", ConnectionRecord)


@dataclass(frozen=True)
class Loaded(Generic[RecordT]):
    """A document read back: its value, or None; and where it went if it was quarantined."""

    value: Optional[RecordT]
    quarantined_to: Optional[Path] = None


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content, whole."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temp_name).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(temp_name).unlink()
        raise
    fsync_directory(path.parent)


def remove_durably(path: Path) -> bool:
    """Delete `path` and fsync its directory; False if it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_directory(path.parent)
    return True


def ensure_private_directory(directory: Path) -> None:
    """Create `directory` (and parents) and make it 0700, owner only."""
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o777 != DIR_MODE:
        log.warning("state_dir_mode_tightened", path=str(directory))
        directory.chmod(DIR_MODE)


def _temp_files(directory: Path) -> Iterator[Path]:
    return (p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file())


def describe_invalid(exc: ValidationError) -> str:
    """A short reason for a document that failed validation, without the values in it."""
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "document"
    return f"{where}: {first['msg']} ({exc.error_count()} problem(s))"


class Store:
    """The state directory: load and save documents, quarantine what cannot be read.

    Constructing a store touches nothing; `open()` creates the directories.

    Args:
        state_dir: the directory (the `state_dir` setting).
        clock: wall-clock seconds, for quarantine names.
    """

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.state_dir: Final = state_dir
        self.corrupt_dir: Final = state_dir / "corrupt"
        self.outbox_dir: Final = state_dir / "outbox"
        self._clock = clock

    def open(self) -> None:
        """Create the state directory (0700) and remove temporary files a crash left behind."""
        ensure_private_directory(self.state_dir)
        for leftover in _temp_files(self.state_dir):
            log.info("state_temp_file_removed", path=str(leftover))
            leftover.unlink()

    def path(self, document: Document[RecordT]) -> Path:
        """Where `document` lives."""
        return self.state_dir / document.filename

    def load(self, document: Document[RecordT]) -> Loaded[RecordT]:
        """Read a document; a missing one is `Loaded(None)`, a bad one is quarantined."""
        path = self.path(document)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return Loaded(None)
        except OSError as exc:
            return Loaded(None, self.quarantine(path, f"unreadable: {exc.strerror or exc}"))
        try:
            return Loaded(document.model.model_validate_json(data))
        except ValidationError as exc:
            return Loaded(None, self.quarantine(path, describe_invalid(exc)))

    def save(self, document: Document[RecordT], value: RecordT) -> None:
        """Write a document atomically (mode 0600)."""
        write_atomic(self.path(document), value.model_dump_json(indent=2).encode("utf-8"))

    def delete(self, document: Document[RecordT]) -> bool:
        """Remove a document; False if there was none."""
        return remove_durably(self.path(document))

    def quarantine(self, path: Path, reason: str) -> Optional[Path]:
        """Move a bad file to `corrupt/` under a unique name, log it, and return where it went.

        Returns None (and logs) if even the move fails; the caller carries on either way.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = self.corrupt_dir / f"{path.name}.{stamp}.{time.monotonic_ns()}"
        try:
            ensure_private_directory(self.corrupt_dir)
            path.replace(target)
            fsync_directory(path.parent)
        except OSError as exc:
            log.error("state_file_quarantine_failed", path=str(path), reason=reason, error=str(exc))
            return None
        log.warning("state_file_quarantined", path=str(path), moved_to=str(target), reason=reason)
        return target


class ConnectionTracker:
    """Keeps `connection.json` current without writing on every poll.

    A change between healthy and failing is written at once; otherwise at most every
    `min_interval_s`. Writes run off the event loop; one that fails (the state directory full
    or read-only) is logged and tried again at the next change, since the file only informs
    `smsagent status`. The last run's record is read when the tracker is made, so error counts
    carry over a restart.

    Args:
        store: where to write.
        min_interval_s: shortest period between writes that change nothing but times.
        clock: wall-clock seconds (recorded times).
        monotonic: monotonic seconds (write throttling).
    """

    def __init__(
        self,
        store: Store,
        min_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._monotonic = monotonic
        self._record = store.load(CONNECTION).value or ConnectionRecord()
        self._written = self._record
        self._written_at: Optional[float] = None

    @property
    def record(self) -> ConnectionRecord:
        """The latest state, written or not."""
        return self._record

    async def succeeded(self) -> None:
        """A poll succeeded."""
        now_s = self._clock()
        changes = {"last_ok_at": now_s, "consecutive_errors": 0, "updated_at": now_s}
        await self._update(self._record.model_copy(update=changes))

    async def failed(self, error: str, action: Optional[str] = None) -> None:
        """A poll failed with `error` (no secrets in it); `action` is the error's next step."""
        now_s = self._clock()
        changes = {
            "last_error_at": now_s,
            "last_error": error,
            "last_error_action": action,
            "consecutive_errors": self._record.consecutive_errors + 1,
            "updated_at": now_s,
        }
        await self._update(self._record.model_copy(update=changes))

    def flush(self) -> None:
        """Write the latest state if it differs from what is on disk (at shutdown)."""
        if self._record != self._written:
            try:
                self._store.save(CONNECTION, self._record)
            except OSError as exc:
                log.warning("connection_state_not_saved", error=str(exc))

    async def _update(self, record: ConnectionRecord) -> None:
        self._record = record
        flipped = record.healthy != self._written.healthy
        due = (
            self._written_at is None or self._monotonic() - self._written_at >= self._min_interval_s
        )
        if not (flipped or due):
            return
        self._written_at = self._monotonic()
        try:
            await asyncio.to_thread(self._store.save, CONNECTION, record)
        except OSError as exc:
            log.warning("connection_state_not_saved", error=str(exc))
            return
        self._written = record
