"""The figures a user reads agree with each other and with rsync: the source's size, the progress
reports' `totalsize`, what the target holds, what a sync pass sent and the rate shown for it.

Real emulator, real rsync, a real sshd in a network namespace (the rig of `test_migrate_sync.py`).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from smsagent.target.session import TargetSession
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, du_bytes, migration_rig
from tests.support.target import TargetHost
from tests.support.tree import SpecialTree

pytestmark = pytest.mark.root

MIGRATE = "MIGRATE_LINUX_FILE"
SYNC = "SYNC_LINUX_FILE"
# What a directory's own blocks may differ by between a tree written once (the target) and one
# that grew and shrank (the source): a few blocks per directory, never file data.
METADATA_SLACK_BYTES = 256 * 1024


@pytest.fixture
async def rig(
    tmp_path: Path, emulator: EmulatorProcess, target_host: TargetHost, special_tree: SpecialTree
) -> AsyncIterator[MigrationRig]:
    async with migration_rig(tmp_path / "agent", emulator, target_host, special_tree.root) as made:
        yield made


def stage_reports(rig: MigrationRig, stage: str) -> list[dict[str, Any]]:
    return [r for r in rig.progress_reports() if r["subtask_name"] == stage]


def regular_files(root: Path) -> tuple[int, int]:
    """Regular files (and symlinks) below `root` and their apparent sizes, as rsync lists them."""
    count = size = 0
    for directory, dirnames, files in os.walk(root):
        for name in files + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]:
            info = os.lstat(os.path.join(directory, name))
            count += 1
            size += info.st_size
    return count, size


def change_five_small_files(root: Path) -> int:
    """Five small files written with new content (two new, three rewritten); their bytes."""
    sizes = {
        root / "srv" / "new-1.txt": 3000,
        root / "srv" / "new-2.txt": 5000,
        root / "srv" / "many" / "small-001": 4000,
        root / "srv" / "many" / "small-002": 6000,
        root / "etc" / "config.txt": 2000,
    }
    for path, size in sizes.items():
        path.write_bytes(os.urandom(size))
    return sum(sizes.values())


def copy_tree(source: Path, destination: Path) -> None:
    """`cp -a`: hard links, owners, modes, times, ACLs and xattrs kept."""
    subprocess.run(["cp", "-a", "--", str(source), str(destination)], check=True, timeout=60)


def rsync_total_bytes_sent(target: TargetHost, source: Path, destination: Path) -> int:
    """rsync's own `Total bytes sent` for bringing `destination` (on the target) in line with
    `source`: plain rsync with the options that shape what is sent, over the same SSH."""
    session = TargetSession(target.ip, target.port, target.client_key, target.workdir / "kh")
    argv = ["rsync", "-aHAXS", "--numeric-ids", "--delete", "--stats", "--no-h"]
    argv += [
        "-e",
        session.remote_shell(),
        f"{source}/",
        session.rsync_destination(f"{destination}/"),
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"LC_ALL": "C", "PATH": os.environ["PATH"]},
    )
    match = re.search(r"^Total bytes sent: ([\d,]+)", done.stdout, re.MULTILINE)
    assert match is not None, done.stdout
    return int(match[1].replace(",", ""))


class TestSizes:
    @pytest.mark.timeout(180)
    async def test_source_size_totalsize_and_target_agree(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """One size everywhere: the source's used bytes (`du -sx`: sparse holes and second
        names of hard links take no space) are every report's `totalsize` and the result's
        `bytes_total`, and the target holds as much; the verification counts what it compared."""
        source_bytes = du_bytes(special_tree.root)
        rig.create_task()  # with the verification

        await rig.start()
        settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        reports = stage_reports(rig, MIGRATE)
        assert {r["totalsize"] for r in reports} == {source_bytes}
        assert reports[-1]["replicatesize"] == source_bytes
        assert settled.detail["bytes_total"] == source_bytes
        assert abs(du_bytes(target_host.root) - source_bytes) <= METADATA_SLACK_BYTES
        # The data sent is the files' data (the sparse file's holes too: rsync reads them as
        # zeros), never less than what the target holds in files.
        files, file_bytes = regular_files(special_tree.root)
        assert settled.detail["bytes_sent"] >= source_bytes - METADATA_SLACK_BYTES
        # The verify line counts what SMS was told per directory.
        told = sum(r["num_total_files"] for r in rig.consistency_results())
        assert 0 < settled.detail["verify_files_compared"] == told <= files
        assert 0 < settled.detail["verify_bytes_compared"] <= file_bytes
        assert "MiB compared" in settled.message and "consistent" in settled.message


class TestSyncFigures:
    @pytest.mark.timeout(180)
    async def test_five_small_files_report_what_rsync_sent(
        self, rig: MigrationRig, special_tree: SpecialTree, target_host: TargetHost
    ) -> None:
        """A sync pass that changes five small files reports what it compared (the whole source)
        and what it sent, apart; what it sent is within 10 % of what rsync itself sends for the
        same change, and the rate shown is that data over the pass's time, not the comparison's
        pace."""
        rig.create_task(is_need_consistency_check=False)
        await rig.start()
        assert (await rig.settled()).state is State.replicated
        reference = target_host.root.parent / "reference"
        # What the target held before the pass, for rsync's own run over the same change.
        await asyncio.to_thread(copy_tree, target_host.root, reference)
        changed_bytes = change_five_small_files(special_tree.root)

        await rig.start()
        settled = await rig.settled()
        rsync_sent = await asyncio.to_thread(
            rsync_total_bytes_sent, target_host, special_tree.root, reference
        )

        assert settled.result is CommandResult.success, settled
        detail = settled.detail
        assert detail["files_transferred"] == 5
        assert detail["bytes_total"] == du_bytes(special_tree.root)  # compared
        assert detail["bytes_sent"] > changed_bytes  # the data, and the file list with it
        assert abs(detail["bytes_sent"] - rsync_sent) <= 0.10 * rsync_sent
        reports = stage_reports(rig, SYNC)
        last = reports[-1]
        assert (last["progress"], last["totalsize"]) == (100, detail["bytes_total"])
        # The rate is at most the bytes sent over the pass's own duration (the reports span a
        # little more); comparing 30 MiB in a fraction of a second is not a rate.
        sent_mbit = detail["bytes_sent"] * 8 / 1e6
        assert 0 < last["migrate_speed"] <= sent_mbit / detail["duration_s"] + 0.001
        assert "sent" in last["process_trace"] and "MiB" in last["process_trace"]
