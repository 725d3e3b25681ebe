"""`smsagent check` as a user runs it, against the emulator process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.support.emulator import EmulatorFactory, EmulatorProcess, free_port

NOBODY = 65534
CLI_TIMEOUT_S = 60


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document

    def check(self, name: str) -> dict[str, Any]:
        return next(check for check in self.json()["checks"] if check["name"] == name)

    def row(self, name: str) -> list[str]:
        """The table row of a check, split into words."""
        return next(line.split() for line in self.stdout.splitlines() if line.split()[:1] == [name])


def _write_env(path: Path, lines: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
    path.chmod(mode)
    return path


def _run(env_file: Optional[Path], *args: str, command: str = "check") -> Outcome:
    # Only the env file configures the agent: no SMSAGENT_* variable leaks in from outside.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
    argv = [sys.executable, "-m", "smsagent", command, *args]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    done = subprocess.run(
        argv, env=environment, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def settings_for(tmp_path: Path) -> Any:
    """`settings_for(emulator, **overrides)`: the env-file lines of an agent using `emulator`."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    source_root = tmp_path / "source"
    source_root.mkdir()

    def make(process: EmulatorProcess, **overrides: str) -> dict[str, str]:
        lines = {
            "SMSAGENT_ENDPOINT": process.url,
            "SMSAGENT_AK": process.ak,
            "SMSAGENT_SK": process.sk,
            "SMSAGENT_STATE_DIR": str(state_dir),
            "SMSAGENT_SOURCE_ROOT": str(source_root),
            "SMSAGENT_ACCEPT_PRIVACY_STATEMENT": "true",
        }
        lines.update(overrides)
        return {key: value for key, value in lines.items() if value}

    return make


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a root-owned env file needs root")


class TestHealthy:
    def test_table(self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path) -> None:
        """Against a working endpoint the table shows the SMS checks OK and exit is 0."""
        _needs_root()
        env_file = _write_env(tmp_path / "smsagent.env", settings_for(emulator))
        outcome = _run(env_file)
        assert outcome.returncode == 0, outcome
        names = ("env_file", "state_dir", "handlers", "endpoint", "clock", "credentials")
        for name in (*names, "privacy_statement"):
            assert outcome.row(name)[1] == "OK", outcome.stdout
        assert outcome.stdout.splitlines()[0].split() == ["CHECK", "RESULT", "CODE", "REASON"]
        assert outcome.stdout.splitlines()[-1].startswith("result: ")
        assert emulator.state()["requests"]["GET /v3/config"]["statuses"] == {"200": 1}

    def test_json(self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path) -> None:
        """`--json` prints one document with every check's name, result, reason and code."""
        env_file = _write_env(tmp_path / "smsagent.env", settings_for(emulator))
        outcome = _run(env_file, "--json")
        document = outcome.json()
        names = [check["name"] for check in document["checks"]]
        assert set(names) >= {"env_file", "state_dir", "handlers", "rsync_local", "ssh_client"}
        assert set(names) >= {"tmp_exec", "source_data", "bind_mounts", "speed_limit_tc"}
        assert names[-4:] == ["endpoint", "clock", "credentials", "privacy_statement"]
        for check in document["checks"]:
            assert check["result"] in ("OK", "WARN", "ERROR")
            assert check["reason"] and "error_code" in check
        assert outcome.returncode == (1 if document["result"] == "ERROR" else 0)

    def test_token(self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path) -> None:
        """Token credentials are checked the same way."""
        lines = settings_for(
            emulator, SMSAGENT_AK="", SMSAGENT_SK="", SMSAGENT_TOKEN=emulator.token
        )
        outcome = _run(_write_env(tmp_path / "smsagent.env", lines), "--json")
        assert outcome.check("credentials")["result"] == "OK"
        assert "token" in outcome.check("credentials")["reason"]

    @pytest.mark.parametrize(
        ("password", "result"), [("iam-pass-0123", "OK"), ("wrong-pass-987", "ERROR")]
    )
    def test_iam_user(
        self,
        start_emulator: EmulatorFactory,
        settings_for: Any,
        tmp_path: Path,
        password: str,
        result: str,
    ) -> None:
        """An IAM user's password is exchanged for a token; a wrong one is refused and hidden."""
        process = start_emulator(iam_user="agent", iam_password="iam-pass-0123", iam_domain="acme")
        lines = settings_for(
            process,
            SMSAGENT_AK="",
            SMSAGENT_SK="",
            SMSAGENT_IAM_ENDPOINT=process.url,
            SMSAGENT_IAM_USER="agent",
            SMSAGENT_IAM_PASSWORD=password,
            SMSAGENT_IAM_DOMAIN="acme",
        )
        outcome = _run(_write_env(tmp_path / "iam.env", lines), "--json")
        credentials = outcome.check("credentials")
        assert credentials["result"] == result, credentials
        if result == "ERROR":
            assert credentials["error_code"] == "SMS.0202"
            assert outcome.check("endpoint")["reason"] == (
                "not checked: no IAM token to call SMS with"
            )
        assert password not in outcome.stdout + outcome.stderr


class TestEndpointProblems:
    def test_wrong_secret_key(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """A wrong SK is ERROR SMS.0202, exit 1, and the SK is printed nowhere."""
        wrong_sk = "wrong-secret-key-value-0123456789"
        env_file = _write_env(tmp_path / "e.env", settings_for(emulator, SMSAGENT_SK=wrong_sk))
        outcome = _run(env_file)
        assert outcome.returncode == 1
        assert outcome.row("credentials")[1:3] == ["ERROR", "SMS.0202"]
        assert outcome.row("endpoint")[1] == "OK"
        assert wrong_sk not in outcome.stdout + outcome.stderr

    def test_endpoint_down(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """Nothing listening is ERROR SMS.0203; clock and credentials are not checked."""
        down = f"http://127.0.0.1:{free_port()}"
        env_file = _write_env(tmp_path / "e.env", settings_for(emulator, SMSAGENT_ENDPOINT=down))
        outcome = _run(env_file, "--json")
        assert outcome.returncode == 1
        endpoint = outcome.check("endpoint")
        assert (endpoint["result"], endpoint["error_code"]) == ("ERROR", "SMS.0203")
        for name in ("clock", "credentials"):
            assert outcome.check(name)["reason"] == "not checked: the endpoint did not answer"

    def test_tls(self, start_emulator: EmulatorFactory, settings_for: Any, tmp_path: Path) -> None:
        """An untrusted certificate is ERROR SMS.0304; with it as CA bundle, TLS is verified."""
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        process = start_emulator(ca_file=cert, tls_cert=cert, tls_key=key)
        untrusted = _run(_write_env(tmp_path / "a.env", settings_for(process)), "--json")
        endpoint = untrusted.check("endpoint")
        assert (endpoint["result"], endpoint["error_code"]) == ("ERROR", "SMS.0304")
        trusted_lines = settings_for(process, SMSAGENT_CA_BUNDLE=str(cert))
        trusted = _run(_write_env(tmp_path / "b.env", trusted_lines), "--json")
        assert trusted.check("endpoint")["result"] == "OK"
        assert "TLS verified" in trusted.check("endpoint")["reason"]
        assert trusted.check("credentials")["result"] == "OK"


class TestFilePermissions:
    def test_env_file_readable_by_others(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """A world-readable env file is a WARN that says how to fix it; alone it exits 0."""
        env_file = _write_env(tmp_path / "smsagent.env", settings_for(emulator), mode=0o644)
        outcome = _run(env_file, "--json")
        check = outcome.check("env_file")
        assert (check["result"], check["error_code"]) == ("WARN", "SMSAGENT.FILE_MODE")
        assert "readable by others" in check["reason"] and "chmod 0600" in check["reason"]
        assert outcome.json()["result"] == "WARN" and outcome.returncode == 0

    def test_env_file_not_owned_by_root(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """An env file owned by another user is a WARN naming the owner."""
        _needs_root()
        env_file = _write_env(tmp_path / "smsagent.env", settings_for(emulator))
        os.chown(env_file, NOBODY, NOBODY)
        check = _run(env_file, "--json").check("env_file")
        assert check["result"] == "WARN" and f"uid {NOBODY}" in check["reason"]

    def test_open_state_dir(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """A state dir others may enter is a WARN."""
        lines = settings_for(emulator)
        Path(lines["SMSAGENT_STATE_DIR"]).chmod(0o755)
        check = _run(_write_env(tmp_path / "e.env", lines), "--json").check("state_dir")
        assert check["result"] == "WARN" and "chmod 0700" in check["reason"]


class TestBadSettings:
    def test_bad_value(self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path) -> None:
        """A bad value prints one line naming the variable, no traceback, and exits 2."""
        lines = settings_for(emulator, SMSAGENT_POLL_INTERVAL="often")
        outcome = _run(_write_env(tmp_path / "e.env", lines))
        assert outcome.returncode == 2
        assert outcome.stdout == ""
        assert len(outcome.stderr.strip().splitlines()) == 1
        assert "SMSAGENT_POLL_INTERVAL" in outcome.stderr
        assert "Traceback" not in outcome.stderr

    def test_missing_env_file(self, tmp_path: Path) -> None:
        """An env file that does not exist is named, exit 2."""
        outcome = _run(tmp_path / "absent.env")
        assert outcome.returncode == 2
        assert (
            outcome.stderr.strip()
            == f"smsagent check: env file {tmp_path / 'absent.env'} does not exist"
        )

    def test_unknown_variable(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """A misspelt variable is refused by name, exit 2."""
        lines = settings_for(emulator, SMSAGENT_POLL_INTERVALL="5")
        outcome = _run(_write_env(tmp_path / "e.env", lines))
        assert outcome.returncode == 2 and "SMSAGENT_POLL_INTERVALL" in outcome.stderr


class TestSameVerdictAsRun:
    """What stops `smsagent run` is an ERROR of `smsagent check`, in the same words."""

    def test_privacy_statement_not_accepted(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """The account has not accepted the privacy statement and the env file does not accept
        it: `check` is ERROR (exit 1) with the sentence `run` stops on (exit 3)."""
        lines = settings_for(emulator, SMSAGENT_ACCEPT_PRIVACY_STATEMENT="")
        env_file = _write_env(tmp_path / "smsagent.env", lines)

        checked = _run(env_file, "--json")
        ran = _run(env_file, command="run")

        privacy = checked.check("privacy_statement")
        assert checked.returncode == 1, checked
        assert (privacy["result"], privacy["error_code"]) == ("ERROR", "SMS.0208")
        assert "SMSAGENT_ACCEPT_PRIVACY_STATEMENT=true" in privacy["reason"]
        assert ran.returncode == 3, ran.stderr
        assert ran.stderr.splitlines()[-1] == f"smsagent: cannot start: {privacy['reason']}"
        assert "POST /v3/privacy-agreements" not in emulator.state()["requests"]

    def test_privacy_statement_accepted_by_the_settings(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path
    ) -> None:
        """Accepted in the env file, it is OK: the agent accepts it when it starts; `check`
        itself accepts nothing."""
        env_file = _write_env(tmp_path / "smsagent.env", settings_for(emulator))
        privacy = _run(env_file, "--json").check("privacy_statement")
        assert privacy["result"] == "OK" and "accepts it when it starts" in privacy["reason"]
        assert "POST /v3/privacy-agreements" not in emulator.state()["requests"]

    @pytest.mark.parametrize("command", ["check", "run"])
    def test_malformed_line(
        self, emulator: EmulatorProcess, settings_for: Any, tmp_path: Path, command: str
    ) -> None:
        """A line that is not NAME=value: one line naming the file and the line, exit 2, for
        both commands; the line's text (it may hold a secret) is not shown."""
        env_file = _write_env(tmp_path / "smsagent.env", settings_for(emulator))
        good = env_file.read_text()
        env_file.write_text(good + "stray words with a secret-ish token\n")
        line = len(good.splitlines()) + 1

        outcome = _run(env_file, command=command)

        prefix = "smsagent check" if command == "check" else "smsagent"
        assert outcome.returncode == 2, outcome
        assert outcome.stdout == ""
        assert outcome.stderr.splitlines() == [
            f"{prefix}: env file {env_file} line {line}: not a NAME=value line "
            "(a quote not closed, or text without a name)"
        ]
        assert emulator.state()["requests"] == {}
