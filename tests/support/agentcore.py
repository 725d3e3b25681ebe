"""Seams for driving handlers in tests: settings, a handler context, a progress log, a runner
that starts handlers the way the poller does, and hand-installed plugin distributions.

    runner = Runner(store, settings, HandlerRegistry.load())
    work = runner.start_work(envelope(CommandName.START, Action.start_task, task=task))
    stop = await runner.command(envelope(CommandName.STOP, Action.cancel_task))
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import Distribution, distributions
from pathlib import Path
from typing import Any, Callable, Optional

import structlog
from pydantic import SecretStr

from smsagent.agent.handler_api import CommandEnvelope, Handler, HandlerContext, HandlerOutcome
from smsagent.agent.machine import Action
from smsagent.agent.registry import HandlerRegistry, invoke
from smsagent.agent.store import TASK, Store, TaskRecord
from smsagent.agent.work import CancelToken, WorkControl, WorkSlot
from smsagent.api.auth import TokenCredentials
from smsagent.api.client import SmsClient
from smsagent.api.enums import CommandName, SubtaskName
from smsagent.api.models import Task
from smsagent.config import Settings


def agent_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: token auth, a loopback endpoint, the state dir under `tmp_path`."""
    values: dict[str, Any] = {
        "endpoint": "http://127.0.0.1:9",
        "token": "test-token-0123456789",
        "state_dir": tmp_path / "state",
        "stop_grace": 1.0,
        "target_layout": "premounted",
    }
    values.update(overrides)
    return Settings(**values)


def idle_client(settings: Settings) -> SmsClient:
    """A client that is never opened: the handlers under test make no SMS calls, and one that
    tried would fail loudly on the closed session."""
    assert settings.token is not None
    return SmsClient(
        settings.endpoint, TokenCredentials(SecretStr(settings.token.get_secret_value()))
    )


@dataclass(frozen=True)
class Report:
    stage: SubtaskName
    bytes_done: int
    bytes_total: int
    force: bool


class ProgressLog:
    """A `ProgressReporter` that keeps every report and wakes waiters at a byte count."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self._waiters: list[tuple[int, asyncio.Event]] = []

    async def report(
        self,
        stage: SubtaskName,
        bytes_done: int,
        bytes_total: int,
        *,
        force: bool = False,
        bytes_sent: Optional[int] = None,
        compress_percent: Optional[float] = None,
    ) -> None:
        self.reports.append(Report(stage, bytes_done, bytes_total, force))
        for threshold, event in self._waiters:
            if bytes_done >= threshold:
                event.set()

    def reached(self, bytes_done: int) -> asyncio.Event:
        """An event set once a report reaches `bytes_done`."""
        event = asyncio.Event()
        self._waiters.append((bytes_done, event))
        return event


class StoreTasks:
    """The task state a handler sees, read from and written to the store on each call.

    Handler tests arrange records in the store and read back what the handler saved; the
    agent's own writer (`Ledger`) holds the record in memory and has tests of its own.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def record_of(self, task_id: Optional[str]) -> Optional[TaskRecord]:
        record = self.store.load(TASK).value
        return record if record is not None and record.task_id == task_id else None

    async def update(
        self, task_id: Optional[str], change: Callable[[TaskRecord], TaskRecord]
    ) -> Optional[TaskRecord]:
        record = self.record_of(task_id)
        if record is None:
            return None
        updated = change(record)
        self.store.save(TASK, updated)
        return updated

    async def forget(self, task_id: Optional[str]) -> bool:
        if self.record_of(task_id) is None:
            return False
        self.store.delete(TASK)
        return True


def settle_in_store(
    store: Store, task_id: Optional[str], outcome: HandlerOutcome, now_s: float
) -> Optional[TaskRecord]:
    """Save the state `outcome` settles in, as the agent's ledger does, if the store holds
    `task_id`'s record; the saved record, or None when nothing changed."""
    if outcome.next_state is None:
        return None
    record = store.load(TASK).value
    if record is None or record.task_id != task_id:
        return None
    settled = record.settle(
        outcome.next_state, now_s, error_code=outcome.error_code, message=outcome.message or None
    )
    store.save(TASK, settled)
    return settled


def handler_context(
    store: Store,
    settings: Settings,
    *,
    progress: Optional[ProgressLog] = None,
    cancel: Optional[CancelToken] = None,
    work: Optional[WorkControl] = None,
    task_id: Optional[str] = None,
) -> HandlerContext:
    """A `HandlerContext` over real seams (the store, a work slot) and an idle client."""
    return HandlerContext(
        client=idle_client(settings),
        tasks=StoreTasks(store),
        settings=settings,
        progress=progress or ProgressLog(),
        cancel=cancel or CancelToken(),
        work=work if work is not None else WorkSlot(),
        log=structlog.get_logger("test").bind(task_id=task_id),
        task_id=task_id,
    )


def write_distribution(
    site: Path,
    name: str,
    entry_points: Mapping[str, str],
    modules: Mapping[str, str],
    version: str = "1.0",
    group: str = "smsagent.handlers",
) -> Distribution:
    """Install a distribution by hand into `site`: its modules, METADATA and entry points.

    The caller puts `site` on `sys.path` so that the entry points import.
    """
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"[{group}]", *(f"{key} = {value}" for key, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    [dist] = [d for d in distributions(path=[str(site)]) if d.metadata["Name"] == name]
    return dist


class Runner:
    """Starts handlers the way the poller does: work in a real slot, commands as their own
    calls, both through `invoke`."""

    def __init__(self, store: Store, settings: Settings, registry: HandlerRegistry) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.slot: WorkSlot[HandlerOutcome] = WorkSlot()
        self.progress = ProgressLog()

    def remember(self, record: TaskRecord) -> None:
        self.store.save(TASK, record)

    def start_work(
        self, envelope: CommandEnvelope, handler: Optional[Handler] = None
    ) -> asyncio.Task[HandlerOutcome]:
        chosen = handler or self.registry.resolve(envelope)
        assert envelope.task_id is not None
        return self.slot.start(
            envelope.task_id,
            lambda token: invoke(
                chosen,
                handler_context(
                    self.store,
                    self.settings,
                    progress=self.progress,
                    cancel=token,
                    work=self.slot,
                    task_id=envelope.task_id,
                ),
                envelope,
            ),
        )

    async def command(self, envelope: CommandEnvelope) -> HandlerOutcome:
        ctx = handler_context(
            self.store,
            self.settings,
            progress=self.progress,
            work=self.slot,
            task_id=envelope.task_id,
        )
        return await invoke(self.registry.resolve(envelope), ctx, envelope)


def envelope(
    command: CommandName,
    action: Action,
    task_id: str = "t1",
    task: Optional[Task] = None,
    sequence: int = 1,
) -> CommandEnvelope:
    """A command as the poller would hand it over, for an FSCOPY_TEST task."""
    return CommandEnvelope(command, action, sequence, task_id, "FSCOPY_TEST", task)
