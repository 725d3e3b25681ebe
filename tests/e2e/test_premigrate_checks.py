"""The migration drill against the real emulator and a real target host over SSH.

A good target passes every check; an unreachable one, one that refuses the key, one without
rsync, one without room and one that hangs each fail with the matching ERROR, the source ends
`premigfailed`, the measurement still reaches SMS, and the agent's client and children are fine.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from smsagent.api.auth import AkSkCredentials
from smsagent.api.client import SmsClient
from smsagent.api.enums import CheckResult, CopyState
from smsagent.checks.drill import TASK_KEY_MISSING, DrillOptions, DrillReport, run_drill
from smsagent.checks.network import NetworkOptions
from smsagent.checks.target import TARGET_NO_RSYNC, TARGET_ROOT_MISSING, TARGET_SPACE_SHORT
from smsagent.config import Settings
from smsagent.target.session import (
    AUTH_REFUSED,
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    TargetSession,
    TaskKeyPaths,
)
from tests.support.emulator import EmulatorProcess
from tests.support.target import TargetHost

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1024 * 1024
SOURCE_DATA_BYTES = 8 * MiB
FAST = DrillOptions(
    check_timeout_s=15.0,
    network_timeout_s=30.0,
    network=NetworkOptions(
        connect_attempts=5, connect_interval_s=0.05, upload_bytes=16 * MiB, upload_budget_s=3.0
    ),
)
EVERY_CHECK = {
    "endpoint",
    "clock",
    "credentials",
    "rsync_local",
    "ssh_client",
    "tmp_exec",
    "source_data",
    "bind_mounts",
    "speed_limit_tc",
    "task_key",
    "target_address",
    "target_port",
    "target_login",
    "rsync_target",
    "target_root",
    "target_space",
    "network",
}


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "smsdrill", str(path)],
        check=True,
        capture_output=True,
    )


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture
def source_root(tmp_path: Path) -> Iterator[Path]:
    """The tree to migrate: its own small file system holding 8 MiB of data."""
    root = tmp_path / "source"
    _mount_tmpfs(root, "64m")
    try:
        (root / "data.bin").write_bytes(os.urandom(SOURCE_DATA_BYTES))
        yield root
    finally:
        _umount(root)


@dataclass
class Drill:
    """A task in the emulator for the target host, and what runs its drill."""

    emulator: EmulatorProcess
    target: TargetHost
    settings: Settings
    source_id: str
    task_id: str

    async def run(self, options: DrillOptions = FAST) -> DrillReport:
        credentials = AkSkCredentials(self.emulator.ak, SecretStr(self.emulator.sk))
        children_before = _children()
        async with SmsClient(self.emulator.url, credentials) as client:
            task = await client.show_task(self.task_id)
            report = await run_drill(
                client,
                self.settings,
                task,
                self.source_id,
                open_target=_open_target,
                options=options,
            )
            await _assert_agent_healthy(client, self.source_id, children_before)
        return report

    def changestates(self) -> list[tuple[str, str]]:
        entries = self.emulator.state()["changestates"]
        return [(entry["copystate"], entry["migrationcycle"]) for entry in entries]

    def network_info(self) -> Any:
        tasks = self.emulator.state()["tasks"]
        return next(task for task in tasks if task["id"] == self.task_id).get("network_check_info")


def _open_target(host: str, port: int, paths: TaskKeyPaths) -> TargetSession:
    return TargetSession(host, port, paths.private_key, paths.known_hosts, connect_timeout_s=5)


async def _assert_agent_healthy(
    client: SmsClient, source_id: str, children_before: dict[int, str]
) -> None:
    """The client still works and no child process (ssh) outlived the drill."""
    source = await client.show_server(source_id)
    assert source.id == source_id
    assert _children() == children_before


def _children() -> dict[int, str]:
    """This process's children: pid -> command name."""
    own = os.getpid()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, _, rest = status.partition(" (")[2].rpartition(")")
        if int(rest.split()[1]) == own:
            found[int(entry)] = name
    return found


@pytest.fixture
async def drill(
    emulator: EmulatorProcess, target_host: TargetHost, source_root: Path, tmp_path: Path
) -> AsyncIterator[Drill]:
    """A registered source and a task whose target is `target_host` and whose key SMS holds."""
    source_id = emulator.register_source()
    task_id = emulator.create_task(
        source_id,
        migration_ip=target_host.ip,
        target_server={"name": "target", "ip": target_host.ip},
    )
    emulator.set_cert_key(task_id, private_key=target_host.client_private_key_pem)
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    settings = Settings(
        endpoint=emulator.url,
        ak=emulator.ak,
        sk=SecretStr(emulator.sk),
        state_dir=state_dir,
        source_root=source_root,
        target_root=target_host.root,
        ssh_port=target_host.port,
    )
    yield Drill(emulator, target_host, settings, source_id, task_id)


def _results(report: DrillReport) -> dict[str, CheckResult]:
    return {check.name: check.result for check in report.checks}


def _assert_failed_with(report: DrillReport, name: str, error_code: str) -> None:
    check = report.check(name)
    assert (check.result, check.error_code) == (CheckResult.ERROR, error_code), check
    assert report.final_state is CopyState.premigfailed
    assert not report.passed
    errors = [c.name for c in report.checks if c.result is CheckResult.ERROR]
    assert errors == [name], report.checks


def _assert_reported(drill: Drill, final: str) -> None:
    assert drill.changestates() == [("premiging", "checking"), (final, "checking")]


class TestGoodTarget:
    @pytest.mark.timeout(120)
    async def test_every_check_is_ok(self, drill: Drill) -> None:
        """Against a good target every check passes and the source ends `premiged`."""
        report = await drill.run()
        assert {check.name for check in report.checks} == EVERY_CHECK
        not_ok = [check for check in report.checks if check.result is not CheckResult.OK]
        assert not_ok == []
        assert report.passed and report.final_state is CopyState.premiged
        _assert_reported(drill, "premiged")
        assert report.check("source_data").details["used_bytes"] >= SOURCE_DATA_BYTES

    @pytest.mark.timeout(120)
    async def test_network_measurement_reaches_sms(self, drill: Drill) -> None:
        """SMS receives the measurement: target reachable, nothing lost, a real upload rate."""
        report = await drill.run()
        info = drill.network_info()
        assert report.network_reported
        assert info["destination_connectivity"] is True
        assert info["domain_connectivity"] is True
        assert info["loss_percentage"] == 0
        assert 0 < info["network_delay"] < 100
        assert info["migration_speed"] > 10
        assert 0 <= info["cpu_usage"] <= 100 and 0 < info["mem_usage"] < 100
        assert info["evaluation_result"] == "good"

    @pytest.mark.timeout(120)
    async def test_result_detail_carries_every_check(self, drill: Drill) -> None:
        """The command result's detail is JSON naming each check with result, reason and code."""
        report = await drill.run()
        detail = json.loads(json.dumps(report.result_detail()))
        assert detail["state"] == "premiged" and detail["result"] == "OK"
        assert {check["name"] for check in detail["checks"]} == EVERY_CHECK
        for check in detail["checks"]:
            assert set(check) >= {"name", "result", "reason", "error_code"}
            assert check["reason"]

    @pytest.mark.timeout(120)
    async def test_key_is_private_and_host_key_pinned(self, drill: Drill) -> None:
        """The task key is stored 0600 and the target's host key is pinned for the task."""
        await drill.run()
        key = drill.settings.state_dir / "keys" / f"{drill.task_id}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        pinned = (drill.settings.state_dir / "known_hosts" / drill.task_id).read_text()
        assert drill.target.host_public_key.split()[1] in pinned


class TestBadTarget:
    @pytest.mark.timeout(120)
    async def test_unreachable(self, drill: Drill) -> None:
        """No sshd: port 22 is ERROR SMS.3806, the rest is not checked, SMS still hears of it."""
        drill.target.stop_sshd()
        report = await drill.run()
        _assert_failed_with(report, "target_port", CONNECT_REFUSED)
        results = _results(report)
        for name in ("target_login", "rsync_target", "target_root", "target_space", "network"):
            assert results[name] is CheckResult.WARN
            assert report.check(name).reason.startswith("not checked")
        _assert_reported(drill, "premigfailed")
        info = drill.network_info()
        assert info["destination_connectivity"] is False
        assert info["loss_percentage"] == 100

    @pytest.mark.timeout(120)
    async def test_key_refused(self, drill: Drill) -> None:
        """A target that refuses the task key: login is ERROR SMS.3804."""
        drill.target.revoke_client_key()
        report = await drill.run()
        _assert_failed_with(report, "target_login", AUTH_REFUSED)
        assert report.check("rsync_target").reason == "not checked: SSH login failed"
        _assert_reported(drill, "premigfailed")
        info = drill.network_info()
        assert info["destination_connectivity"] is True and info["migration_speed"] == 0

    @pytest.mark.timeout(120)
    async def test_no_rsync(self, drill: Drill, tmp_path: Path) -> None:
        """A target whose PATH has every program but rsync: rsync_target is ERROR."""
        bin_dir = tmp_path / "bin-without-rsync"
        bin_dir.mkdir()
        for program in os.listdir("/usr/bin"):
            if program != "rsync":
                (bin_dir / program).symlink_to(Path("/usr/bin") / program)
        drill.target.sshd_extra_config = f"SetEnv PATH={bin_dir}:/usr/sbin\n"
        drill.target.restart_sshd()
        report = await drill.run()
        _assert_failed_with(report, "rsync_target", TARGET_NO_RSYNC)
        assert _results(report)["target_space"] is CheckResult.OK
        _assert_reported(drill, "premigfailed")

    @pytest.mark.timeout(120)
    async def test_no_space(self, drill: Drill) -> None:
        """A target root on a 2 MiB file system cannot take 8 MiB: target_space is ERROR."""
        _mount_tmpfs(drill.target.root, "2m")
        try:
            # A namespace copies the mounts when sshd starts; a restart lets it see the tmpfs.
            drill.target.restart_sshd()
            report = await drill.run()
        finally:
            _umount(drill.target.root)
        _assert_failed_with(report, "target_space", TARGET_SPACE_SHORT)
        details = report.check("target_space").details
        assert details["available_bytes"] < details["needed_bytes"]
        assert _results(report)["target_root"] is CheckResult.OK
        _assert_reported(drill, "premigfailed")

    @pytest.mark.timeout(120)
    async def test_hanging_target_is_cut_off(self, drill: Drill) -> None:
        """A target that accepts TCP but never speaks SSH: login is cut off at the check's limit."""
        drill.target.pause_sshd()
        try:
            report = await drill.run(DrillOptions(check_timeout_s=2.0, network=FAST.network))
        finally:
            drill.target.resume_sshd()
        _assert_failed_with(report, "target_login", CONNECT_TIMEOUT)
        assert _results(report)["target_port"] is CheckResult.OK
        _assert_reported(drill, "premigfailed")

    @pytest.mark.timeout(120)
    async def test_target_root_missing(self, drill: Drill) -> None:
        """A target root that does not exist is ERROR; its free space is not checked."""
        drill.target.root.rmdir()
        report = await drill.run()
        _assert_failed_with(report, "target_root", TARGET_ROOT_MISSING)
        assert report.check("target_space").reason == ("not checked: the target root is unusable")

    @pytest.mark.timeout(120)
    async def test_no_task_key(self, drill: Drill) -> None:
        """When SMS holds no key for the task, task_key is ERROR and the login is not tried."""
        drill.emulator.set_cert_key(drill.task_id, private_key="")
        report = await drill.run()
        _assert_failed_with(report, "task_key", TASK_KEY_MISSING)
        assert report.check("target_login").reason == "not checked: no task key"
        assert not (drill.settings.state_dir / "known_hosts" / drill.task_id).exists()
        assert "publickey" not in drill.target.sshd_log.read_text()


class TestSmsTrouble:
    @pytest.mark.timeout(120)
    async def test_state_reports_fail(self, drill: Drill) -> None:
        """SMS refusing every changestate does not stop the drill: all checks still run."""
        drill.emulator.set_faults(error_rate=1.0, error_status=503, path_pattern="changestate")
        report = await drill.run()
        assert {check.name for check in report.checks} == EVERY_CHECK
        assert report.passed and report.final_state is CopyState.premiged
        assert drill.changestates() == []
        assert report.network_reported
