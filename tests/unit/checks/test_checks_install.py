"""Checks of the installation: the env file's and state dir's owner and mode, the handlers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smsagent.api.enums import CheckResult
from smsagent.checks.install import (
    HANDLERS_BROKEN,
    INSECURE_FILE,
    env_file_check,
    handlers_check,
    permission_problems,
    state_dir_check,
)

OK, WARN, ERROR = CheckResult.OK, CheckResult.WARN, CheckResult.ERROR
NOBODY = 65534


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("files owned by root need root")


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


class TestHandlers:
    def test_installed_handlers_load(self) -> None:
        """The installed handlers load, and the check lists them with their distribution."""
        check = handlers_check(())
        assert check.result is OK
        handlers = check.details["handlers"]
        assert isinstance(handlers, list) and any("stop (smsagent " in h for h in handlers)

    def test_required_handler_cannot_be_disabled(self) -> None:
        """Disabling the STOP handler is ERROR naming it."""
        check = handlers_check(["stop"])
        assert (check.result, check.error_code) == (ERROR, HANDLERS_BROKEN)
        assert "STOP" in check.reason
