"""A file-level migration rig: the MIGRATE_FILE handler driven the way the poller drives it,
against the real emulator (over HTTP) and a real target host (sshd in a network namespace).

Tests speak to the rig in commands and observations only, so that a rig running the whole agent
process can stand in for this one:

    rig.create_task(syncing=False)
    await rig.start()                       # START, as the server would send it
    outcome = await rig.settled()           # the work's end: result, state, error, detail
    await rig.stop()                        # STOP (returns when the work has wound down)
    rig.progress_reports()                  # what SMS received on PUT progress

Here, START is decided by the machine, persisted, the task read from SMS and the work started in
a work slot through `invoke`; STOP and SKIP go to the built-in handlers. Progress goes through
the agent's own `TaskProgress` to the emulator.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import structlog
from pydantic import SecretStr

from smsagent.agent.handler_api import CommandEnvelope, Handler, HandlerContext, HandlerOutcome
from smsagent.agent.machine import WORK_ACTIONS, Action, State, decide, recover
from smsagent.agent.progress import TaskProgress
from smsagent.agent.registry import HandlerRegistry, invoke
from smsagent.agent.store import TASK, Store, TaskRecord
from smsagent.agent.work import CancelReason, CancelToken, WorkSlot
from smsagent.api.auth import TokenCredentials
from smsagent.api.client import SmsClient
from smsagent.api.enums import CommandName, CommandResult
from smsagent.api.models import (
    ConfigBody,
    ConfigurationRequestBody,
    SpeedLimit,
    SpeedLimitWindow,
)
from smsagent.config import Settings
from smsagent.migration.block.task import MigrateBlockHandler
from smsagent.migration.file_task import MigrateFileHandler
from smsagent.migration.options import TASK_TYPE, MigrateOptions
from tests.support.agentcore import StoreTasks, agent_settings, settle_in_store
from tests.support.blocktls import CertKey, ssh_public_key
from tests.support.emulator import EmulatorProcess
from tests.support.target import TargetHost
from tests.support.treecompare import compare_trees, rsync_differences

# Short waits so that retries and re-reads happen within a test's time.
FAST_OPTIONS = MigrateOptions(
    speed_limit_refresh_s=1.0,
    retry_base_delay_s=0.2,
    retry_max_delay_s=1.0,
    save_interval_s=0.5,
    sms_retry_delay_s=0.2,
)


@dataclass(frozen=True)
class Settled:
    """How a piece of work ended, as the server and the task record see it."""

    result: Optional[CommandResult]
    state: State
    error_code: Optional[str]
    message: str
    detail: dict[str, Any]
    ended_at: float
    """`time.monotonic()` when the work's task completed."""


@dataclass
class MigrationRig:
    """One source (a directory), one target host, one task in the emulator."""

    emulator: EmulatorProcess
    target: TargetHost
    source_root: Path
    settings: Settings
    store: Store
    client: SmsClient
    handler: Handler
    registry: HandlerRegistry
    source_id: str
    task_id: str = ""
    slot: WorkSlot[HandlerOutcome] = field(default_factory=WorkSlot)
    work: Optional[asyncio.Task[HandlerOutcome]] = None
    _work_settled: bool = False
    _progress: Optional[TaskProgress] = None
    task_type: str = TASK_TYPE

    # -- the task, as the console sets it up --

    def create_task(self, **fields: Any) -> str:
        """Create the MIGRATE_FILE task for the target host and give it the target's key."""
        body: dict[str, Any] = {
            "migration_ip": self.target.ip,
            "target_server": {"name": "target", "ip": self.target.ip},
        }
        body.update(fields)
        self.task_type = str(body.get("type", TASK_TYPE))
        self.task_id = self.emulator.create_task(self.source_id, **body)
        self.emulator.set_cert_key(self.task_id, private_key=self.target.client_private_key_pem)
        return self.task_id

    def create_block_task(self, certkey: CertKey, *, authorize: bool = True, **fields: Any) -> str:
        """Create a MIGRATE_BLOCK task whose certkey carries the data channel's certificates.

        The task's one private key is also its SSH key (as SMS hands out one): the target is
        told to accept it (unless `authorize` is off: a target the test authorizes itself).
        """
        task_id = self.create_task(type="MIGRATE_BLOCK", **fields)
        if authorize:
            public = ssh_public_key(certkey.private_key, self.settings.state_dir.parent)
            with self.target.authorized_keys.open("a") as keys:
                keys.write(public + "\n")
        self.emulator.set_cert_key(task_id, **certkey.fields())
        return task_id

    async def configure(self, **values: str) -> None:
        """Set configuration settings (`NUM_PROCESS_MIGRATE="2"`, ...) as the console does."""
        body = ConfigurationRequestBody(
            configurations=[ConfigBody(config_key=k, config_value=v) for k, v in values.items()]
        )
        await self.client.upload_special_configuration_setting(self.task_id, body)

    async def set_speed_limits(self, windows: Sequence[tuple[str, str, int]]) -> None:
        """Replace the task's speed-limit windows: `(start, end, Mbit/s)`."""
        body = SpeedLimit(
            speed_limit=[SpeedLimitWindow(start=s, end=e, speed=mbit) for s, e, mbit in windows]
        )
        await self.client.update_speed(self.task_id, body)

    # -- commands, as the server sends them --

    async def start(self) -> None:
        """START: the machine decides, the decision is saved, the work starts (if any)."""
        await asyncio.to_thread(self.emulator.action, self.task_id, "start")
        decision, record = self._decide(CommandName.START)
        assert decision.action in WORK_ACTIONS, f"START did nothing in state {record.state}"
        await self._start_work(CommandName.START, decision.action)

    async def _start_work(self, command: CommandName, action: Action) -> None:
        record = self.record()
        task = await self.client.show_task(self.task_id)
        envelope = CommandEnvelope(
            command, action, record.command_seq, self.task_id, self.task_type, task
        )
        handler = self.handler if self.task_type == TASK_TYPE else MigrateBlockHandler(FAST_OPTIONS)
        self._progress = TaskProgress(self.client, self.task_id, self.settings.progress_interval)
        progress = self._progress
        self._work_settled = False
        self.work = self.slot.start(
            self.task_id,
            lambda token: invoke(handler, self._context(token, progress), envelope),
        )

    async def stop(self) -> HandlerOutcome:
        """STOP: returns once the STOP handler answered (the work has wound down)."""
        return await self._command(CommandName.STOP)

    async def skip(self) -> HandlerOutcome:
        """SKIP: asks the running stage to skip, if it may."""
        return await self._command(CommandName.SKIP)

    async def finish(self) -> HandlerOutcome:
        """TASK_HAS_FINISHED: the task was cut over; any sync pass stops."""
        return await self._command(CommandName.TASK_HAS_FINISHED)

    async def shutdown(self) -> HandlerOutcome:
        """The agent shuts down mid-work: the work is stopped for shutdown and owes nothing."""
        assert self.work is not None, "nothing was started"
        await self.slot.stop(CancelReason.shutdown, self.settings.stop_grace + 10)
        outcome = self.work.result()
        if self._progress is not None:
            await self._progress.close()
        self._settle_work()
        return outcome

    async def restart(self) -> None:
        """The agent starts again: what the saved task says was under way resumes."""
        record = self.record()
        decision = recover(record.state, record.command)
        assert decision.action in WORK_ACTIONS, f"nothing to resume in state {record.state}"
        self.store.save(
            TASK, record.apply(decision, record.command or CommandName.START, time.time())
        )
        await self._start_work(record.command or CommandName.START, decision.action)

    async def settled(self, timeout_s: float = 120.0) -> Settled:
        """Wait for the running work to end and settle its outcome as the poller does."""
        assert self.work is not None, "nothing was started"
        outcome = await asyncio.wait_for(asyncio.shield(self.work), timeout_s)
        ended_at = time.monotonic()
        if self._progress is not None:
            await self._progress.close()
        self._settle_work()
        record = self.record()
        return Settled(
            outcome.result,
            record.state,
            outcome.error_code,
            outcome.message,
            dict(outcome.detail),
            ended_at,
        )

    # -- observations --

    def record(self) -> TaskRecord:
        """The task record in the state directory."""
        record = self.store.load(TASK).value
        assert record is not None and record.task_id == self.task_id
        return record

    async def wait_for_record(
        self, predicate: Callable[[TaskRecord], bool], timeout_s: float = 60.0
    ) -> TaskRecord:
        """Wait until the task record satisfies `predicate` (polled) and return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.store.load(TASK).value
            if record is not None and predicate(record):
                return record
            if self.work is not None and self.work.done():
                raise AssertionError(f"the work ended first: {self.work.result()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no such task record within {timeout_s} s: {record}")
            await asyncio.sleep(0.01)

    async def wait_for_stage(self, stage: str, timeout_s: float = 60.0) -> TaskRecord:
        """Wait until the task record shows `stage` running."""
        return await self.wait_for_record(
            lambda r: r.stage == stage and not r.progress_of(stage).done, timeout_s
        )

    def progress_reports(self) -> list[dict[str, Any]]:
        """The `PUT progress` bodies SMS received for the task, oldest first."""
        state = self.emulator.state()
        return [p for p in state["progress"] if p["task_id"] == self.task_id]

    def consistency_results(self) -> list[dict[str, Any]]:
        """The consistency results SMS holds for the task."""
        answer = self.emulator.request("GET", f"/v3/tasks/{self.task_id}/consistency-result")
        assert answer.status == 200, answer
        return [json.loads(text) for text in answer.json()["result_list"]]

    # -- plumbing --

    def _decide(self, command: CommandName) -> tuple[Any, TaskRecord]:
        record = self.store.load(TASK).value
        if record is None or record.task_id != self.task_id:
            # A new task replaces the old one, as the machine's other-task rules decide.
            record = TaskRecord.new(self.task_id, self.task_type, time.time())
        decision = decide(record.state, command)
        decided = record.apply(decision, command, time.time())
        self.store.save(TASK, decided)
        return decision, decided

    async def _command(self, command: CommandName) -> HandlerOutcome:
        decision, record = self._decide(command)
        if decision.action is Action.none:
            outcome = HandlerOutcome(decision.result, decision.next_state)
        else:
            envelope = CommandEnvelope(
                command, decision.action, record.command_seq, self.task_id, self.task_type
            )
            ctx = self._context(CancelToken(), TaskProgress(self.client, self.task_id, 1.0))
            outcome = await invoke(self.registry.resolve(envelope), ctx, envelope)
        # The poller settles the work's outcome as soon as it ends, before the outcome of the
        # command that stopped it.
        self._settle_work()
        settle_in_store(self.store, self.task_id, outcome, time.time())
        return outcome

    def _settle_work(self) -> None:
        if self.work is None or not self.work.done() or self._work_settled:
            return
        self._work_settled = True
        settle_in_store(self.store, self.task_id, self.work.result(), time.time())

    def _context(self, token: CancelToken, progress: TaskProgress) -> HandlerContext:
        return HandlerContext(
            client=self.client,
            tasks=StoreTasks(self.store),
            settings=self.settings,
            progress=progress,
            cancel=token,
            work=self.slot,
            log=structlog.get_logger("migrate-rig").bind(task_id=self.task_id),
            task_id=self.task_id,
            server_id=self.source_id,
        )


@asynccontextmanager
async def migration_rig(
    workdir: Path,
    emulator: EmulatorProcess,
    target: TargetHost,
    source_root: Path,
    *,
    handler: Optional[Handler] = None,
    **settings: Any,
) -> AsyncIterator[MigrationRig]:
    """A rig whose agent keeps its state under `workdir`, copying `source_root` to `target`.

    Args:
        handler: the MIGRATE_FILE handler (default: the one the entry point installs, with
            short timings).
        settings: `Settings` fields to override (`stop_grace`, `sync_interval`, ...).
    """
    values: dict[str, Any] = {
        "endpoint": emulator.url,
        "token": emulator.token,
        "source_root": source_root,
        "target_root": target.root,
        # The target root is a directory the test made: the copy goes into it as it is.
        "target_layout": "premounted",
        "stop_grace": 5.0,
        "transfer_retries": 3,
        "progress_interval": 1.0,
    }
    values.update(settings)
    agent = agent_settings(workdir, **values)
    store = Store(agent.state_dir)
    store.open()
    registry = HandlerRegistry.load()
    assert agent.token is not None
    client = SmsClient(agent.endpoint, TokenCredentials(SecretStr(agent.token.get_secret_value())))
    source_id = await asyncio.to_thread(emulator.register_source)
    async with client:
        rig = MigrationRig(
            emulator=emulator,
            target=target,
            source_root=source_root,
            settings=agent,
            store=store,
            client=client,
            handler=handler or MigrateFileHandler(FAST_OPTIONS),
            registry=registry,
            source_id=source_id,
        )
        try:
            yield rig
        finally:
            await rig.slot.stop(CancelReason.shutdown, 10.0)


def du_bytes(path: Path) -> int:
    """Bytes allocated below `path` on its own file system, as `du` counts them."""
    done = subprocess.run(
        ["du", "-sx", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[0])


def assert_identical(source: Path, target: Path) -> None:
    """Two independent opinions: the tree comparison and rsync's checksum dry run."""
    assert compare_trees(source, target) == []
    assert rsync_differences(source, target) == []


def assert_progress_rises_to_100(reports: list[dict[str, Any]], total_bytes: int) -> None:
    """Per stage: percent and bytes never fall, the total is the data, the last says 100."""
    assert reports, "SMS received no progress"
    for stage in {r["subtask_name"] for r in reports}:
        mine = [r for r in reports if r["subtask_name"] == stage]
        percents = [r["progress"] for r in mine]
        replicated = [r["replicatesize"] for r in mine]
        assert percents == sorted(percents), percents
        assert replicated == sorted(replicated), replicated
        assert {r["totalsize"] for r in mine} == {total_bytes}
        assert all(r["replicatesize"] <= total_bytes for r in mine)
        assert (mine[-1]["progress"], mine[-1]["replicatesize"]) == (100, total_bytes)
        assert all(r["progress"] < 100 for r in mine[:-1] if r["replicatesize"] < total_bytes)


def mover_processes() -> list[tuple[int, str]]:
    """This process's descendants that are rsync or ssh (pid, name)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        parents[int(entry.name)] = int(rest.split()[1])
        names[int(entry.name)] = head.partition("(")[2]
    found, frontier = [], [os.getpid()]
    while frontier:
        current = frontier.pop()
        kids = [pid for pid, parent in parents.items() if parent == current]
        frontier += kids
        found += [(pid, names[pid]) for pid in kids if names[pid] in ("rsync", "ssh")]
    return found


async def stop_in(rig: MigrationRig, stage: str, copy_stage: str, bound_s: float) -> float:
    """STOP as soon as `stage` runs (for the copy stage: once it copied something); the work
    must wind down within `bound_s` and say so. Returns how long the STOP took."""
    await rig.wait_for_record(
        lambda r: (
            r.stage == stage
            and not r.progress_of(stage).done
            and (stage != copy_stage or r.progress_of(stage).bytes_done > 0)
        ),
        timeout_s=300,
    )
    asked = time.monotonic()
    stopped = await rig.stop()
    took = time.monotonic() - asked
    print(f"STOP in {stage}: answered after {took:.2f} s")
    assert stopped.result is CommandResult.success, stopped.message
    assert took < bound_s, f"STOP in {stage} took {took:.1f} s"
    assert rig.record().state is State.stopped
    return took
