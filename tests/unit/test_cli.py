"""The `smsagent` command: subcommand dispatch, usage errors, version and handler listing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smsagent import __version__, config
from smsagent.cli import main


def test_unknown_command_is_a_usage_error(capsys):
    """An unknown subcommand exits 2 and shows the commands."""
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err
    assert "inventory" in err


def test_no_command_shows_usage_with_exit_2(capsys):
    """No subcommand at all is a usage error."""
    assert main([]) == 2
    assert "usage: smsagent" in capsys.readouterr().err


def test_help_exits_0(capsys):
    """`--help` is not an error."""
    assert main(["--help"]) == 0
    assert "status" in capsys.readouterr().out


def test_version_lists_every_handler_with_its_distribution():
    """`smsagent version` names built-ins and installed plugins with where they come from."""
    done = subprocess.run(
        [sys.executable, "-m", "smsagent", "version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == f"smsagent {__version__}"
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert "STOP" in by_name["stop"] and "smsagent " in by_name["stop"]
    assert "FSCOPY_TEST" in by_name["fscopy"] and "smsagent-fsplugin" in by_name["fscopy"]


@pytest.mark.parametrize("command", ["run", "check"])
def test_missing_default_env_file_is_named_first(command, monkeypatch, tmp_path, capsys):
    """Without the default env file and with nothing in the environment, `run` and `check`
    both exit 2 with one line that names the missing file before the missing setting."""
    for name in list(os.environ):
        if name.startswith("SMSAGENT_"):
            monkeypatch.delenv(name)
    absent = tmp_path / "etc" / "smsagent.env"
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", absent)

    assert main([command]) == 2
    out, err = capsys.readouterr()

    prefix = "smsagent" if command == "run" else "smsagent check"
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"{prefix}: env file {absent} does not exist and no --env-file was")
    assert err.rstrip().endswith("SMSAGENT_ENDPOINT is not set")
