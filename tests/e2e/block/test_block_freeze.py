"""The final pass's freeze is bounded: the source's file system thaws at the limit even when the
agent holding it is killed with SIGKILL (its watchdog, in a session of its own, thaws it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import blockcopy

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

HOLDER = """
import asyncio, sys, structlog
from smsagent.migration.block.freeze import frozen

async def main():
    async with frozen([sys.argv[1]], float(sys.argv[2]), structlog.get_logger()):
        print("frozen", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    with blockcopy.lab(tmp_path / "lab") as lab:
        device = lab.device("fs", 64)
        blockcopy.run("mkfs.ext4", "-q", "-F", device)
        root = lab.mount(device, "mnt")
        try:
            yield root
        finally:
            blockcopy.run("fsfreeze", "--unfreeze", str(root), check=False)


def write_takes_s(root: Path) -> float:
    """How long a write and fsync into `root` takes (a frozen file system holds it)."""
    started = time.monotonic()
    subprocess.run(
        ["sh", "-c", f"echo x > {root}/probe && sync -f {root}/probe"], check=True, timeout=60
    )
    return time.monotonic() - started


def test_a_killed_agent_leaves_no_frozen_file_system(mounted: Path) -> None:
    limit_s = 2.0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mounted), str(limit_s)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "frozen"
        frozen_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        blocked_s = write_takes_s(mounted)
    finally:
        if holder.poll() is None:
            holder.kill()
    thawed_after = time.monotonic() - frozen_at
    # The write waited for the watchdog: frozen no longer than the limit and its margin.
    assert blocked_s > 0.5, "the file system was not frozen"
    assert thawed_after < limit_s + 1.0 + 2.0, thawed_after
    assert write_takes_s(mounted) < 5.0


def test_the_freeze_ends_when_its_body_does(mounted: Path) -> None:
    import asyncio

    import structlog

    from smsagent.migration.block.freeze import frozen

    async def hold() -> float:
        async with frozen([str(mounted)], 10.0, structlog.get_logger()) as window:
            await asyncio.sleep(0.3)
        return window.held_s

    held_s = asyncio.run(hold())
    assert 0.3 <= held_s < 2.0
    assert write_takes_s(mounted) < 5.0
    # No watchdog is left to thaw anything later.
    left = subprocess.run(["pgrep", "-f", f"fsfreeze --unfreeze {mounted}"], capture_output=True)
    assert left.returncode == 1
