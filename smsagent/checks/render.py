"""Check results as a table for people and as JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from smsagent.api.enums import CheckResult
from smsagent.checks.model import Check, overall

HEADERS: Final = ("CHECK", "RESULT", "CODE", "REASON")
_GAP: Final = "  "


def _row(check: Check) -> tuple[str, str, str, str]:
    # A reason is one line; a stray line break would break the table's columns.
    return (check.name, check.result.value, check.error_code or "", " ".join(check.reason.split()))


def summary(checks: Sequence[Check]) -> str:
    """`result: WARN (12 checks: 11 OK, 1 WARN, 0 ERROR)`."""
    counts = {result: sum(c.result is result for c in checks) for result in CheckResult}
    parts = ", ".join(f"{counts[result]} {result.value}" for result in CheckResult)
    return f"result: {overall(checks).value} ({len(checks)} checks: {parts})"


def render_table(checks: Sequence[Check]) -> str:
    """A column-aligned table, one check per line, and a summary line."""
    rows = [HEADERS, *(_row(check) for check in checks)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADERS) - 1)]
    lines = [
        _GAP.join(cell.ljust(width) for cell, width in zip(row, widths)) + _GAP + row[-1]
        for row in rows
    ]
    return "\n".join([*lines, "", summary(checks)])


def render_json(checks: Sequence[Check]) -> str:
    """`{"result": ..., "checks": [{name, result, reason, error_code, details?}, ...]}`."""
    document = {"result": overall(checks).value, "checks": [check.to_json() for check in checks]}
    return json.dumps(document, indent=2, ensure_ascii=False)
