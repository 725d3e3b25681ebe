"""The drill's report: the overall verdict and the command result's detail."""

from __future__ import annotations

import json

import pytest

from smsagent.api.enums import CheckResult, CopyState
from smsagent.api.models import NetworkCheckInfoRequestBody
from smsagent.checks.drill import DrillReport
from smsagent.checks.model import Check

NETWORK = NetworkCheckInfoRequestBody(
    domain_connectivity=True,
    destination_connectivity=True,
    network_delay=0.5,
    network_jitter=0.1,
    migration_speed=900.0,
    loss_percentage=0.0,
    cpu_usage=12.5,
    mem_usage=40.0,
    evaluation_result="good",
)


def _report(*checks: Check, state: CopyState = CopyState.premiged) -> DrillReport:
    return DrillReport("task-1", checks, NETWORK, True, state)


class TestReport:
    def test_passed(self) -> None:
        """Warnings do not fail a drill; the message counts checks and warnings."""
        report = _report(Check.ok("a", "fine"), Check.warn("b", "look", "SMS.1353"))
        assert report.passed and report.result is CheckResult.WARN
        assert report.error_code is None
        assert report.message == "migration drill passed: 2 checks, 1 WARN"

    def test_failed(self) -> None:
        """Any ERROR fails it; the first error's code is the result's code."""
        report = _report(
            Check.ok("a", "fine"),
            Check.error("target_login", "refused", "SMS.3804"),
            Check.error("target_space", "full", "SMSAGENT.TARGET_SPACE"),
            state=CopyState.premigfailed,
        )
        assert not report.passed and report.result is CheckResult.ERROR
        assert report.error_code == "SMS.3804"
        assert report.message == "migration drill failed: target_login, target_space"

    def test_check_by_name(self) -> None:
        """A check is found by its name; an unknown name is a KeyError."""
        report = _report(Check.ok("clock", "agrees"))
        assert report.check("clock").reason == "agrees"
        with pytest.raises(KeyError):
            report.check("nope")

    def test_result_detail(self) -> None:
        """The detail is JSON with the state, the verdict, every check and the measurement."""
        report = _report(
            Check.ok("clock", "agrees", skew_s=0.4),
            Check.error("rsync_target", "missing", "SMSAGENT.TARGET_RSYNC"),
            state=CopyState.premigfailed,
        )
        detail = json.loads(json.dumps(report.result_detail()))
        assert detail == {
            "task_id": "task-1",
            "state": "premigfailed",
            "result": "ERROR",
            "error_code": "SMSAGENT.TARGET_RSYNC",
            "message": "migration drill failed: rsync_target",
            "checks": [
                {
                    "name": "clock",
                    "result": "OK",
                    "reason": "agrees",
                    "error_code": None,
                    "details": {"skew_s": 0.4},
                },
                {
                    "name": "rsync_target",
                    "result": "ERROR",
                    "reason": "missing",
                    "error_code": "SMSAGENT.TARGET_RSYNC",
                },
            ],
            "network_check_info": NETWORK.to_wire(),
            "network_reported": True,
        }
