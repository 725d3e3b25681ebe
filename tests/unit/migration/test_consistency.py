"""The consistency verification: rsync's itemized lines as findings, the counts per directory,
the plan, and real dry runs of a local rsync against a copy with known differences."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from smsagent.migration.consistency import (
    Finding,
    Tally,
    VerifyPlan,
    classify,
    dry_run_options,
    outermost,
    plan_verification,
    verify,
)
from smsagent.migration.rsync import PARTIAL_DIR, RetryPolicy
from smsagent.migration.settings import ConsistencyMode


class TestClassify:
    @pytest.mark.parametrize(
        ("record", "expected"),
        [
            (".f          same", (Finding.same, "same")),
            (">f+++++++++ new file", (Finding.missing, "new file")),
            (">f.st...... grown", (Finding.different, "grown")),
            (">f..t...... touched", (Finding.different, "touched")),
            (">fc........ content", (Finding.different, "content")),
            (".f...p..... chmod only", (Finding.same, "chmod only")),
            (".f....og... chown only", (Finding.same, "chown only")),
            ("cL+++++++++ link", (Finding.missing, "link")),
            ("cLc.t...... relinked", (Finding.different, "relinked")),
            (".L          unchanged link", (Finding.same, "unchanged link")),
            ("cD+++++++++ dev/null", (Finding.missing, "dev/null")),
            ("hf+++++++++ second name", (Finding.missing, "second name")),
            ("*deleting   gone", (Finding.extra, "gone")),
            ("*deleting   name with  two spaces", (Finding.extra, "name with  two spaces")),
            ("*deleting   gone dir/", None),
            (".d..t...... dir/", None),
            ("cd+++++++++ new dir/", None),
            ("Number of files: 5 (reg: 2, dir: 2, link: 1)", None),
            ("sent 159 bytes  received 31 bytes  380.00 bytes/sec", None),
            ("", None),
        ],
    )
    def test_findings(self, record: str, expected: Optional[tuple[Finding, str]]) -> None:
        """Files only: new is missing, sent is different, a metadata change is the same."""
        assert classify(record) == expected


class TestTally:
    def test_counts_and_result(self) -> None:
        """Totals count what the source has; extras count separately."""
        tally = Tally()
        for record in (
            ".f          a",
            ">f.st...... b",
            ">f+++++++++ c",
            "*deleting   d",
            ".d  x/",
        ):
            tally.feed(record)
        result = tally.result("/srv")
        assert result.model_dump() == {
            "dir_check": "/srv",
            "num_total_files": 3,
            "num_different_files": 1,
            "num_target_miss_files": 1,
            "num_target_more_files": 1,
        }
        assert not tally.consistent
        assert tally.examples == {
            Finding.different: ["b"],
            Finding.missing: ["c"],
            Finding.extra: ["d"],
        }

    def test_reset_forgets(self) -> None:
        """A rerun of rsync starts the count afresh."""
        tally = Tally()
        tally.feed(">f+++++++++ c")
        tally.reset()
        tally.feed(".f          c")
        assert tally.consistent and tally.result("/").num_total_files == 1


class TestPlan:
    def test_outermost(self) -> None:
        """A parent covers its children; `/` covers everything."""
        assert outermost(["/srv", "/srv/app", "/opt", "/srvx"]) == ("/srv", "/opt", "/srvx")
        assert outermost(["/srv", "/"]) == ("/",)

    def test_options_by_mode(self) -> None:
        """Both modes itemize every file in a dry run; hash mode adds checksums."""
        quick = dry_run_options(ConsistencyMode.quick)
        assert "--dry-run" in quick and quick.count("--itemize-changes") == 2
        assert "--checksum" not in quick
        assert dry_run_options(ConsistencyMode.hash) == (*quick, "--checksum")

    def test_rules_and_directories(self) -> None:
        """The copy's rules, the directories left out, the copy's partial files; the whole
        tree when no directory is named."""
        plan = plan_verification(
            "/", "/mnt/smsroot", [""], ("- /proc/*",), mode=ConsistencyMode.quick, excluded=["/etc"]
        )
        assert plan.directories == ("/",)
        assert plan.exclude_rules == ("- /proc/*", "- /etc", f"-p {PARTIAL_DIR}/")


def _tree(root: Path) -> None:
    for directory in ("srv/app", "srv/other", "opt", "etc"):
        (root / directory).mkdir(parents=True)
    for index, name in enumerate(("srv/app/a", "srv/app/b", "srv/other/c", "opt/d", "etc/e")):
        (root / name).write_bytes(os.urandom(1000 + index))


def _copy(source: Path, target: Path) -> None:
    subprocess.run(
        ["rsync", "-aHAXS", "--numeric-ids", f"{source}/", f"{target}/"], check=True, timeout=60
    )


def _same_size_and_time(path: Path) -> None:
    info = path.stat()
    path.write_bytes(os.urandom(info.st_size))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


@pytest.fixture
def copied(tmp_path: Path) -> tuple[Path, Path]:
    """A source and its copy, then: one file tampered keeping size and time, one changed, one
    missing on the copy, one only on the copy, and a leftover partial file."""
    source, target = tmp_path / "source", tmp_path / "target"
    _tree(source)
    target.mkdir()
    _copy(source, target)
    _same_size_and_time(target / "srv" / "app" / "a")
    (target / "srv" / "app" / "b").write_bytes(b"changed")
    (target / "opt" / "d").unlink()
    (target / "srv" / "other" / "extra").write_text("only here\n")
    (target / "srv" / PARTIAL_DIR).mkdir()
    (target / "srv" / PARTIAL_DIR / "x").write_text("partial\n")
    return source, target


async def _verify(plan: VerifyPlan, stop: Optional[asyncio.Event] = None) -> dict[str, object]:
    report = await verify(
        plan, None, policy=RetryPolicy(retries=0), stop=stop or asyncio.Event(), grace_s=5
    )
    return {result.dir_check: result.model_dump() for result in report.results}


def _counts(total: int, different: int, missing: int, more: int) -> dict[str, int]:
    return {
        "num_total_files": total,
        "num_different_files": different,
        "num_target_miss_files": missing,
        "num_target_more_files": more,
    }


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
class TestVerifyWithRsync:
    @pytest.mark.timeout(60)
    @pytest.mark.parametrize(("mode", "different"), [("quick", 1), ("hash", 2)])
    async def test_counts_per_directory(
        self, copied: tuple[Path, Path], mode: str, different: int
    ) -> None:
        """Quick mode misses the tampered file that hash mode finds; both see the changed,
        missing and extra files; excluded directories and partial files are not counted."""
        source, target = copied
        plan = plan_verification(
            str(source),
            str(target),
            [""],
            (),
            mode=ConsistencyMode(mode),
            directories=["/srv", "/opt", "/srv/app"],
            excluded=["/etc"],
        )
        results = await _verify(plan)
        assert results == {
            "/srv": {"dir_check": "/srv", **_counts(3, different, 0, 1)},
            "/opt": {"dir_check": "/opt", **_counts(1, 0, 1, 0)},
        }

    @pytest.mark.timeout(60)
    async def test_directory_missing_on_the_source(self, copied: tuple[Path, Path]) -> None:
        """A directory to verify that the source does not have gets zero counts."""
        source, target = copied
        plan = plan_verification(
            str(source), str(target), [""], (), mode=ConsistencyMode.quick, directories=["/nope"]
        )
        assert await _verify(plan) == {"/nope": {"dir_check": "/nope", **_counts(0, 0, 0, 0)}}

    @pytest.mark.timeout(60)
    async def test_stop_ends_it_early(self, copied: tuple[Path, Path]) -> None:
        """A stop set before (or while) a directory is compared ends the verification."""
        source, target = copied
        plan = plan_verification(str(source), str(target), [""], (), mode=ConsistencyMode.hash)
        stop = asyncio.Event()
        stop.set()
        report = await verify(plan, None, policy=RetryPolicy(retries=0), stop=stop, grace_s=5)
        assert report.stopped and report.results == ()
