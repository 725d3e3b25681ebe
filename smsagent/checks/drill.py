"""The migration drill (PREMIGRATE, spec §7.6): every check for one task, the network
measurement, and the source state `premiging` -> `premiged` | `premigfailed`.

`run_drill` takes plain arguments, so any handler can wrap it; it never raises for a failed
check or a failed SMS call, and a check that hangs or crashes becomes that check's ERROR.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Callable, Final, Optional

import structlog
from pydantic import JsonValue

from smsagent.api.client import SmsClient
from smsagent.api.enums import CheckResult, CopyState, MigrationCycle
from smsagent.api.errors import SmsError
from smsagent.api.models import NetworkCheckInfoRequestBody, PutCopyStateReq, Task
from smsagent.checks import local, target
from smsagent.checks.endpoint import CLOCK, CREDENTIALS, ENDPOINT, endpoint_checks
from smsagent.checks.model import (
    Check,
    all_failed_as,
    bounded,
    failed_as,
    first_error,
    overall,
)
from smsagent.checks.network import NetworkMeasurement, NetworkOptions, measure_network
from smsagent.config import Settings
from smsagent.target.session import TargetSession, TaskKeyPaths, store_private_key
from smsagent.waits import within

log = structlog.get_logger(__name__)

TASK_KEY: Final = "task_key"
TASK_KEY_MISSING: Final = "SMSAGENT.TASK_KEY"
# The drill checks the environment before any copy: the console's "checking" stage.
DRILL_CYCLE: Final = MigrationCycle.checking
_TARGET_STEPS: Final = (
    target.TARGET_PORT,
    target.TARGET_LOGIN,
    target.RSYNC_TARGET,
    target.TARGET_ROOT,
    target.TARGET_SPACE,
)
# Target checks stop their own ssh at their limit; the backstop adds the time that stop takes.
_STOP_GRACE_S: Final = 5.0

TargetFactory = Callable[[str, int, TaskKeyPaths], TargetSession]
"""Opens a session to `(host, port)` with a task's key and pinned known_hosts."""


@dataclass(frozen=True)
class DrillOptions:
    """Time limits and the size of the network measurement.

    Attributes:
        check_timeout_s: the most one check (or one SMS call) may take; SMS expects < 30 s.
        network_timeout_s: the most the whole network measurement may take.
        network: what the network measurement does.
    """

    check_timeout_s: float = 30.0
    network_timeout_s: float = 90.0
    network: NetworkOptions = field(default_factory=NetworkOptions)


@dataclass(frozen=True)
class DrillReport:
    """What the drill found.

    Attributes:
        task_id: the task drilled.
        checks: every check, in the order run.
        network: the measurement sent to SMS, or None when none could be made.
        network_reported: whether SMS accepted the measurement.
        final_state: `premiged` (no ERROR) or `premigfailed`.
    """

    task_id: str
    checks: tuple[Check, ...]
    network: Optional[NetworkCheckInfoRequestBody]
    network_reported: bool
    final_state: CopyState

    @property
    def result(self) -> CheckResult:
        """ERROR if any check is, else WARN if any is, else OK."""
        return overall(self.checks)

    @property
    def passed(self) -> bool:
        """True when no check is ERROR: the task may start."""
        return self.result is not CheckResult.ERROR

    @property
    def error_code(self) -> Optional[str]:
        """The code of the first ERROR, for the command result."""
        failed = first_error(self.checks)
        return None if failed is None else failed.error_code

    @property
    def message(self) -> str:
        """One sentence: passed, or which checks failed."""
        errors = [check.name for check in self.checks if check.result is CheckResult.ERROR]
        warnings = sum(check.result is CheckResult.WARN for check in self.checks)
        if errors:
            return f"migration drill failed: {', '.join(errors)}"
        return f"migration drill passed: {len(self.checks)} checks, {warnings} WARN"

    def check(self, name: str) -> Check:
        """The check called `name`.

        Raises:
            KeyError: no check has that name.
        """
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def result_detail(self) -> dict[str, JsonValue]:
        """The `result_detail` of the PREMIGRATE command result: every check and the summary."""
        return {
            "task_id": self.task_id,
            "state": self.final_state.value,
            "result": self.result.value,
            "error_code": self.error_code,
            "message": self.message,
            "checks": [check.to_json() for check in self.checks],
            "network_check_info": None if self.network is None else self.network.to_wire(),
            "network_reported": self.network_reported,
        }


def default_target_factory(settings: Settings) -> TargetFactory:
    """Sessions as the migration opens them, with the settings' connect timeout."""

    def open_target(host: str, port: int, paths: TaskKeyPaths) -> TargetSession:
        return TargetSession(
            host,
            port,
            paths.private_key,
            paths.known_hosts,
            connect_timeout_s=settings.connect_timeout,
        )

    return open_target


async def run_drill(
    client: SmsClient,
    settings: Settings,
    task: Task,
    source_id: str,
    *,
    open_target: Optional[TargetFactory] = None,
    options: DrillOptions = DrillOptions(),
) -> DrillReport:
    """Run the migration drill for `task` and report it to SMS (state and network measurement).

    Args:
        client: an open client.
        settings: the agent's settings (`state_dir`, `source_root`, `target_root`, `ssh_port`).
        task: the task as `GET /v3/tasks/{id}` returned it.
        source_id: this server's source id, for `changestate`.
        open_target: makes the SSH session (default: `default_target_factory(settings)`).
        options: time limits and the size of the network measurement.
    """
    log.info("drill_started", task_id=task.id)
    await _change_state(client, source_id, CopyState.premiging)
    drill = _Drill(client, settings, task, open_target or default_target_factory(settings), options)
    checks = await drill.run()
    measurement = await drill.measure(checks)
    network_reported = await _report_network(client, task.id, measurement)
    if measurement is not None:
        checks.append(measurement.check)
    final_state = CopyState.premigfailed if first_error(checks) else CopyState.premiged
    await _change_state(client, source_id, final_state)
    report = DrillReport(
        task.id,
        tuple(checks),
        None if measurement is None else measurement.body,
        network_reported,
        final_state,
    )
    _log_report(report)
    return report


class _Drill:
    """The checks of one drill, in dependency order; each later one needs the earlier ones."""

    def __init__(
        self,
        client: SmsClient,
        settings: Settings,
        task: Task,
        open_target: TargetFactory,
        options: DrillOptions,
    ) -> None:
        self._client = client
        self._settings = settings
        self._task = task
        self._open_target = open_target
        self._options = options
        self._timeout_s = options.check_timeout_s
        self._address = target.target_address(task)
        self._session: Optional[TargetSession] = None

    async def run(self) -> list[Check]:
        checks = await self._endpoint()
        local_checks, used_bytes = await self._local()
        checks += local_checks
        key_check, key_paths = await self._task_key()
        checks.append(key_check)
        checks += await self._target(key_paths, used_bytes)
        return checks

    async def _endpoint(self) -> list[Check]:
        return await bounded(
            lambda: endpoint_checks(self._client, self._settings),
            self._timeout_s,
            all_failed_as(ENDPOINT, CLOCK, CREDENTIALS),
        )

    async def _local(self) -> tuple[list[Check], int]:
        limit_mbit_s = await self._speed_limit_mbit_s()
        return await local.run_local_checks(
            self._settings.source_root, limit_mbit_s, self._timeout_s
        )

    async def _speed_limit_mbit_s(self) -> int:
        """The highest limit the task sets: its `speed_limit` or any time window's."""
        windows: Sequence[int] = ()
        try:
            answer = await within(self._client.shows_speed_limits(self._task.id), self._timeout_s)
            windows = [window.speed for window in answer.speed_limit]
        except (SmsError, asyncio.TimeoutError) as exc:
            log.warning("drill_speed_limits_unknown", task_id=self._task.id, error=str(exc))
        return max([self._task.speed_limit or 0, *windows])

    async def _task_key(self) -> tuple[Check, Optional[TaskKeyPaths]]:
        """Fetch the task's private key from SMS and keep it 0600 in the state dir."""
        try:
            answer = await within(self._client.show_cert_key(self._task.id), self._timeout_s)
        except asyncio.TimeoutError:
            reason = f"GET certkey did not answer within {self._timeout_s:g} s"
            return Check.error(TASK_KEY, reason, TASK_KEY_MISSING), None
        except SmsError as exc:
            return Check.error(TASK_KEY, f"cannot fetch the task key: {exc}", exc.error_code), None
        if not answer.private_key:
            reason = "SMS returned no private key for the task"
            return Check.error(TASK_KEY, reason, TASK_KEY_MISSING), None
        try:
            paths = store_private_key(self._settings.state_dir, self._task.id, answer.private_key)
        except (OSError, ValueError) as exc:
            reason = f"cannot store the task key: {exc}"
            return Check.error(TASK_KEY, reason, TASK_KEY_MISSING), None
        return Check.ok(TASK_KEY, f"the task key is stored in {paths.private_key}"), paths

    async def _target(self, key_paths: Optional[TaskKeyPaths], used_bytes: int) -> list[Check]:
        """Address, port, login, then what needs a login; a failed step skips the later ones."""
        address, port = self._address, self._settings.ssh_port
        address_check = target.address_check(address)
        if address is None or address_check.result is CheckResult.ERROR:
            return [address_check, *_skipped(*_TARGET_STEPS, because="no target address")]
        reach = target.check_port(address, port, self._timeout_s)
        port_check = await self._bounded_on(target.TARGET_PORT, reach)
        checks = [address_check, port_check]
        if port_check.result is CheckResult.ERROR:
            return checks + _skipped(*_TARGET_STEPS[1:], because=f"port {port} is not reachable")
        if key_paths is None:
            return checks + _skipped(*_TARGET_STEPS[1:], because="no task key")
        session = self._open_target(address, port, key_paths)
        login = await self._bounded_on(
            target.TARGET_LOGIN, target.check_login(session, self._timeout_s)
        )
        checks.append(login)
        if login.result is CheckResult.ERROR:
            return checks + _skipped(*_TARGET_STEPS[2:], because="SSH login failed")
        self._session = session
        return checks + await self._on_target(session, used_bytes)

    async def _on_target(self, session: TargetSession, used_bytes: int) -> list[Check]:
        root, limit_s = str(self._settings.target_root), self._timeout_s
        rsync_check = await self._bounded_on(
            target.RSYNC_TARGET, target.check_remote_rsync(session, limit_s)
        )
        root_check = await self._bounded_on(
            target.TARGET_ROOT, target.check_target_root(session, root, limit_s)
        )
        if root_check.result is CheckResult.ERROR:
            skipped = _skipped(target.TARGET_SPACE, because="the target root is unusable")
            return [rsync_check, root_check, *skipped]
        space_check = await self._bounded_on(
            target.TARGET_SPACE, target.check_target_space(session, root, used_bytes, limit_s)
        )
        return [rsync_check, root_check, space_check]

    async def _bounded_on(self, name: str, check: Awaitable[Check]) -> Check:
        """A check that runs on the target, with its own limit; this one is the backstop."""
        return await bounded(lambda: check, self._timeout_s + _STOP_GRACE_S, failed_as(name))

    async def measure(self, checks: Sequence[Check]) -> Optional[NetworkMeasurement]:
        """The network measurement, or None without a target address or when it failed."""
        if self._address is None or _failed(checks, target.TARGET_ADDRESS):
            return None
        address = self._address
        domain_ok = not _failed(checks, ENDPOINT)
        return await bounded(
            lambda: measure_network(
                address,
                self._settings.ssh_port,
                self._session,
                domain_connectivity=domain_ok,
                options=self._options.network,
            ),
            self._options.network_timeout_s,
            lambda reason, code: None,
        )


def _skipped(*names: str, because: str) -> list[Check]:
    return [Check.not_checked(name, because) for name in names]


def _failed(checks: Sequence[Check], name: str) -> bool:
    return any(check.name == name and check.result is CheckResult.ERROR for check in checks)


async def _change_state(client: SmsClient, source_id: str, state: CopyState) -> None:
    """Report the source state; a failure is logged, never raised (the checks show its cause)."""
    try:
        await client.update_copy_state(
            source_id, PutCopyStateReq(copystate=state, migrationcycle=DRILL_CYCLE)
        )
    except SmsError as exc:
        log.warning("drill_state_not_reported", state=state.value, error=str(exc))


async def _report_network(
    client: SmsClient, task_id: str, measurement: Optional[NetworkMeasurement]
) -> bool:
    """Send the measurement to SMS; False when there is none or SMS did not take it."""
    if measurement is None:
        return False
    try:
        await client.update_network_check_info(task_id, measurement.body)
    except SmsError as exc:
        log.warning("drill_network_not_reported", task_id=task_id, error=str(exc))
        return False
    return True


def _log_report(report: DrillReport) -> None:
    for check in report.checks:
        if check.result is not CheckResult.OK:
            log.warning(
                "drill_check_not_ok",
                check=check.name,
                result=check.result.value,
                error_code=check.error_code,
                reason=check.reason,
            )
    log.info(
        "drill_finished",
        task_id=report.task_id,
        result=report.result.value,
        state=report.final_state.value,
        error_code=report.error_code,
    )
