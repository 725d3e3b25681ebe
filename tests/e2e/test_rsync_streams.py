"""Whole-source copies: mounts chosen from mountinfo, work split into parallel streams."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from smsagent.inventory.mounts import read_mountinfo, select_filesystems
from smsagent.migration.excludes import filter_rules, migrate_excludes, sync_excludes
from smsagent.migration.rsync import (
    ExitClass,
    PassKind,
    RsyncJob,
    RsyncResult,
    build_argv,
    run_rsync,
)
from smsagent.migration.streams import Stream, plan_streams
from smsagent.target.session import TargetSession
from tests.support.target import TargetHost
from tests.support.tree import SpecialTree
from tests.support.treecompare import compare_trees, rsync_differences

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


async def _run_streams(
    source_root: Path,
    host: TargetHost,
    session: TargetSession,
    streams: Sequence[Stream],
    kind: PassKind,
    excludes: Sequence[str],
) -> list[RsyncResult]:
    """Run every stream at once, as the pipeline does."""
    jobs = [
        RsyncJob(
            str(source_root),
            stream.sources,
            str(host.root),
            kind=kind,
            filter_rules=filter_rules(excludes) + stream.filter_rules,
        )
        for stream in streams
    ]
    results = await asyncio.gather(*(run_rsync(build_argv(j, session), kind=kind) for j in jobs))
    for result in results:
        assert result.outcome.exit_class is ExitClass.ok, result.stderr_tail
    return list(results)


def _change_across_top_level_dirs(root: Path) -> None:
    """Changes in several top-level dirs, a new top-level dir and a removed one."""
    (root / "etc" / "config.txt").write_text("key = other value\n")
    (root / "srv" / "many" / "small-003").unlink()
    (root / "home" / "user one" / "notes.txt").rename(root / "home" / "user one" / "notes.old")
    (root / "newtop" / "sub").mkdir(parents=True)
    (root / "newtop" / "sub" / "file").write_bytes(os.urandom(10000))
    shutil.rmtree(root / "empty too")


class TestParallelStreams:
    async def test_three_streams_copy_then_sync(
        self, special_tree: SpecialTree, target_host: TargetHost, target_session: TargetSession
    ) -> None:
        """Three streams split by top-level directory together copy, then sync, the tree exactly."""
        root = special_tree.root
        streams = plan_streams(str(root), [""], 3)
        assert len(streams) == 3
        await _run_streams(root, target_host, target_session, streams, PassKind.migrate, ())
        assert compare_trees(root, target_host.root) == []

        _change_across_top_level_dirs(root)
        streams = plan_streams(str(root), [""], 3)  # planned afresh for every pass
        await _run_streams(root, target_host, target_session, streams, PassKind.sync, ())
        assert compare_trees(root, target_host.root) == []
        assert rsync_differences(root, target_host.root) == []


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def mounted_source(tmp_path: Path) -> Iterator[Path]:
    """A source root holding an ext4 file system on a loop device (copied), a tmpfs (skipped)
    and a bind mount of its own /etc (a duplicate, skipped)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is missing (e2fsprogs)")
    root = tmp_path / "mounted-source"
    for name in ("etc", "data", "scratch", "etc-again", "var/log"):
        (root / name).mkdir(parents=True)
    (root / "etc" / "hostname").write_text("source\n")
    (root / "var" / "log" / "syslog").write_bytes(os.urandom(50000))
    image = tmp_path / "data.img"
    with open(image, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    _sh("mkfs.ext4", "-q", "-F", "-L", "smstgt-data", str(image))
    mounted: list[Path] = []
    try:
        for argv, point in (
            (["mount", "-o", "loop", str(image)], root / "data"),
            (["mount", "-t", "tmpfs", "-o", "size=4m", "smstgt-tmpfs"], root / "scratch"),
            (["mount", "--bind", str(root / "etc")], root / "etc-again"),
        ):
            _sh(*argv, str(point))
            mounted.append(point)
        (root / "data" / "db").mkdir()
        (root / "data" / "db" / "table").write_bytes(os.urandom(200000))
        (root / "scratch" / "temp").write_text("not copied\n")
        yield root
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def _compare_without_skipped_mounts(root: Path, target: Path) -> list[str]:
    """Compare, expecting the skipped mount points as empty directories on the target."""
    differences = compare_trees(root, target, ignore={b"scratch", b"etc-again"})
    for name in ("scratch", "etc-again"):
        if not (target / name).is_dir() or any((target / name).iterdir()):
            differences.append(f"{name}: expected an empty mount-point directory on the target")
    return differences


class TestMounts:
    def test_selection(self, mounted_source: Path) -> None:
        """The loop-mounted ext4 is copied; the tmpfs and the bind mount are not."""
        selection = select_filesystems(read_mountinfo(), str(mounted_source))
        assert [fs.relative_path for fs in selection.filesystems] == ["", "data"]
        assert selection.filesystems[1].fs_type == "ext4"
        reasons = {Path(s.mount_point).name: s.reason for s in selection.skipped}
        assert reasons["scratch"] == "tmpfs is not a local disk file system"
        assert "bind or repeated mount" in reasons["etc-again"]

    @pytest.mark.parametrize("stream_count", [1, 2])
    async def test_copy_and_sync_across_mounts(
        self,
        mounted_source: Path,
        target_host: TargetHost,
        target_session: TargetSession,
        stream_count: int,
    ) -> None:
        """Every chosen file system arrives, skipped mounts stay empty, and a sync deletes in
        each file system without any stream touching another's files."""
        root = mounted_source
        selection = select_filesystems(read_mountinfo(), str(root))
        mounts = [fs.relative_path for fs in selection.filesystems]
        skipped = [mount.relative_path for mount in selection.skipped]
        streams = plan_streams(str(root), mounts, stream_count)
        excludes = migrate_excludes(None, mount_paths=mounts, skipped_mount_paths=skipped)
        await _run_streams(root, target_host, target_session, streams, PassKind.migrate, excludes)
        assert _compare_without_skipped_mounts(root, target_host.root) == []

        (root / "data" / "db" / "table").unlink()
        (root / "data" / "db" / "new").write_text("new\n")
        (root / "var" / "log" / "syslog").unlink()
        excludes = sync_excludes(None, mount_paths=mounts, skipped_mount_paths=skipped)
        await _run_streams(root, target_host, target_session, streams, PassKind.sync, excludes)
        assert _compare_without_skipped_mounts(root, target_host.root) == []
        assert not (target_host.root / "data" / "db" / "table").exists()
