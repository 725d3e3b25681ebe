"""Assembles the running agent and owns its lifecycle: open, register, poll, shut down.

`Service.run()` (for the CLI) wraps `serve()` (for tests). Signal handlers only record intent:
SIGTERM/SIGINT ask for a stop (a second one forces it), SIGHUP asks for a reload, which stops
the loop the same way and starts it again with the env file read anew; work interrupted by
either is left resumable and picked up where it was.
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
from smsagent.agent.dispatch import AgentParts, Dispatcher
from smsagent.agent.handlers import HandlerLoadError, HandlerRegistry
from smsagent.agent.outbox import Outbox
from smsagent.agent.poller import Identity, LoopHealth, Poller
from smsagent.agent.registration import register
from smsagent.agent.store import AGENT, ConnectionTracker, Store
from smsagent.api.auth import AkSkCredentials, Credentials, IamTokenCredentials, TokenCredentials
from smsagent.api.client import SmsClient
from smsagent.api.errors import SmsError
from smsagent.config import AuthMode, ConfigError, Settings, load_settings
from smsagent.errors import StartupError
from smsagent.inventory.builder import (
    InventoryOptions,
    build_disk_info,
    build_registration_body,
    layout_fingerprint,
)
from smsagent.inventory.reporter import DiskReporter
from smsagent.sdnotify import Notifier

log = structlog.get_logger(__name__)

RESULT_FLUSH_TIMEOUT_S: Final = 5.0
REGISTRATION_CAP_S: Final = 300.0


def make_credentials(settings: Settings) -> Credentials:
    """The credentials object for the configured auth mode."""
    mode = settings.auth_mode
    if mode is AuthMode.aksk:
        assert settings.ak is not None and settings.sk is not None
        return AkSkCredentials(settings.ak, settings.sk, settings.project_id)
    if mode is AuthMode.token:
        assert settings.token is not None
        return TokenCredentials(settings.token, settings.project_id)
    assert settings.iam_user and settings.iam_password and settings.iam_domain
    return IamTokenCredentials(
        iam_endpoint=settings.iam_endpoint,
        user=settings.iam_user,
        password=settings.iam_password,
        domain=settings.iam_domain,
        project_id=settings.project_id,
        refresh_margin_s=settings.iam_token_refresh_margin,
    )


def make_client(settings: Settings) -> SmsClient:
    """The SMS client the settings describe."""
    return SmsClient(
        settings.endpoint,
        make_credentials(settings),
        connect_timeout_s=settings.connect_timeout,
        read_timeout_s=settings.read_timeout,
        verify_tls=settings.verify_tls,
        ca_bundle=settings.ca_bundle,
        proxy=settings.proxy,
    )


def stall_limit_s(settings: Settings) -> float:
    """How long one poll may take before the watchdog calls the loop hung."""
    return 3 * (settings.connect_timeout + settings.read_timeout) + 30.0


@dataclass
class Signals:
    """What the operator asked for through signals."""

    stop: asyncio.Event
    reload: bool = False
    interrupts: int = 0


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

    def run(self) -> int:
        """Serve until stopped, reloading on SIGHUP; returns the exit code."""
        while True:
            signals = asyncio.run(self._serve_once())
            if not signals.reload:
                return 0
            try:
                self.settings = load_settings(self._env_file)
            except ConfigError as exc:
                log.error("reload_refused", error=str(exc), hint="keeping the previous settings")
            else:
                log.info("settings_reloaded")

    async def serve(self) -> int:
        """Serve until SIGTERM/SIGINT (or `max_polls`); returns the exit code."""
        await self._serve_once()
        return 0

    async def _serve_once(self) -> Signals:
        signals = Signals(asyncio.Event())
        with _handling_signals(signals):
            async with self._opened() as (parts, connection):
                health = LoopHealth()
                watchdog = asyncio.ensure_future(self._keep_watchdog(health))
                # Ready once the local parts work: registration may wait for SMS for a long
                # time, and systemd must not kill an agent for an outage it waits out (the
                # watchdog and STATUS= tell the rest).
                self._notifier.ready()
                try:
                    identity = await self._startup(parts, signals.stop)
                    if identity is not None:
                        await self._main(parts, connection, identity, signals.stop, health)
                finally:
                    watchdog.cancel()
        return signals

    @contextlib.asynccontextmanager
    async def _opened(self) -> AsyncIterator[tuple[AgentParts, ConnectionTracker]]:
        settings = self.settings
        store = Store(settings.state_dir)
        try:
            store.open()
            outbox = Outbox(store, backoff_cap_s=settings.backoff_cap)
            outbox.open()
            registry = HandlerRegistry.load(settings.disabled_handlers)
        except HandlerLoadError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"state directory {settings.state_dir}: {exc}") from None
        connection = ConnectionTracker(store)
        try:
            async with make_client(settings) as client:
                yield AgentParts(client, store, outbox, registry, settings), connection
        finally:
            connection.flush()

    async def _startup(self, parts: AgentParts, stop: asyncio.Event) -> Optional[Identity]:
        """Register (retrying with backoff until stopped); None when stopped first."""
        log.info("agent_starting", version=__version__, endpoint=self.settings.endpoint)
        self._notifier.status("registering")
        schedule = _schedule(self.settings)
        while not stop.is_set():
            try:
                server_id = await self._register(parts, forget_id=False)
            except SmsError as exc:
                log.warning("registration_failed", error=str(exc), action=exc.action.value)
                delay_s = schedule.next_delay(Outcome.from_error(exc))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(delay_s, REGISTRATION_CAP_S))
                continue
            reregister = functools.partial(self._register, parts, forget_id=True)
            return Identity(server_id, reregister)
        return None

    async def _register(self, parts: AgentParts, *, forget_id: bool) -> str:
        if forget_id:
            parts.store.delete(AGENT)
        options = InventoryOptions(root_mount_point=str(self.settings.source_root))
        body = await asyncio.to_thread(
            build_registration_body, self.settings.server_name, options=options
        )
        record = await register(
            parts.client,
            parts.store,
            endpoint=self.settings.endpoint,
            body=body,
            fingerprint=layout_fingerprint(body),
            accept_privacy_statement=self.settings.accept_privacy_statement,
        )
        return record.server_id

    async def _main(
        self,
        parts: AgentParts,
        connection: ConnectionTracker,
        identity: Identity,
        stop: asyncio.Event,
        health: LoopHealth,
    ) -> None:
        dispatcher = Dispatcher(parts, lambda: identity.server_id)
        await dispatcher.open()
        dispatcher.resume_after_restart()
        poller = Poller(
            parts, dispatcher, identity, _schedule(self.settings), connection, self._notifier
        )
        poller.health = health
        companions = [asyncio.ensure_future(self._report_disks(parts, identity, stop))]
        self._notifier.status(f"registered as {identity.server_id}; polling")
        log.info("agent_ready", server_id=identity.server_id)
        try:
            await poller.run(stop, self._max_polls)
        finally:
            self._notifier.stopping()
            log.info("agent_stopping")
            for companion in companions:
                companion.cancel()
            ended = await dispatcher.close(self.settings.stop_grace)
            log.info("work_ended", how=ended.value)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(poller.deliver_results(), RESULT_FLUSH_TIMEOUT_S)
            log.info("agent_stopped")

    async def _report_disks(
        self, parts: AgentParts, identity: Identity, stop: asyncio.Event
    ) -> None:
        options = InventoryOptions(root_mount_point=str(self.settings.source_root))
        agent = parts.store.load(AGENT).value
        reporter = DiskReporter(
            collect=functools.partial(build_disk_info, options=options),
            sent_fingerprint=agent.fingerprint if agent is not None else None,
            sent_at=time.monotonic(),
        )
        await reporter.run(
            parts.client, identity.server_id, stop, self.settings.disk_report_interval
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
    """SIGTERM/SIGINT stop (a second SIGINT forces), SIGHUP reloads; handlers restored on exit.

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
        signals.stop.set()

    def reload() -> None:
        log.info("signal_received", signal="SIGHUP")
        signals.reload = True
        signals.stop.set()

    handlers: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: lambda: stop("SIGTERM"),
        signal.SIGINT: lambda: stop("SIGINT"),
        signal.SIGHUP: reload,
    }
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    try:
        yield
    finally:
        for signum in handlers:
            loop.remove_signal_handler(signum)
