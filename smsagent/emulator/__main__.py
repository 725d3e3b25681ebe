"""`python -m smsagent.emulator`: the same as `smsagent emulator`."""

from __future__ import annotations

import sys

from smsagent.emulator.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
