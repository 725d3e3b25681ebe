"""Checks of the installation: the env file's owner and mode, the state dir's verdict, owner
and mode, the handlers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smsagent.agent.preflight import HANDLERS_BROKEN, Blocked, local_preflight
from smsagent.agent.statedir import STATE_DIR_UNUSABLE
from smsagent.api.enums import CheckResult
from smsagent.checks.install import (
    INSECURE_FILE,
    env_file_check,
    handlers_check,
    permission_problems,
)
from smsagent.checks.install import state_dir_check as check_of_preflight
from smsagent.checks.model import Check
from tests.support.emulator import free_port
from tests.support.mounts import tmpfs

OK, WARN, ERROR = CheckResult.OK, CheckResult.WARN, CheckResult.ERROR
NOBODY = 65534
CLI_TIMEOUT_S = 60


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("files owned by root need root")


@contextlib.contextmanager
def read_only_tmpfs(mount_point: Path) -> Iterator[Path]:
    """An empty read-only tmpfs (mode 0700) at `mount_point`; always unmounted after."""
    with tmpfs(mount_point, "size=1m,ro,mode=0700") as mounted:
        yield mounted


def _problem(state_dir: Path) -> str:
    """The sentence `smsagent run` stops on (the service calls `require` before it opens
    anything)."""
    with pytest.raises(Blocked) as raised:
        local_preflight(state_dir, ()).require()
    return str(raised.value)


def state_dir_check(state_dir: Path) -> Check:
    return check_of_preflight(local_preflight(state_dir, ()))


class TestPermissionProblems:
    @pytest.mark.parametrize(
        ("mode", "uid", "expected"),
        [
            (0o100600, 0, []),
            (0o100400, 0, []),
            (0o100644, 0, ["the env file is readable by others (mode 0644)"]),
            (0o100640, 0, ["the env file is open to its group or others (mode 0640)"]),
            (0o100602, 0, ["the env file is open to its group or others (mode 0602)"]),
            (0o100600, 1000, ["the env file is owned by uid 1000, not root"]),
            (
                0o100604,
                1000,
                [
                    "the env file is readable by others (mode 0604)",
                    "the env file is owned by uid 1000, not root",
                ],
            ),
        ],
    )
    def test_table(self, mode: int, uid: int, expected: list[str]) -> None:
        """Only root, and no group or other bits, keep the credentials private."""
        assert permission_problems(mode, uid, what="the env file") == expected


class TestEnvFile:
    def test_private(self, tmp_path: Path) -> None:
        """A root-owned 0600 env file is OK."""
        _needs_root()
        env_file = tmp_path / "smsagent.env"
        env_file.write_text("SMSAGENT_AK=x\n")
        env_file.chmod(0o600)
        check = env_file_check(env_file)
        assert check.result is OK and check.details["mode"] == "0600"

    def test_readable_by_others(self, tmp_path: Path) -> None:
        """A world-readable env file is WARN with the fix to apply."""
        env_file = tmp_path / "smsagent.env"
        env_file.write_text("SMSAGENT_AK=x\n")
        env_file.chmod(0o644)
        check = env_file_check(env_file)
        assert (check.result, check.error_code) == (WARN, INSECURE_FILE)
        assert "readable by others" in check.reason
        assert f"chmod 0600 {env_file}" in check.reason

    def test_not_owned_by_root(self, tmp_path: Path) -> None:
        """An env file another user owns is WARN naming the owner."""
        _needs_root()
        env_file = tmp_path / "smsagent.env"
        env_file.write_text("SMSAGENT_AK=x\n")
        env_file.chmod(0o600)
        os.chown(env_file, NOBODY, NOBODY)
        check = env_file_check(env_file)
        assert check.result is WARN and f"uid {NOBODY}, not root" in check.reason

    def test_none(self) -> None:
        """Without an env file there is nothing to protect."""
        assert env_file_check(None).result is OK


class TestStateDir:
    def test_private(self, tmp_path: Path) -> None:
        """A root-owned 0700 state dir is OK."""
        _needs_root()
        state_dir = tmp_path / "state"
        state_dir.mkdir(mode=0o700)
        assert state_dir_check(state_dir).result is OK

    def test_open(self, tmp_path: Path) -> None:
        """A state dir others may enter is WARN: it holds task keys."""
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        state_dir.chmod(0o755)
        check = state_dir_check(state_dir)
        assert check.result is WARN and "chmod 0700" in check.reason

    def test_missing_and_not_a_directory(self, tmp_path: Path) -> None:
        """A state dir not made yet is fine; a file in its place is ERROR."""
        assert state_dir_check(tmp_path / "absent").result is OK
        (tmp_path / "file").write_text("")
        check = state_dir_check(tmp_path / "file")
        assert check.result is ERROR and "not a directory" in check.reason

    def test_missing_and_not_creatable(self, tmp_path: Path) -> None:
        """A state dir that cannot be made is ERROR with the sentence `run` stops on."""
        (tmp_path / "file").write_text("")
        state_dir = tmp_path / "file" / "state"
        check = state_dir_check(state_dir)
        assert (check.result, check.error_code) == (ERROR, STATE_DIR_UNUSABLE)
        assert check.reason == _problem(state_dir)

    @pytest.mark.root
    def test_read_only(self, tmp_path: Path) -> None:
        """A read-only state dir is ERROR, though its mode and owner are right."""
        with read_only_tmpfs(tmp_path / "state") as state_dir:
            check = state_dir_check(state_dir)
            problem = _problem(state_dir)
        assert (check.result, check.error_code) == (ERROR, STATE_DIR_UNUSABLE)
        assert check.reason == problem and "is read-only" in problem

    @pytest.mark.root
    def test_owned_by_another_user(self, tmp_path: Path) -> None:
        """A state dir another user owns is ERROR: that user could change the agent's state."""
        _needs_root()
        state_dir = tmp_path / "state"
        state_dir.mkdir(mode=0o700)
        os.chown(state_dir, NOBODY, NOBODY)
        check = state_dir_check(state_dir)
        assert check.result is ERROR and check.reason == _problem(state_dir)
        assert f"chown -R root {state_dir}" in check.reason

    def test_corrupt_document(self, tmp_path: Path) -> None:
        """A document the agent will quarantine is WARN naming it; it is left where it is."""
        state_dir = tmp_path / "state"
        state_dir.mkdir(mode=0o700)
        state_dir.chmod(0o700)
        (state_dir / "task.json").write_text("{")
        check = state_dir_check(state_dir)
        if os.geteuid() == 0:
            assert (check.result, check.error_code) == (WARN, STATE_DIR_UNUSABLE)
        assert f"{state_dir / 'task.json'} is not valid JSON" in check.reason
        assert "moved to corrupt/" in check.reason
        assert (state_dir / "task.json").read_text() == "{"

    def test_open_and_corrupt(self, tmp_path: Path) -> None:
        """Open permissions and a corrupt document are one WARN with the permission code."""
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        state_dir.chmod(0o755)
        (state_dir / "agent.json").write_text("[]")
        check = state_dir_check(state_dir)
        assert (check.result, check.error_code) == (WARN, INSECURE_FILE)
        assert check.reason.index("chmod 0700") < check.reason.index("agent.json")

    @pytest.mark.root
    @pytest.mark.timeout(90)
    def test_cli_reports_read_only(self, tmp_path: Path) -> None:
        """`smsagent check` shows a read-only state dir as ERROR, with `run`'s sentence, exit 1."""
        source_root = tmp_path / "source"
        source_root.mkdir()
        with read_only_tmpfs(tmp_path / "state") as state_dir:
            env_file = tmp_path / "smsagent.env"
            settings = {
                "SMSAGENT_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                "SMSAGENT_AK": "check-ak",
                "SMSAGENT_SK": "check-sk-0123456789",
                "SMSAGENT_STATE_DIR": str(state_dir),
                "SMSAGENT_SOURCE_ROOT": str(source_root),
            }
            env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
            env_file.chmod(0o600)
            environment = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
            argv = [sys.executable, "-m", "smsagent", "check", "--json", "--timeout", "10"]
            done = subprocess.run(
                [*argv, "--env-file", str(env_file)],
                env=environment,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT_S,
                check=False,
            )
            problem = _problem(state_dir)
        assert done.returncode == 1, done.stderr
        checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
        state = checks["state_dir"]
        assert (state["result"], state["error_code"]) == ("ERROR", STATE_DIR_UNUSABLE)
        assert state["reason"] == problem


class TestHandlers:
    def test_installed_handlers_load(self, tmp_path: Path) -> None:
        """The installed handlers load, and the check lists them with their distribution."""
        check = handlers_check(local_preflight(tmp_path, ()))
        assert check.result is OK
        handlers = check.details["handlers"]
        assert isinstance(handlers, list) and any("stop (smsagent " in h for h in handlers)

    def test_required_handler_cannot_be_disabled(self, tmp_path: Path) -> None:
        """Disabling the STOP handler is ERROR naming it."""
        check = handlers_check(local_preflight(tmp_path, ["stop"]))
        assert (check.result, check.error_code) == (ERROR, HANDLERS_BROKEN)
        assert "STOP" in check.reason
