"""`smsagent run` with a missing or invalid setting: exit 2 and one line naming the variable,
no traceback, no secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from tests.support import secrets
from tests.support.agent import child_environment

pytestmark = pytest.mark.timeout(60)

RUN_TIMEOUT_S = 30.0
ENDPOINT = "https://127.0.0.1:9"  # nothing answers: these runs must stop before any request


def run_agent(
    env: dict[str, str], env_file: Optional[Path], *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["--env-file", str(env_file)] if env_file is not None else []
    return subprocess.run(
        [sys.executable, "-m", "smsagent", "run", *args, *extra],
        env=child_environment(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


@pytest.fixture
def sk() -> str:
    return secrets.new_secret("sk-")


@pytest.fixture
def good(sk: str, tmp_path: Path) -> dict[str, str]:
    """Settings that would start an agent."""
    return {
        "SMSAGENT_ENDPOINT": ENDPOINT,
        "SMSAGENT_AK": "SETTINGSTESTAK000001",
        "SMSAGENT_SK": sk,
        "SMSAGENT_STATE_DIR": str(tmp_path / "state"),
        "SMSAGENT_LOG_FORMAT": "json",
    }


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "smsagent.env"
    path.write_text("# no settings here\n")
    return path


def assert_refused(result: subprocess.CompletedProcess[str], variable: str) -> None:
    """Exit 2, nothing on stdout, and one line on stderr naming `variable` without a traceback."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, lines
    assert result.stdout == ""
    assert len(lines) == 1, lines
    assert lines[0].startswith("smsagent: ")
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert secrets.count_in(result.stderr) == 0


class TestRefusedSettings:
    def test_missing_endpoint(self, good: dict[str, str], env_file: Path) -> None:
        """Without SMSAGENT_ENDPOINT the agent says that it is not set."""
        del good["SMSAGENT_ENDPOINT"]
        result = run_agent(good, env_file)
        assert_refused(result, "SMSAGENT_ENDPOINT")
        assert "is not set" in result.stderr

    @pytest.mark.parametrize("value", ["0.2", "ten", "-1"])
    def test_bad_poll_interval(self, good: dict[str, str], env_file: Path, value: str) -> None:
        """A poll interval that is no number, or under a second, is refused by name."""
        result = run_agent({**good, "SMSAGENT_POLL_INTERVAL": value}, env_file)
        assert_refused(result, "SMSAGENT_POLL_INTERVAL")

    def test_plain_http_to_a_remote_host(self, good: dict[str, str], env_file: Path) -> None:
        """http:// is refused for an endpoint that is not a loopback address."""
        settings = {**good, "SMSAGENT_ENDPOINT": "http://sms.example.com"}
        result = run_agent(settings, env_file)
        assert_refused(result, "SMSAGENT_ENDPOINT")
        assert "http://" in result.stderr

    def test_unknown_name_in_the_env_file(self, good: dict[str, str], tmp_path: Path) -> None:
        """A misspelt SMSAGENT_ name in the env file is refused by name, not ignored; the SK
        in the same file stays out of the message."""
        env_file = tmp_path / "typo.env"
        sk = good.pop("SMSAGENT_SK")
        env_file.write_text(f"SMSAGENT_SK={sk}\nSMSAGENT_POLL_INTERVALL=5\nOTHER_TOOL=1\n")
        result = run_agent(good, env_file)
        assert_refused(result, "SMSAGENT_POLL_INTERVALL")

    def test_missing_env_file(self, good: dict[str, str], tmp_path: Path) -> None:
        """An env file given with --env-file that does not exist is named."""
        missing = tmp_path / "nowhere" / "smsagent.env"
        result = run_agent(good, missing)
        assert_refused(result, str(missing))
        assert "does not exist" in result.stderr

    def test_bad_value_in_the_env_file(self, good: dict[str, str], tmp_path: Path) -> None:
        """A bad value read from the env file is named like one from the environment."""
        env_file = tmp_path / "bad.env"
        env_file.write_text("SMSAGENT_BACKOFF_CAP=forever\n")
        result = run_agent(good, env_file)
        assert_refused(result, "SMSAGENT_BACKOFF_CAP")


def test_good_settings_get_past_validation(
    good: dict[str, str], env_file: Path, tmp_path: Path
) -> None:
    """The same settings, valid, are accepted: the agent starts and only stops at SIGTERM
    (here it cannot reach the endpoint, so it keeps retrying registration)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "smsagent", "run", "--env-file", str(env_file)],
        env=child_environment({**good, "SMSAGENT_BACKOFF_CAP": "1"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        seen = [process.stderr.readline()]
        while seen[-1] and '"agent_starting"' not in seen[-1]:
            seen.append(process.stderr.readline())
        process.terminate()
        _, rest = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        process.kill()
        process.wait()
    assert '"agent_starting"' in seen[-1]
    assert process.returncode == 0
    assert secrets.count_in("".join(seen) + rest) == 0
