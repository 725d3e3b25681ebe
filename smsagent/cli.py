"""The `smsagent` command: picks a subcommand, runs it, and decides the exit code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Callable, Optional

from smsagent import __version__

# Each subcommand lives in its own module with `main(argv) -> int`. They are imported only when
# chosen, so `smsagent inventory` or `smsagent status` does not pay for aiohttp and the agent.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("smsagent.service_cli", "run in the foreground until SIGTERM/SIGINT"),
    "check": ("smsagent.checks.cli", "check settings, this server and the SMS endpoint"),
    "status": ("smsagent.status", "show the agent's state from the state directory"),
    "inventory": ("smsagent.inventory.cli", "print the registration body as JSON"),
    "emulator": ("smsagent.emulator.cli", "serve a local SMS-compatible control plane"),
    "version": ("smsagent.version_cli", "print the version and the loaded handlers"),
}

EXIT_OK = 0
EXIT_USAGE = 2


def _usage() -> str:
    lines = ["usage: smsagent <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "smsagent <command> --help shows the options of a command."]
    return "\n".join(lines)


def _load(name: str) -> Callable[[Sequence[str]], int]:
    module_name, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    entry: Callable[[Sequence[str]], int] = module.main
    return entry


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `smsagent` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return EXIT_OK if args else EXIT_USAGE
    if args[0] in ("-V", "--version"):
        print(f"smsagent {__version__}")
        return EXIT_OK
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"smsagent: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    return _load(name)(rest)


if __name__ == "__main__":
    sys.exit(main())
