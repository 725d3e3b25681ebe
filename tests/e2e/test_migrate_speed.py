"""The speed limit in force (`GET speed-limit` windows) holds the copy's rate, and a change of the
windows takes effect while the copy runs.

The rate is measured independently of the agent: bytes leaving the test's end of the veth link to
the target (what the wire carries, SSH and TCP included).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsagent.api.enums import CommandResult
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, assert_identical, migration_rig
from tests.support.target import TargetHost
from tests.support.tree import MiB

pytestmark = pytest.mark.root

MIGRATE = "MIGRATE_LINUX_FILE"
ALL_DAY = ("00:00", "23:59")
TOLERANCE = 0.20


def write_random(path: Path, size_bytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for _ in range(size_bytes // (4 * MiB)):
            handle.write(os.urandom(4 * MiB))


def sent_bytes(target_host: TargetHost) -> int:
    """Bytes this side of the link has sent towards the target."""
    return int(Path(f"/sys/class/net/{target_host.host_if}/statistics/tx_bytes").read_text())


async def measured_mbit_s(target_host: TargetHost, seconds: float) -> float:
    """The rate on the link towards the target over `seconds`, Mbit/s."""
    first, started = sent_bytes(target_host), time.monotonic()
    await asyncio.sleep(seconds)
    return (sent_bytes(target_host) - first) * 8 / 1e6 / (time.monotonic() - started)


@pytest.fixture
async def rig(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost
) -> AsyncIterator[MigrationRig]:
    source = tmp_path / "source"
    write_random(source / "data" / "big.bin", 320 * MiB)
    async with migration_rig(tmp_path / "agent", emulator, target_host, source) as made:
        made.create_task(is_need_consistency_check=False)
        yield made


class TestSpeedLimit:
    @pytest.mark.slow
    @pytest.mark.timeout(240)
    async def test_rate_follows_the_window_in_force(
        self, rig: MigrationRig, target_host: TargetHost
    ) -> None:
        """80 Mbit/s is kept within 20 %; the windows changed to 40 Mbit/s mid-copy, the new
        limit holds within the re-read period, and STOP then ends the copy."""
        await rig.set_speed_limits([(*ALL_DAY, 80)])
        await rig.start()
        await rig.wait_for_record(lambda r: r.progress_of(MIGRATE).bytes_done > 8 * MiB)

        at_80 = await measured_mbit_s(target_host, 8.0)
        await rig.set_speed_limits([(*ALL_DAY, 40)])
        await asyncio.sleep(3.0)  # the rig re-reads the windows every second
        at_40 = await measured_mbit_s(target_host, 8.0)
        await rig.stop()

        assert abs(at_80 - 80) <= 80 * TOLERANCE, at_80
        assert abs(at_40 - 40) <= 40 * TOLERANCE, at_40

    @pytest.mark.slow
    @pytest.mark.timeout(120)
    async def test_lifting_the_limit_restarts_on_the_partial_file(
        self, rig: MigrationRig, target_host: TargetHost
    ) -> None:
        """When the window in force goes away the stream restarts unlimited, reusing what it
        sent, and the copy completes identical."""
        await rig.set_speed_limits([(*ALL_DAY, 40)])
        await rig.start()
        await rig.wait_for_record(lambda r: r.progress_of(MIGRATE).bytes_done > 8 * MiB)
        await rig.set_speed_limits([])
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert settled.detail["stream_restarts"] >= 1
        assert settled.detail["literal_bytes"] < 320 * MiB  # the last run matched the first part
        assert_identical(rig.source_root, target_host.root)
