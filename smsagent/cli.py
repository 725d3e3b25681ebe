"""The `smsagent` command: parses arguments, runs one subcommand, decides the exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `smsagent` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["version"]:
        from smsagent import __version__

        print(__version__)
        return 0
    print("usage: smsagent {run,check,status,inventory,emulator,version}", file=sys.stderr)
    return 2
