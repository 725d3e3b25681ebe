"""`smsagent run`: load the settings, set up logging, run the service, map errors to exit codes."""

from __future__ import annotations

import argparse
import faulthandler
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog

from smsagent.config import ConfigError, load_settings
from smsagent.errors import StartupError
from smsagent.log import configure, register_secret
from smsagent.service import Service

EXIT_OK: Final = 0
EXIT_CONFIG: Final = 2
EXIT_STARTUP: Final = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsagent run",
        description="Run the agent in the foreground until SIGTERM or SIGINT (SIGHUP reloads).",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="settings file (default: /etc/smsagent/smsagent.env if it exists)",
    )
    parser.add_argument("--log-format", choices=("auto", "console", "json", "journal"))
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: Sequence[str]) -> int:
    """Run the agent; 0 after a clean stop, 2 for a settings error, 3 when it cannot start."""
    args = _parser().parse_args(list(argv))
    overrides = {
        name: value
        for name, value in (("log_format", args.log_format), ("log_level", args.log_level))
        if value is not None
    }
    try:
        settings = load_settings(args.env_file, overrides)
    except ConfigError as exc:
        print(f"smsagent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # A hung agent killed by the watchdog (SIGABRT) leaves its stack in the journal.
    faulthandler.enable()
    for secret in settings.secrets():
        register_secret(secret)
    configure(settings.log_format, settings.log_level)
    try:
        return Service(settings, env_file=args.env_file).run()
    except StartupError as exc:
        structlog.get_logger(__name__).error("startup_failed", error=str(exc))
        print(f"smsagent: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
