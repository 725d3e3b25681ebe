"""`smsagent version`: the agent's version and every handler it would load, with its origin."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from smsagent import __version__
from smsagent.agent.registry import HandlerLoadError, HandlerRegistry


def main(argv: Sequence[str]) -> int:
    """Print the version and the handlers; 3 when the handlers cannot be loaded."""
    print(f"smsagent {__version__}")
    try:
        registry = HandlerRegistry.load()
    except HandlerLoadError as exc:
        print(f"smsagent: {exc}", file=sys.stderr)
        return 3
    for info in sorted(registry.infos, key=lambda info: info.name):
        served = sorted(c.value for c in info.commands) + sorted(info.task_types)
        origin = f"{info.distribution} {info.version}"
        print(f"  {info.name:<20} {origin:<26} {', '.join(served)}")
    return 0
