"""`smsagent emulator` flags: operator mistakes get a one-line message and exit 2 or 3."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.emulator import EmulatorFactory

SECRET = "do-not-print-this-secret-key"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "smsagent", "emulator", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


BASE = ("--ak", "AK", "--sk", SECRET, "--port", "0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--error-rate", "2"), "invalid --error-rate"),
        (("--error-status", "502"), "invalid --error-status"),
        (("--fault-path", "("), "invalid --fault-path"),
        (("--iam-user", "migrator"), "--iam-user, --iam-password and --iam-domain go together"),
        (("--redeliver-after", "0"), "--redeliver-after must be more than 0 seconds"),
        (("--tls-cert", "cert.pem"), "--tls-cert and --tls-key go together"),
        (("--tls-cert", "/no/cert.pem", "--tls-key", "/no/key.pem"), "cannot load --tls-cert"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(args: tuple[str, ...], message: str) -> None:
    """A bad flag is a usage error: exit 2, the flag named, no traceback, no secret."""
    done = run(*BASE, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_missing_required_flag_exits_2() -> None:
    """Without --sk the command refuses to start and says which flag is missing."""
    done = run("--ak", "AK")
    assert done.returncode == 2
    assert "--sk" in done.stderr


def test_unusable_state_file_exits_3(tmp_path: Path) -> None:
    """A --state file that cannot be opened is a start-up failure naming --state."""
    done = run(*BASE, "--state", str(tmp_path / "missing-dir" / "state.db"))
    assert done.returncode == 3
    assert "cannot open --state" in done.stderr
    assert "Traceback" not in done.stderr


def test_busy_port_exits_3() -> None:
    """A port already taken is a start-up failure naming the address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("--ak", "AK", "--sk", SECRET, "--port", str(port))
    assert done.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_help_lists_the_flags() -> None:
    """`--help` documents delivery, state, TLS and fault flags."""
    done = run("--help")
    assert done.returncode == 0
    for flag in ("--command-delivery", "--redeliver-after", "--state", "--tls-cert", "--seed"):
        assert flag in done.stdout


def test_sigterm_stops_cleanly_and_secrets_stay_out_of_the_log(
    start_emulator: EmulatorFactory,
) -> None:
    """SIGTERM ends the process with 0; neither the SK nor the token appears in its output."""
    process = start_emulator()
    process.request("GET", "/v3/config")
    process.signed_request("GET", "/v3/config", sk="wrong")
    assert process.stop() == 0
    assert process.sk not in process.log_text()
    assert process.token not in process.log_text()
    assert "emulator_listening" in process.log_text()
