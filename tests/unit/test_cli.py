"""The `smsagent` command: subcommand dispatch, usage errors, version and handler listing."""

from __future__ import annotations

import subprocess
import sys

from smsagent import __version__
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
