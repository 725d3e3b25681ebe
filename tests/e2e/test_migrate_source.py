"""What a file-level migration copies: the local file systems under the source root from the mount
table, minus the exclusions, never the agent's own files; in parallel streams when asked."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smsagent.api.enums import CommandResult
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import assert_identical, migration_rig
from tests.support.target import TargetHost
from tests.support.tree import SpecialTree
from tests.support.treecompare import compare_trees

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def mounted_source(tmp_path: Path) -> Iterator[Path]:
    """A source root holding an ext4 file system on a loop device (copied), a tmpfs (not copied)
    and a bind mount of its own /etc (a duplicate, not copied)."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is missing (e2fsprogs)")
    root = tmp_path / "source"
    for name in ("etc", "data", "scratch", "etc-again"):
        (root / name).mkdir(parents=True)
    (root / "etc" / "hostname").write_text("source\n")
    image = tmp_path / "smsmigtest-data.img"
    with open(image, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    _sh("mkfs.ext4", "-q", "-F", "-L", "smsmigtest", str(image))
    mounted: list[Path] = []
    try:
        for argv, point in (
            (["mount", "-o", "loop", str(image)], root / "data"),
            (["mount", "-t", "tmpfs", "-o", "size=4m", "smsmigtest-tmpfs"], root / "scratch"),
            (["mount", "--bind", str(root / "etc")], root / "etc-again"),
        ):
            _sh(*argv, str(point))
            mounted.append(point)
        (root / "data" / "db").mkdir()
        (root / "data" / "db" / "table").write_bytes(os.urandom(300_000))
        (root / "scratch" / "temp").write_text("not copied\n")
        yield root
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def du_bytes_without(root: Path, *names: str) -> int:
    """`du` of `root` on its own file system, without the named entries (the mounts)."""
    argv = ["du", "-sx", "--block-size=1", *(f"--exclude={name}" for name in names), str(root)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def df_used_bytes(path: Path) -> int:
    done = subprocess.run(
        ["df", "--output=used", "--block-size=1", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1])


class TestWhatIsCopied:
    async def test_local_file_systems_only(
        self,
        tmp_path: Path,
        emulator: EmulatorProcess,
        target_host: TargetHost,
        mounted_source: Path,
    ) -> None:
        """The ext4 below the source root is copied (not its lost+found); the tmpfs and the bind
        mount arrive as empty directories; the total is what `du` and `df` count."""
        root = mounted_source
        async with migration_rig(tmp_path / "agent", emulator, target_host, root) as rig:
            rig.create_task()
            await rig.start()
            settled = await rig.settled()
            reports = rig.progress_reports()

        assert settled.result is CommandResult.success, settled
        assert settled.detail["consistent"] is True
        target = target_host.root
        ignore = {b"scratch", b"etc-again", b"data/lost+found"}
        assert compare_trees(root, target, ignore=ignore) == []
        for name in ("scratch", "etc-again", "data/lost+found"):
            assert (target / name).is_dir() and not any((target / name).iterdir()), name
        # The source root's own part of its file system by walking it; the ext4 by statvfs.
        mounts = ("data", "scratch", "etc-again")
        expected_total = du_bytes_without(root, *mounts) + df_used_bytes(root / "data")
        assert {report["totalsize"] for report in reports} == {expected_total}

    async def test_exclusions_streams_and_the_agents_own_files(
        self,
        tmp_path: Path,
        emulator: EmulatorProcess,
        target_host: TargetHost,
        special_tree: SpecialTree,
    ) -> None:
        """Two streams copy everything but `MIGRATE_EXCLUDE_DIR` and the agent's state dir,
        which lies inside the source root here."""
        root = special_tree.root
        state_dir = root / "var" / "lib" / "smsagent"
        async with migration_rig(
            tmp_path / "agent", emulator, target_host, root, state_dir=state_dir
        ) as rig:
            rig.create_task()
            await rig.configure(NUM_PROCESS_MIGRATE="2", MIGRATE_EXCLUDE_DIR="/srv/many, /links/*")
            await rig.start()
            settled = await rig.settled()

        assert settled.result is CommandResult.success, settled
        assert settled.detail["streams"] == 2
        target = target_host.root
        assert (state_dir / "keys").is_dir()
        assert not (target / "var" / "lib" / "smsagent").exists()
        assert not (target / "srv" / "many").exists()
        assert (target / "links").is_dir() and not any((target / "links").iterdir())
        ignore = {b"var", b"srv/many", b"links", b"other/hard c"}
        assert compare_trees(root, target, ignore=ignore) == []


class TestTargetRoot:
    async def test_the_copy_lands_in_the_target_root(
        self,
        tmp_path: Path,
        emulator: EmulatorProcess,
        target_host: TargetHost,
        special_tree: SpecialTree,
    ) -> None:
        """The destination is the target root, a directory below the target's `/`."""
        staged = target_host.root / "staged"
        staged.mkdir()
        async with migration_rig(
            tmp_path / "agent", emulator, target_host, special_tree.root, target_root=staged
        ) as rig:
            rig.create_task(is_need_consistency_check=False)
            await rig.start()
            settled = await rig.settled()
        assert settled.result is CommandResult.success, settled
        assert_identical(special_tree.root, staged)
