"""The check table and the JSON document of `smsagent check`."""

from __future__ import annotations

import json

from smsagent.checks.model import Check
from smsagent.checks.render import render_json, render_table, summary

CHECKS = [
    Check.ok("endpoint", "https://sms.example.com answered in 40 ms (TLS verified)"),
    Check.warn("env_file", "the env file is readable by others\n(mode 0644)", "SMSAGENT.FILE_MODE"),
    Check.error("credentials", "SMS refused the AK/SK signature", "SMS.0202", status=401),
]


class TestTable:
    def test_columns_line_up(self) -> None:
        """Every cell starts under its heading; a reason stays on one line."""
        lines = render_table(CHECKS).splitlines()
        header, rows = lines[0], lines[1:4]
        starts = [header.index(title) for title in ("CHECK", "RESULT", "CODE", "REASON")]
        bounds = list(zip(starts, [*starts[1:], None]))
        cells = [[row[start:end].strip() for start, end in bounds] for row in rows]
        assert cells == [
            ["endpoint", "OK", "", "https://sms.example.com answered in 40 ms (TLS verified)"],
            [
                "env_file",
                "WARN",
                "SMSAGENT.FILE_MODE",
                "the env file is readable by others (mode 0644)",
            ],
            ["credentials", "ERROR", "SMS.0202", "SMS refused the AK/SK signature"],
        ]
        assert all(row[start - 2 : start] == "  " for row in rows for start in starts[1:])

    def test_summary(self) -> None:
        """The last line gives the overall result and the counts."""
        assert render_table(CHECKS).splitlines()[-1] == summary(CHECKS)
        assert summary(CHECKS) == "result: ERROR (3 checks: 1 OK, 1 WARN, 1 ERROR)"
        assert summary([]) == "result: OK (0 checks: 0 OK, 0 WARN, 0 ERROR)"


class TestJson:
    def test_document(self) -> None:
        """JSON carries the overall result and every check with its fields and details."""
        document = json.loads(render_json(CHECKS))
        assert document["result"] == "ERROR"
        assert [check["name"] for check in document["checks"]] == [
            "endpoint",
            "env_file",
            "credentials",
        ]
        assert document["checks"][2] == {
            "name": "credentials",
            "result": "ERROR",
            "reason": "SMS refused the AK/SK signature",
            "error_code": "SMS.0202",
            "details": {"status": 401},
        }
