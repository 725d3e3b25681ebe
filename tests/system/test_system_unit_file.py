"""The shipped unit file: it verifies clean and its numbers keep what operations rely on."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

from smsagent.config import Settings
from tests.support.nspawn import timespan_s

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "smsagent.service"


def read_unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


class TestUnitFile:
    def test_verifies_without_a_warning(self, tmp_path: Path) -> None:
        """`systemd-analyze verify` accepts the unit and prints nothing (unknown keys only warn)."""
        # verify checks that ExecStart's program exists; the agent is not installed on this
        # host, so it points at a stand-in here. The installed unit is verified as shipped in
        # the container tests.
        stand_in = tmp_path / "smsagent"
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
        unit = tmp_path / "smsagent.service"
        unit.write_text(UNIT.read_text().replace("/usr/bin/smsagent", str(stand_in)))

        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert (done.returncode, done.stdout + done.stderr) == (0, "")

    def test_automatic_restarts_never_reach_the_start_limit(self) -> None:
        """A crashing agent is retried forever: restarts alone cannot fill the start limit."""
        unit = read_unit()
        restart_s = timespan_s(unit["Service"]["RestartSec"])
        burst = int(unit["Unit"]["StartLimitBurst"])
        interval_s = timespan_s(unit["Unit"]["StartLimitIntervalSec"])

        assert unit["Service"]["Restart"] == "on-failure"
        assert interval_s > 0, "a start limit is set"
        assert restart_s * (burst - 1) > interval_s

    def test_configuration_errors_are_not_restarted(self) -> None:
        """Exit 2 (a bad env file) leaves the unit failed instead of restarting in a loop."""
        assert read_unit()["Service"]["RestartPreventExitStatus"].split() == ["2"]

    def test_stop_timeout_outlasts_the_agents_own_grace(self) -> None:
        """systemd's SIGKILL comes well after the agent's stop grace, so a copy stops cleanly."""
        unit = read_unit()
        stop_grace_s = Settings.model_fields["stop_grace"].default

        assert unit["Service"]["KillMode"] == "mixed"
        assert timespan_s(unit["Service"]["TimeoutStopSec"]) >= stop_grace_s + 30

    def test_notify_with_watchdog_and_private_state(self) -> None:
        """Readiness and liveness come from the agent; state lives in a 0700 directory."""
        service = read_unit()["Service"]

        assert (service["Type"], service["NotifyAccess"]) == ("notify", "main")
        assert timespan_s(service["WatchdogSec"]) >= 30
        assert service["ExecStart"] == "/usr/bin/smsagent run"
        assert service["EnvironmentFile"] == "/etc/smsagent/smsagent.env"
        assert (service["StateDirectory"], service["StateDirectoryMode"]) == ("smsagent", "0700")

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("ProtectHome", "read-only"),  # "yes" would hide /home and /root from the copy
            ("PrivateTmp", "no"),  # a private /var/tmp would be left out of the copy
            ("PrivateDevices", "no"),  # block-level migration reads the disks
        ],
    )
    def test_hardening_keeps_the_data_visible(self, option: str, value: str) -> None:
        """Options that would hide the server's own files or disks stay off."""
        assert read_unit()["Service"][option] == value

    def test_exposure_score_is_low(self) -> None:
        """`systemd-analyze security` rates the sandbox at most 4.0 (lower is tighter)."""
        done = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)

        assert match is not None, done.stdout + done.stderr
        assert float(match.group(1)) <= 4.0
