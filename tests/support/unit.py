"""The shipped systemd unit as the agent's tests and benchmarks need it: how it starts Python.

    env = {**os.environ, **unit_python_environment(cache_dir)}

The unit runs the agent at `-OO` with a bytecode cache of its own (`PYTHONOPTIMIZE=`,
`PYTHONPYCACHEPREFIX=`); an agent started by a test or a benchmark gets the same interpreter
settings, read from the unit, so that what is tested and measured is what a server runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

UNIT_FILE: Final = Path(__file__).resolve().parents[2] / "systemd" / "smsagent.service"
CACHE_VARIABLE: Final = "PYTHONPYCACHEPREFIX"
# Python skips writing bytecode when this is set; the unit never sets it.
NO_CACHE_VARIABLE: Final = "PYTHONDONTWRITEBYTECODE"


def unit_python_environment(cache_dir: Path, unit_file: Path = UNIT_FILE) -> dict[str, str]:
    """The `PYTHON*` variables of the unit's `Environment=` lines, its cache moved to `cache_dir`.

    The unit's cache directory is a system path; a test keeps its bytecode elsewhere.
    """
    variables: dict[str, str] = {}
    for line in unit_file.read_text().splitlines():
        key, _, assignment = line.partition("=")
        if key.strip() != "Environment":
            continue
        name, _, value = assignment.strip().partition("=")
        if name.startswith("PYTHON"):
            variables[name] = value
    if CACHE_VARIABLE in variables:
        variables[CACHE_VARIABLE] = str(cache_dir)
    return variables
