"""`python -m smsagent` runs the `smsagent` command."""

from __future__ import annotations

import sys

from smsagent.cli import main

sys.exit(main())
