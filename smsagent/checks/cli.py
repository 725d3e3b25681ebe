"""`smsagent check`: settings, this server and the SMS endpoint, as a table or as JSON."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Optional

from smsagent import log as logging_setup
from smsagent.agent.connect import make_client
from smsagent.agent.preflight import PRIVACY_STATEMENT, local_preflight
from smsagent.checks.endpoint import (
    CLOCK,
    CREDENTIALS,
    ENDPOINT,
    TLS_FAILED,
    endpoint_checks,
    privacy_check,
)
from smsagent.checks.install import install_checks
from smsagent.checks.local import run_local_checks
from smsagent.checks.model import Check, all_failed_as, bounded, first_error
from smsagent.checks.render import render_json, render_table
from smsagent.config import DEFAULT_ENV_FILE, ConfigError, Settings, default_env_file, load_settings

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
DEFAULT_TIMEOUT_S: Final = 30.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsagent check",
        description=(
            "Check the settings, this server and the SMS endpoint; exit 0 when no check is "
            "ERROR, 1 when one is, 2 when the settings are unusable."
        ),
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help=f"settings file in KEY=value lines (default: {DEFAULT_ENV_FILE} if it exists)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds each check may take (default: {DEFAULT_TIMEOUT_S:g})",
    )
    return parser


async def _endpoint(settings: Settings, timeout_s: float) -> list[Check]:
    failed = all_failed_as(ENDPOINT, CLOCK, CREDENTIALS, PRIVACY_STATEMENT)
    try:
        async with make_client(settings) as client:

            async def ask() -> list[Check]:
                checks = await endpoint_checks(client, settings)
                return [*checks, await privacy_check(client, settings, checks[-1])]

            return await bounded(ask, timeout_s, failed)
    except ValueError as exc:  # an unusable CA bundle: the client cannot be opened
        return failed(str(exc), TLS_FAILED)


async def run_checks(settings: Settings, env_file: Optional[Path], timeout_s: float) -> list[Check]:
    """Every check `smsagent check` makes, in the order shown: among them, as ERRORs, all
    that stops `smsagent run`, in `run`'s words."""
    preflight = local_preflight(settings.state_dir, settings.disabled_handlers)
    checks = install_checks(env_file, preflight)
    source_checks, _ = await run_local_checks(settings.source_root, None, timeout_s)
    checks += source_checks
    checks += await _endpoint(settings, timeout_s)
    return checks


def _env_file_read(env_file: Optional[Path]) -> Optional[Path]:
    """The env file the settings came from (the default one only when it exists)."""
    return env_file if env_file is not None else default_env_file()


def main(argv: Sequence[str]) -> int:
    """Run the checks, print them, and return 0 (no ERROR), 1 (an ERROR) or 2 (bad settings)."""
    args = _parser().parse_args(list(argv))
    if not args.timeout > 0:
        print("smsagent check: --timeout must be more than 0 seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = load_settings(args.env_file)
    except ConfigError as exc:
        print(f"smsagent check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging_setup.configure("console", "warning", stream=sys.stderr)
    for secret in settings.secrets():
        logging_setup.register_secret(secret)
    checks = asyncio.run(run_checks(settings, _env_file_read(args.env_file), args.timeout))
    print(render_json(checks) if args.json else render_table(checks))
    return EXIT_ERROR if first_error(checks) else EXIT_OK
