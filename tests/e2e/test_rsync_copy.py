"""The rsync runner over real SSH to a real target: full copy, stop, resume, retry, sync."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import pytest

from smsagent.migration.excludes import filter_rules, sync_excludes
from smsagent.migration.rsync import (
    ExitClass,
    PassKind,
    RetryPolicy,
    RsyncJob,
    RsyncResult,
    build_argv,
    run_rsync,
    run_rsync_with_retries,
)
from smsagent.migration.rsync_output import Progress
from smsagent.target.session import TargetSession
from tests.support.target import TargetHost
from tests.support.tree import MiB, SpecialTree, build_special_tree
from tests.support.treecompare import compare_trees, rsync_differences

pytestmark = pytest.mark.root

# Slow enough that a stop or a dropped connection lands in the middle of the large file.
THROTTLE_KIB_S = 2048
FAST_RETRIES = RetryPolicy(retries=3, base_delay_s=0.2, max_delay_s=0.5)


def _job(tree: SpecialTree, host: TargetHost, **changes: object) -> RsyncJob:
    job = RsyncJob(str(tree.root), ("",), str(host.root))
    return dataclasses.replace(job, **changes)


def _assert_identical(tree: SpecialTree, host: TargetHost) -> None:
    assert compare_trees(tree.root, host.root) == []
    assert rsync_differences(tree.root, host.root) == []


def _progress_beyond(bytes_done: int) -> tuple[asyncio.Event, Callable[[Progress], None]]:
    """An event set once progress passes `bytes_done`, and the progress callback that sets it."""
    reached = asyncio.Event()

    def on_progress(progress: Progress) -> None:
        if progress.bytes_done >= bytes_done:
            reached.set()

    return reached, on_progress


class TestFullCopy:
    @pytest.mark.timeout(120)
    async def test_special_tree_arrives_identical(
        self, special_tree: SpecialTree, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """Everything (links, devices, ACLs, xattrs, owners, odd names, holes) arrives as is."""
        progress: list[Progress] = []
        result = await run_rsync(
            build_argv(_job(special_tree, target_host), target_session), on_progress=progress.append
        )
        assert result.outcome.exit_class is ExitClass.ok, result.stderr_tail
        _assert_identical(special_tree, target_host)
        assert progress, "no progress was reported"
        assert progress[-1].files_to_check == 0
        assert result.stats is not None
        assert result.stats.literal_bytes == result.stats.transferred_file_bytes
        assert result.stats.literal_bytes is not None and result.stats.literal_bytes > 20 * MiB
        # The pinned host key is the target's.
        assert target_host.host_public_key.split()[1] in target_session.known_hosts_path.read_text()

    @pytest.mark.slow
    @pytest.mark.timeout(300)
    async def test_large_file_200_mb(
        self, tmp_path: Path, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """A tree with a 200 MB file arrives identical."""
        tree = build_special_tree(tmp_path / "big-source", large_file_bytes=200 * MiB)
        result = await run_rsync(build_argv(_job(tree, target_host), target_session))
        assert result.outcome.exit_class is ExitClass.ok, result.stderr_tail
        _assert_identical(tree, target_host)


class TestStop:
    @pytest.mark.timeout(120)
    async def test_stop_within_a_second_then_resume(
        self, special_tree: SpecialTree, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """A stop reaches rsync within 1 s; the partial file is kept and the rerun builds on it."""
        cancel = asyncio.Event()
        reached, on_progress = _progress_beyond(6 * MiB)
        job = _job(special_tree, target_host, bwlimit_kib_s=THROTTLE_KIB_S)
        copy = asyncio.ensure_future(
            run_rsync(
                build_argv(job, target_session),
                on_progress=on_progress,
                cancel=cancel,
                grace_s=5,
            )
        )
        await asyncio.wait_for(reached.wait(), timeout=60)
        cancel_at = time.monotonic()
        cancel.set()
        result = await copy

        assert result.cancelled
        assert result.returncode == 20, result.stderr_tail  # rsync itself got the SIGTERM
        assert result.terminate_sent_at is not None
        assert result.terminate_sent_at - cancel_at < 1.0
        assert result.ended_at - cancel_at < 1.0, result.ended_at - cancel_at
        target_host.wait_quiet()
        partial = target_host.root / "data" / ".rsync-partial" / "big.bin"
        partial_bytes = partial.stat().st_size
        assert 0 < partial_bytes < 20 * MiB

        rerun = await run_rsync(
            build_argv(dataclasses.replace(job, bwlimit_kib_s=0), target_session)
        )
        assert rerun.outcome.exit_class is ExitClass.ok, rerun.stderr_tail
        assert rerun.stats is not None and rerun.stats.matched_bytes is not None
        # The kept part served as the basis: it was matched, not sent again.
        assert rerun.stats.matched_bytes >= partial_bytes - MiB
        assert not partial.parent.exists()
        _assert_identical(special_tree, target_host)

    @pytest.mark.timeout(60)
    async def test_cancelled_coroutine_reaps_rsync(
        self, special_tree: SpecialTree, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """Cancelling the awaiting task stops rsync and its ssh too, and re-raises."""
        reached, on_progress = _progress_beyond(2 * MiB)
        job = _job(special_tree, target_host, bwlimit_kib_s=THROTTLE_KIB_S)
        copy = asyncio.ensure_future(
            run_rsync(build_argv(job, target_session), on_progress=on_progress)
        )
        await asyncio.wait_for(reached.wait(), timeout=60)
        copy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await copy
        target_host.wait_no_sessions()
        assert not _processes_reaching(target_host)


class TestRetry:
    @pytest.mark.timeout(120)
    async def test_dropped_connection_is_retried_to_the_end(
        self, special_tree: SpecialTree, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """When the target drops every connection mid-copy the pass runs again and completes."""
        reached, on_progress = _progress_beyond(4 * MiB)
        retries: list[RsyncResult] = []
        job = _job(special_tree, target_host, bwlimit_kib_s=4 * THROTTLE_KIB_S)
        copy = asyncio.ensure_future(
            run_rsync_with_retries(
                build_argv(job, target_session),
                policy=FAST_RETRIES,
                on_progress=on_progress,
                on_retry=lambda attempt, result, delay_s: retries.append(result),
            )
        )
        await asyncio.wait_for(reached.wait(), timeout=60)
        assert target_host.kill_sessions() > 0
        result = await copy

        assert result.outcome.exit_class is ExitClass.ok, result.stderr_tail
        assert len(retries) == 1
        assert retries[0].outcome.exit_class is ExitClass.retryable
        _assert_identical(special_tree, target_host)


class TestSync:
    @pytest.mark.timeout(120)
    async def test_sync_sends_only_changes(
        self, special_tree: SpecialTree, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """After add/change/rename/chmod/chown/delete a sync makes the target identical again,
        sends only the changed data, and leaves the target's own rewritten files alone."""
        first = await run_rsync(build_argv(_job(special_tree, target_host), target_session))
        assert first.outcome.exit_class is ExitClass.ok, first.stderr_tail
        (target_host.root / "etc" / "fstab").write_text("the target's own fstab\n")
        _change_source(special_tree)

        rules = filter_rules(sync_excludes(None))
        sync = _job(special_tree, target_host, kind=PassKind.sync, filter_rules=rules)
        result = await run_rsync(build_argv(sync, target_session), kind=PassKind.sync)

        assert result.outcome.exit_class is ExitClass.ok, result.stderr_tail
        assert compare_trees(special_tree.root, target_host.root, ignore={b"etc/fstab"}) == []
        assert (target_host.root / "etc" / "fstab").read_text() == "the target's own fstab\n"
        stats = result.stats
        assert stats is not None
        # New file, the rewritten large file, the renamed file (rsync sees a new name).
        assert stats.files_transferred == 3
        assert stats.files_deleted == 5  # the deleted file, the renamed one's old name, 3 dirs
        assert stats.literal_bytes is not None and stats.literal_bytes < 2 * MiB
        assert stats.matched_bytes is not None and stats.matched_bytes > 18 * MiB

        again = await run_rsync(build_argv(sync, target_session), kind=PassKind.sync)
        assert again.stats is not None
        assert (again.stats.files_transferred, again.stats.literal_bytes) == (0, 0)
        assert again.stats.files_deleted == 0


def _change_source(tree: SpecialTree) -> None:
    """Add, change in place, rename, chmod, chown, re-link, re-target and delete."""
    root = tree.root
    (root / "etc" / "added.conf").write_bytes(os.urandom(5000))
    with open(root / "data" / "big.bin", "r+b") as handle:
        handle.seek(7 * MiB)
        handle.write(os.urandom(MiB))
    (root / "srv" / "many" / "small-010").rename(root / "srv" / "many" / "renamed-010")
    (root / "modes" / "group_write").chmod(0o600)
    os.chown(root / "owners" / "daemon", 4242, 4343)
    os.link(root / "etc" / "config.txt", root / "etc" / "config.link")
    os.setxattr(root / "attrs" / "file", "user.comment", b"changed")
    (root / "links" / "relative").unlink()
    (root / "links" / "relative").symlink_to("../etc/motd")
    (root / "srv" / "many" / "small-020").unlink()
    for gone in ("empty/nested/deeper", "empty/nested", "empty"):
        (root / gone).rmdir()


def _processes_reaching(host: TargetHost) -> list[int]:
    """Local processes whose command line names the target's address (a leaked rsync or ssh).

    rsync's server side on the target shares this pid namespace but is never given the address.
    """
    needle = host.ip.encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline.split(b"\0") or any(
                arg.startswith(needle + b":") for arg in cmdline.split(b"\0")
            ):
                found.append(int(entry))
    return found
