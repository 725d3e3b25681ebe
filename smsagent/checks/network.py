"""Network measurement between this server and the target (spec §3.15), without ICMP.

Raw ICMP needs privileges a service should not hold, so latency, jitter and loss come from
repeated TCP handshakes with the target's SSH port, and bandwidth from a bounded upload through
SSH. CPU and memory use of this server are read from /proc over the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Final, Optional

from smsagent.api.enums import CheckResult
from smsagent.api.models import NetworkCheckInfoRequestBody
from smsagent.checks.model import Check
from smsagent.checks.target import connect_once
from smsagent.childproc import LineTail, drain_into, minimal_env, stop_process
from smsagent.target.session import (
    CONNECT_TIMEOUT,
    SSH_EXIT_FAILED,
    SSH_FAILED,
    TargetError,
    TargetSession,
    classify_ssh_failure,
)
from smsagent.waits import within

NETWORK: Final = "network"

GOOD: Final = "good"
MEDIUM: Final = "medium"
POOR: Final = "poor"

PROC_STAT: Final = Path("/proc/stat")
PROC_MEMINFO: Final = Path("/proc/meminfo")

_CHUNK: Final = bytes(64 * 1024)
# The remote side says it is ready (the SSH handshake is over) and then swallows its input.
_SINK: Final = shlex.join(["sh", "-c", "echo ready && exec cat >/dev/null"])
_STOP_GRACE_S: Final = 2.0


@dataclass(frozen=True)
class NetworkOptions:
    """How much the measurement does.

    Attributes:
        connect_attempts: TCP handshakes for latency, jitter and loss.
        connect_interval_s: pause between handshakes.
        connect_timeout_s: a handshake slower than this counts as lost.
        upload_bytes: the most the bandwidth test sends.
        upload_budget_s: the bandwidth test stops sending after this long.
        upload_timeout_s: the whole bandwidth test, SSH login included, is cut off after this.
    """

    connect_attempts: int = 10
    connect_interval_s: float = 0.2
    connect_timeout_s: float = 3.0
    upload_bytes: int = 64 * 1024 * 1024
    upload_budget_s: float = 10.0
    upload_timeout_s: float = 40.0


@dataclass(frozen=True)
class CpuTimes:
    """The `cpu` line of /proc/stat: busy and total clock ticks since boot."""

    busy: int
    total: int


@dataclass(frozen=True)
class LatencyStats:
    """Figures from TCP handshakes: mean delay, mean change between samples, share lost."""

    delay_ms: float
    jitter_ms: float
    loss_percent: float


@dataclass(frozen=True)
class NetworkMeasurement:
    """The body for `update-network-check-info` and the `network` check that sums it up."""

    body: NetworkCheckInfoRequestBody
    check: Check


def parse_cpu_times(proc_stat: str) -> CpuTimes:
    """The machine's CPU ticks from /proc/stat; idle and iowait count as not busy.

    Raises:
        ValueError: there is no `cpu` line.
    """
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:]]
            # user nice system idle iowait irq softirq steal (guest time is inside user/nice).
            counted = ticks[:8]
            idle = sum(counted[3:5])
            return CpuTimes(busy=sum(counted) - idle, total=sum(counted))
    raise ValueError("/proc/stat has no cpu line")


def cpu_percent(before: CpuTimes, after: CpuTimes) -> float:
    """Busy share of all CPUs between two readings, 0..100."""
    total = after.total - before.total
    if total <= 0:
        return 0.0
    return round(100.0 * (after.busy - before.busy) / total, 1)


def mem_percent(meminfo: str) -> float:
    """Memory in use (total minus available) as a share of the total, 0..100.

    Raises:
        ValueError: `MemTotal` or `MemAvailable` is missing.
    """
    values: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            values[name] = int(rest.split()[0])
    if len(values) != 2 or values["MemTotal"] <= 0:
        raise ValueError("/proc/meminfo lacks MemTotal or MemAvailable")
    used = values["MemTotal"] - values["MemAvailable"]
    return round(100.0 * used / values["MemTotal"], 1)


def latency_stats(samples_s: Sequence[Optional[float]]) -> LatencyStats:
    """Delay, jitter (mean difference of consecutive delays, as RFC 3550 smooths it) and loss.

    Args:
        samples_s: one handshake time per attempt, None for a lost one.
    """
    if not samples_s:
        return LatencyStats(0.0, 0.0, 100.0)
    delays_ms = [sample * 1000.0 for sample in samples_s if sample is not None]
    loss = 100.0 * (len(samples_s) - len(delays_ms)) / len(samples_s)
    if not delays_ms:
        return LatencyStats(0.0, 0.0, round(loss, 1))
    steps = [abs(b - a) for a, b in zip(delays_ms, delays_ms[1:])]
    jitter = statistics.fmean(steps) if steps else 0.0
    return LatencyStats(round(statistics.fmean(delays_ms), 2), round(jitter, 2), round(loss, 1))


def evaluate(stats: LatencyStats, speed_mbit_s: Optional[float], connected: bool) -> str:
    """`good`, `medium` or `poor`, as the console grades a measurement.

    Args:
        stats: latency figures.
        speed_mbit_s: measured bandwidth, or None when it could not be measured.
        connected: whether the target answered at all.
    """
    speed = speed_mbit_s if speed_mbit_s is not None else 0.0
    if not connected or stats.loss_percent >= 5.0 or stats.delay_ms >= 200.0 or speed < 10.0:
        return POOR
    if stats.loss_percent > 0.0 or stats.delay_ms >= 50.0 or speed < 100.0:
        return MEDIUM
    return GOOD


async def measure_connects(host: str, port: int, options: NetworkOptions) -> list[Optional[float]]:
    """One handshake time (s) per attempt; None for one refused, failed or timed out."""
    samples: list[Optional[float]] = []
    for attempt in range(options.connect_attempts):
        if attempt:
            await asyncio.sleep(options.connect_interval_s)
        try:
            samples.append(await connect_once(host, port, options.connect_timeout_s))
        except (OSError, asyncio.TimeoutError):
            samples.append(None)
    return samples


async def _push(
    proc: asyncio.subprocess.Process, max_bytes: int, budget_s: float
) -> tuple[int, float]:
    """Wait for the remote sink, send up to `max_bytes` within `budget_s`, wait for the end."""
    assert proc.stdin is not None and proc.stdout is not None
    if not await proc.stdout.readline():
        await proc.wait()  # ssh failed before the sink started; its exit code tells why
        return 0, 0.0
    started = time.monotonic()
    sent = 0
    try:
        while sent < max_bytes and time.monotonic() - started < budget_s:
            proc.stdin.write(_CHUNK)
            await proc.stdin.drain()
            sent += len(_CHUNK)
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        await proc.wait()
        return 0, 0.0
    # The sink exits once it has read everything: only then has every byte arrived.
    await proc.wait()
    return sent, time.monotonic() - started


async def measure_upload(session: TargetSession, options: NetworkOptions) -> float:
    """Send zeros through SSH to `cat >/dev/null` on the target; the rate in Mbit/s.

    The SSH handshake is not timed: the clock starts when the remote side says it is ready.

    Raises:
        TargetError: SSH failed, or the test outlived `upload_timeout_s` (SMS.3805).
    """
    # rsync's transport is this same ssh command, so the figure is what a copy would see.
    argv = [*session.ssh_argv(), "--", session.host, _SINK]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=minimal_env(),
        start_new_session=True,
    )
    stderr_tail = LineTail()
    draining = asyncio.ensure_future(drain_into(proc.stderr, stderr_tail))
    try:
        sent, elapsed_s = await within(
            _push(proc, options.upload_bytes, options.upload_budget_s), options.upload_timeout_s
        )
    except asyncio.TimeoutError:
        msg = f"the upload test did not finish within {options.upload_timeout_s:g} s"
        raise TargetError(CONNECT_TIMEOUT, msg) from None
    finally:
        await stop_process(proc, _STOP_GRACE_S)
        with contextlib.suppress(asyncio.TimeoutError):
            await within(draining, _STOP_GRACE_S)
    return upload_rate(proc.returncode, sent, elapsed_s, stderr_tail.lines())


def upload_rate(returncode: Optional[int], sent: int, elapsed_s: float, stderr: list[str]) -> float:
    """Mbit/s of an upload that ended with `returncode`, or the error that ended it.

    Raises:
        TargetError: ssh failed (its SMS code from its messages), or nothing was sent.
    """
    if returncode == SSH_EXIT_FAILED:
        raise classify_ssh_failure(stderr)
    if returncode != 0 or sent == 0 or elapsed_s <= 0:
        detail = stderr[-1] if stderr else f"exit {returncode}"
        raise TargetError(SSH_FAILED, f"the upload test failed: {detail}")
    return round(sent * 8 / elapsed_s / 1e6, 1)


def network_check(body: NetworkCheckInfoRequestBody, upload_problem: Optional[str]) -> Check:
    """OK for a good measurement, WARN for a medium or poor one or a failed bandwidth test."""
    figures = (
        f"delay {body.network_delay:.1f} ms, jitter {body.network_jitter:.1f} ms, "
        f"loss {body.loss_percentage:.0f} %, upload {body.migration_speed:.1f} Mbit/s"
    )
    details = body.to_wire()
    if not body.destination_connectivity:
        return Check.not_checked(NETWORK, "the target does not accept connections")
    if upload_problem is not None:
        return Check(NETWORK, CheckResult.WARN, f"{figures}; {upload_problem}", None, details)
    result = CheckResult.OK if body.evaluation_result == GOOD else CheckResult.WARN
    return Check(NETWORK, result, f"{body.evaluation_result}: {figures}", None, details)


async def _bandwidth(
    session: Optional[TargetSession], options: NetworkOptions
) -> tuple[Optional[float], Optional[str]]:
    """The upload rate, or None and why it is unknown."""
    if session is None:
        return None, "bandwidth not measured: no SSH login"
    try:
        return await measure_upload(session, options), None
    except TargetError as exc:
        return None, f"bandwidth not measured: {exc.message}"


async def measure_network(
    host: str,
    port: int,
    session: Optional[TargetSession],
    *,
    domain_connectivity: bool,
    options: NetworkOptions = NetworkOptions(),
    read_text: Callable[[Path], str] = Path.read_text,
) -> NetworkMeasurement:
    """Measure the way to the target and this server's load while doing it.

    Args:
        host: the target's address.
        port: its SSH port.
        session: a session that logged in, for the bandwidth test; None skips it.
        domain_connectivity: whether SMS answered (reported as is).
        options: how much to measure.
        read_text: reads /proc files.
    """
    cpu_before = parse_cpu_times(read_text(PROC_STAT))
    samples = await measure_connects(host, port, options)
    stats = latency_stats(samples)
    connected = any(sample is not None for sample in samples)
    speed, upload_problem = await _bandwidth(session if connected else None, options)
    cpu_after = parse_cpu_times(read_text(PROC_STAT))
    body = NetworkCheckInfoRequestBody(
        domain_connectivity=domain_connectivity,
        destination_connectivity=connected,
        network_delay=stats.delay_ms,
        network_jitter=stats.jitter_ms,
        migration_speed=speed or 0.0,
        loss_percentage=stats.loss_percent,
        cpu_usage=cpu_percent(cpu_before, cpu_after),
        mem_usage=mem_percent(read_text(PROC_MEMINFO)),
        evaluation_result=evaluate(stats, speed, connected),
    )
    return NetworkMeasurement(body, network_check(body, upload_problem))
