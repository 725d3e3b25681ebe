"""The pure parts of the network measurement: /proc parsing, latency figures, the grade."""

from __future__ import annotations

from typing import Optional

import pytest

from smsagent.api.enums import CheckResult
from smsagent.api.models import NetworkCheckInfoRequestBody
from smsagent.checks.network import (
    GOOD,
    MEDIUM,
    POOR,
    CpuTimes,
    LatencyStats,
    cpu_percent,
    evaluate,
    latency_stats,
    mem_percent,
    network_check,
    parse_cpu_times,
    upload_rate,
)
from smsagent.target.session import AUTH_REFUSED, SSH_FAILED, TargetError

PROC_STAT = """\
cpu  4705 356 584 3699 23 23 0 0 0 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0
intr 1462898
"""
MEMINFO = """\
MemTotal:        8000000 kB
MemFree:         1000000 kB
MemAvailable:    6000000 kB
Buffers:          100000 kB
"""


class TestProc:
    def test_cpu_times(self) -> None:
        """Busy ticks leave out idle and iowait; guest time is already inside user time."""
        times = parse_cpu_times(PROC_STAT)
        assert times == CpuTimes(
            busy=4705 + 356 + 584 + 23, total=4705 + 356 + 584 + 3699 + 23 + 23
        )

    def test_cpu_percent(self) -> None:
        """The busy share between two readings; no ticks in between reads as 0."""
        assert cpu_percent(CpuTimes(100, 1000), CpuTimes(150, 1200)) == 25.0
        assert cpu_percent(CpuTimes(100, 1000), CpuTimes(100, 1000)) == 0.0

    def test_mem_percent(self) -> None:
        """Memory in use is total minus available."""
        assert mem_percent(MEMINFO) == 25.0

    def test_bad_input(self) -> None:
        """A /proc file without the needed lines is an error, not a zero."""
        with pytest.raises(ValueError, match="cpu line"):
            parse_cpu_times("intr 1\n")
        with pytest.raises(ValueError, match="MemAvailable"):
            mem_percent("MemTotal: 100 kB\n")


class TestLatency:
    def test_figures(self) -> None:
        """Delay is the mean, jitter the mean change between consecutive samples, loss a share."""
        stats = latency_stats([0.010, 0.014, None, 0.012])
        assert stats == LatencyStats(delay_ms=12.0, jitter_ms=3.0, loss_percent=25.0)

    @pytest.mark.parametrize(
        ("samples", "expected"),
        [
            ([], LatencyStats(0.0, 0.0, 100.0)),
            ([None, None], LatencyStats(0.0, 0.0, 100.0)),
            ([0.002], LatencyStats(2.0, 0.0, 0.0)),
        ],
    )
    def test_edges(self, samples: list[Optional[float]], expected: LatencyStats) -> None:
        """No samples or all lost is 100 % loss; a single sample has no jitter."""
        assert latency_stats(samples) == expected


class TestGrade:
    @pytest.mark.parametrize(
        ("stats", "speed", "connected", "grade"),
        [
            (LatencyStats(1.0, 0.1, 0.0), 900.0, True, GOOD),
            (LatencyStats(80.0, 5.0, 0.0), 900.0, True, MEDIUM),
            (LatencyStats(1.0, 0.1, 2.0), 900.0, True, MEDIUM),
            (LatencyStats(1.0, 0.1, 0.0), 50.0, True, MEDIUM),
            (LatencyStats(250.0, 5.0, 0.0), 900.0, True, POOR),
            (LatencyStats(1.0, 0.1, 10.0), 900.0, True, POOR),
            (LatencyStats(1.0, 0.1, 0.0), None, True, POOR),
            (LatencyStats(0.0, 0.0, 100.0), None, False, POOR),
        ],
    )
    def test_evaluate(
        self, stats: LatencyStats, speed: Optional[float], connected: bool, grade: str
    ) -> None:
        """Grades follow delay, loss and bandwidth; unreachable or unmeasured is poor."""
        assert evaluate(stats, speed, connected) == grade

    def _body(self, grade: str, connected: bool = True) -> NetworkCheckInfoRequestBody:
        return NetworkCheckInfoRequestBody(
            domain_connectivity=True,
            destination_connectivity=connected,
            network_delay=1.0,
            network_jitter=0.1,
            migration_speed=900.0,
            loss_percentage=0.0,
            cpu_usage=10.0,
            mem_usage=20.0,
            evaluation_result=grade,
        )

    def test_check(self) -> None:
        """Good is OK, medium WARN, a failed bandwidth test WARN, no target not checked."""
        assert network_check(self._body(GOOD), None).result is CheckResult.OK
        assert network_check(self._body(MEDIUM), None).result is CheckResult.WARN
        failed = network_check(self._body(GOOD), "bandwidth not measured: no SSH login")
        assert failed.result is CheckResult.WARN and "no SSH login" in failed.reason
        unreachable = network_check(self._body(POOR, connected=False), None)
        assert unreachable.reason.startswith("not checked")
        assert network_check(self._body(GOOD), None).details["migration_speed"] == 900.0


class TestUploadRate:
    def test_rate(self) -> None:
        """Bytes over seconds, in Mbit/s."""
        assert upload_rate(0, 125_000_000, 2.0, []) == 500.0

    def test_ssh_failure_keeps_its_code(self) -> None:
        """An ssh failure (exit 255) carries the SMS code its message maps to."""
        with pytest.raises(TargetError) as caught:
            upload_rate(255, 0, 0.0, ["root@10.0.0.2: Permission denied (publickey)."])
        assert caught.value.error_code == AUTH_REFUSED

    def test_nothing_sent(self) -> None:
        """A sink that failed, or an upload of nothing, is SMS.3802 with the last message."""
        with pytest.raises(TargetError) as caught:
            upload_rate(1, 0, 0.0, ["sh: 1: cat: not found"])
        assert caught.value.error_code == SSH_FAILED
        assert "cat: not found" in caught.value.message
