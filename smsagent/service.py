"""Assembles the running agent and owns its lifecycle: open, register, poll, shut down.

`Service.run()` (for the CLI) wraps `serve()` (for tests). Signal handlers only record intent:
SIGTERM/SIGINT ask for a stop (a second SIGINT forces it), SIGHUP asks for a reload, which
stops the loop the same way and starts it again with the env file read anew; work interrupted
by either is left resumable and picked up where it was. The handlers stay installed for the
whole life of the event loop, across reloads, so a SIGHUP during a reload queues another one;
before and after the loop the process ignores SIGHUP rather than die of it.

Every long-lived task (the command runner, the work, the companions) is supervised: one that
fails outside a handler is logged with its cause, shown in `health.json`, and ends the agent
with exit status 1, so that systemd restarts it and the persisted state resumes the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Optional

import structlog

from smsagent import __version__
from smsagent.agent.backoff import Outcome, Schedule
from smsagent.agent.connect import make_client
from smsagent.agent.dispatch import AgentParts, Dispatcher, supervise
from smsagent.agent.health import HealthFile
from smsagent.agent.ledger import Ledger, RepeatGuard
from smsagent.agent.outbox import Outbox
from smsagent.agent.poller import Identity, LoopHealth, Poller
from smsagent.agent.preflight import local_preflight
from smsagent.agent.registration import register
from smsagent.agent.store import AGENT, ConnectionTracker, Store
from smsagent.api.errors import SmsError
from smsagent.config import ConfigError, Settings, load_settings
from smsagent.errors import StartupError
from smsagent.inventory.builder import (
    InventoryOptions,
    build_disk_info,
    build_registration_body,
    layout_fingerprint,
)
from smsagent.inventory.reporter import DiskReporter
from smsagent.sdnotify import Notifier
from smsagent.waits import wait_any, within

log = structlog.get_logger(__name__)

RESULT_FLUSH_TIMEOUT_S: Final = 5.0
REGISTRATION_CAP_S: Final = 300.0
EXIT_OK: Final = 0
EXIT_CRASHED: Final = 1


def stall_limit_s(settings: Settings) -> float:
    """How long one poll may take before the watchdog calls the loop hung."""
    return 3 * (settings.connect_timeout + settings.read_timeout) + 30.0


@dataclass
class Signals:
    """What the operator asked for through signals; lives as long as the event loop."""

    stop: asyncio.Event
    stop_requested: bool = False
    reload: bool = False
    interrupts: int = 0


@dataclass
class Opened:
    """The local parts of a running agent."""

    parts: AgentParts
    store: Store
    connection: ConnectionTracker
    health: HealthFile


class Service:
    """The agent.

    Args:
        settings: validated settings.
        env_file: re-read on SIGHUP (None: the default file, if present).
        notifier: systemd notifications.
        max_polls: stop after this many polls (tests and benchmarks).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        env_file: Optional[Path] = None,
        notifier: Optional[Notifier] = None,
        max_polls: Optional[int] = None,
    ) -> None:
        self.settings = settings
        self._env_file = env_file
        self._notifier = notifier or Notifier()
        self._max_polls = max_polls
        self._crash: Optional[str] = None

    def run(self) -> int:
        """Serve until stopped, reloading on SIGHUP; returns the exit code."""
        # Outside the event loop a SIGHUP has nothing to reload, and must not end the agent.
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            return asyncio.run(self._serve_all())
        finally:
            signal.signal(signal.SIGHUP, previous)

    async def serve(self) -> int:
        """Serve until SIGTERM/SIGINT (or `max_polls`); returns the exit code."""
        signals = Signals(asyncio.Event())
        with _handling_signals(signals):
            return await self._serve_once(signals)

    async def _serve_all(self) -> int:
        signals = Signals(asyncio.Event())
        with _handling_signals(signals):
            while True:
                code = await self._serve_once(signals)
                if code != EXIT_OK or signals.stop_requested or not signals.reload:
                    return code
                # No await from here to the next start: a signal handler runs between awaits
                # only, so a SIGHUP from now on sets both flags again and is not lost.
                signals.reload = False
                signals.stop.clear()
                self._reload_settings()

    def _reload_settings(self) -> None:
        try:
            self.settings = load_settings(self._env_file)
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc), hint="keeping the previous settings")
        else:
            log.info("settings_reloaded")

    async def _serve_once(self, signals: Signals) -> int:
        self._crash = None
        async with self._opened() as opened:
            health = LoopHealth()
            watchdog = asyncio.ensure_future(self._keep_watchdog(health))
            # Ready once the local parts work: registration may wait for SMS for a long
            # time, and systemd must not kill an agent for an outage it waits out (the
            # watchdog and STATUS= tell the rest).
            self._notifier.ready()
            try:
                identity = await self._startup(opened, signals.stop)
                if identity is not None:
                    await self._main(opened, identity, signals.stop, health)
            finally:
                watchdog.cancel()
        return EXIT_OK if self._crash is None else EXIT_CRASHED

    @contextlib.asynccontextmanager
    async def _opened(self) -> AsyncIterator[Opened]:
        settings = self.settings
        store = Store(settings.state_dir)
        health = HealthFile(settings.state_dir)
        # The same verdict `smsagent check` shows: what stops the agent stops it here, before
        # it changes anything.
        preflight = local_preflight(settings.state_dir, settings.disabled_handlers)
        registry = preflight.require()
        for warning in preflight.state_dir.warnings:
            log.warning("state_dir_warning", warning=warning)
        try:
            store.open()
            outbox = Outbox(store, backoff_cap_s=settings.backoff_cap)
            outbox.open()
            health.open()
        except OSError as exc:
            health.close()
            raise StartupError(f"state directory {settings.state_dir}: {exc}") from None
        guard = RepeatGuard(settings.poll_interval, settings.backoff_cap)
        ledger = Ledger(store, outbox, guard, health)
        connection = ConnectionTracker(store)
        try:
            await ledger.open()
            async with make_client(settings) as client:
                parts = AgentParts(client, ledger, registry, settings)
                yield Opened(parts, store, connection, health)
        finally:
            connection.flush()
            health.close()

    async def _startup(self, opened: Opened, stop: asyncio.Event) -> Optional[Identity]:
        """Register (retrying with backoff until stopped); None when stopped first."""
        log.info("agent_starting", version=__version__, endpoint=self.settings.endpoint)
        self._notifier.status("registering")
        schedule = _schedule(self.settings)
        while not stop.is_set():
            try:
                server_id = await self._register(opened, forget_id=False)
            except SmsError as exc:
                log.warning("registration_failed", error=str(exc), action=exc.action.value)
                delay_s = schedule.next_delay(Outcome.from_error(exc))
                await wait_any(stop, timeout_s=min(delay_s, REGISTRATION_CAP_S))
                continue
            reregister = functools.partial(self._register, opened, forget_id=True)
            return Identity(server_id, reregister)
        return None

    async def _register(self, opened: Opened, *, forget_id: bool) -> str:
        if forget_id:
            await asyncio.to_thread(opened.store.delete, AGENT)
        options = InventoryOptions(root_mount_point=str(self.settings.source_root))
        body = await asyncio.to_thread(
            build_registration_body, self.settings.server_name, options=options
        )
        record = await register(
            opened.parts.client,
            opened.store,
            endpoint=self.settings.endpoint,
            body=body,
            fingerprint=layout_fingerprint(body),
            accept_privacy_statement=self.settings.accept_privacy_statement,
        )
        return record.server_id

    async def _main(
        self, opened: Opened, identity: Identity, stop: asyncio.Event, health: LoopHealth
    ) -> None:
        parts = opened.parts

        def crashed(name: str, exc: BaseException) -> None:
            self._crashed(opened, stop, name, exc)

        dispatcher = Dispatcher(parts, lambda: identity.server_id, crashed)
        await dispatcher.open()
        resumed = await parts.ledger.recover()
        if resumed is not None:
            dispatcher.dispatch(resumed)
        poller = Poller(
            parts, dispatcher, identity, _schedule(self.settings), opened.connection, self._notifier
        )
        poller.health = health
        reporter = asyncio.ensure_future(self._report_disks(opened, identity, stop))
        supervise(reporter, "disk_reporter", crashed)
        self._notifier.status(f"registered as {identity.server_id}; polling")
        log.info("agent_ready", server_id=identity.server_id)
        try:
            await poller.run(stop, self._max_polls)
        finally:
            self._notifier.stopping()
            log.info("agent_stopping")
            reporter.cancel()
            ended = await dispatcher.close(self.settings.stop_grace)
            log.info("work_ended", how=ended.value)
            await self._flush_results(poller)
            log.info("agent_stopped")

    def _crashed(self, opened: Opened, stop: asyncio.Event, name: str, exc: BaseException) -> None:
        """A supervised part failed outside any handler: say so and end the agent (exit 1)."""
        error = f"{type(exc).__name__}: {exc}"
        log.error(
            "component_crashed",
            component=name,
            error=error,
            exc_info=(type(exc), exc, exc.__traceback__),
            hint="the agent exits with status 1; systemd starts it again and the task resumes",
        )
        opened.health.set_fault(f"{name} crashed: {error}")
        self._crash = name
        stop.set()

    async def _flush_results(self, poller: Poller) -> None:
        try:
            await within(poller.deliver_results(), RESULT_FLUSH_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("results_not_flushed", error="the server took too long")
        except (SmsError, OSError) as exc:
            log.warning("results_not_flushed", error=str(exc))

    async def _report_disks(self, opened: Opened, identity: Identity, stop: asyncio.Event) -> None:
        options = InventoryOptions(root_mount_point=str(self.settings.source_root))
        agent = opened.store.load(AGENT).value
        reporter = DiskReporter(
            collect=functools.partial(build_disk_info, options=options),
            sent_fingerprint=agent.fingerprint if agent is not None else None,
            sent_at=time.monotonic(),
        )
        await reporter.run(
            opened.parts.client, identity.server_id, stop, self.settings.disk_report_interval
        )

    async def _keep_watchdog(self, health: LoopHealth) -> None:
        interval_s = self._notifier.watchdog_interval_s()
        if interval_s is None:
            return
        limit_s = stall_limit_s(self.settings)
        while True:
            if health.is_healthy(time.monotonic(), limit_s):
                self._notifier.watchdog()
            else:
                log.error("loop_stalled", stalled_s=round(health.stalled_s(time.monotonic()), 1))
            await asyncio.sleep(interval_s)


def _schedule(settings: Settings) -> Schedule:
    return Schedule(
        settings.poll_interval,
        settings.active_poll_interval,
        settings.backoff_cap,
        random.Random(),
    )


@contextlib.contextmanager
def _handling_signals(signals: Signals) -> Iterator[None]:
    """SIGTERM/SIGINT stop (a second SIGINT forces), SIGHUP reloads; on exit each signal gets
    back the disposition it had before (never the default, which for SIGHUP ends the process).

    A repeated SIGTERM only repeats the request: tools such as `timeout` send it to the process
    and to its group, and systemd may resend it; neither means "skip the clean stop".
    """
    loop = asyncio.get_running_loop()

    def stop(name: str) -> None:
        log.info("signal_received", signal=name)
        if name == "SIGINT":
            signals.interrupts += 1
            if signals.interrupts > 1:
                raise SystemExit(1)  # a second Ctrl-C: the operator wants out now
        signals.stop_requested = True
        signals.stop.set()

    def reload() -> None:
        if not signals.reload:
            log.info("signal_received", signal="SIGHUP")
        signals.reload = True
        signals.stop.set()

    handlers: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: lambda: stop("SIGTERM"),
        signal.SIGINT: lambda: stop("SIGINT"),
        signal.SIGHUP: reload,
    }
    previous = {signum: signal.getsignal(signum) for signum in handlers}
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    try:
        yield
    finally:
        for signum, disposition in previous.items():
            loop.remove_signal_handler(signum)
            if disposition is not None:  # None: set outside Python, left as the loop leaves it
                signal.signal(signum, disposition)
