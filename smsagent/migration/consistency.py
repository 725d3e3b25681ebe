"""The consistency verification (spec §7.11): is the copy on the target what the source holds?

For each directory to verify, rsync runs as a dry run over the same SSH with the same exclusions
as the copy, itemizing every file (`-n -ii --delete`): quick mode lets rsync compare size and
modification time, hash mode adds `--checksum` (every file is read on both sides). Each itemized
line is one finding; directories are not counted. The counts per directory are what
`POST /v3/tasks/{id}/consistency-result` takes (spec §3.18). The verification's own summary counts
the files compared and their bytes (rsync's `Total file size` of the dry runs: the files' data as
their sizes say, which is what quick mode compares and hash mode reads).
"""

from __future__ import annotations

import asyncio
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final, Optional

import structlog

from smsagent.api.models import ConsistencyResult
from smsagent.migration.rsync import (
    PARTIAL_DIR,
    PassKind,
    RetryPolicy,
    RsyncJob,
    RsyncResult,
    build_argv,
    run_rsync_with_retries,
)
from smsagent.migration.rsync_exit import guarded_rsync_path
from smsagent.migration.settings import ConsistencyMode
from smsagent.migration.streams import work_units
from smsagent.target.session import TargetSession
from smsagent.units import mib

log = structlog.get_logger(__name__)

NEW_ITEM: Final = "+" * 9
EXAMPLES_KEPT: Final = 10

# `YXcstpoguax name` (rsync's --itemize-changes) and `*deleting   name`.
_ITEM_RE: Final = re.compile(r"^(?P<update>[<>ch.])(?P<kind>[fdLDS])(?P<attrs>.{9}) (?P<name>.*)$")
_DELETING_RE: Final = re.compile(r"^\*deleting +(?P<name>.*)$")


class Finding(str, Enum):
    """What the verification found for one file."""

    same = "same"
    different = "different"
    missing = "missing"  # on the source, not on the target
    extra = "extra"  # on the target, no longer on the source


def classify(record: str) -> Optional[tuple[Finding, str]]:
    """The finding an itemized rsync line reports, and the file's name as rsync printed it
    (unprintable bytes escaped); None for directories and for other lines.

    A regular file rsync would send differs (its size or time, or with `--checksum` its content,
    differ); a symlink, device or special file differs when its value (`c`) does; a change of
    owner or mode alone is not counted, as quick mode compares only size and time.
    """
    deleting = _DELETING_RE.match(record)
    if deleting is not None:
        name = deleting["name"]
        return None if name.endswith("/") else (Finding.extra, name)
    item = _ITEM_RE.match(record)
    if item is None or item["kind"] == "d":
        return None
    if item["attrs"] == NEW_ITEM:
        return Finding.missing, item["name"]
    if item["update"] in "<>" or item["attrs"][0] == "c":
        return Finding.different, item["name"]
    return Finding.same, item["name"]


@dataclass
class Tally:
    """The findings of one directory, with a few examples of each problem."""

    counts: dict[Finding, int] = field(default_factory=lambda: dict.fromkeys(Finding, 0))
    examples: dict[Finding, list[str]] = field(default_factory=dict)

    def feed(self, record: str) -> None:
        """Count one record of rsync's output."""
        classified = classify(record)
        if classified is None:
            return
        finding, name = classified
        self.counts[finding] += 1
        if finding is not Finding.same:
            kept = self.examples.setdefault(finding, [])
            if len(kept) < EXAMPLES_KEPT:
                kept.append(name)

    def reset(self) -> None:
        """Forget everything (rsync is run again from the start)."""
        self.counts = dict.fromkeys(Finding, 0)
        self.examples = {}

    @property
    def consistent(self) -> bool:
        """Whether nothing differs."""
        return not any(self.counts[f] for f in (Finding.different, Finding.missing, Finding.extra))

    def result(self, directory: str) -> ConsistencyResult:
        """The counts as SMS takes them; `directory` is the absolute path verified."""
        return ConsistencyResult(
            dir_check=directory,
            num_total_files=sum(self.counts[f] for f in Finding if f is not Finding.extra),
            num_different_files=self.counts[Finding.different],
            num_target_miss_files=self.counts[Finding.missing],
            num_target_more_files=self.counts[Finding.extra],
        )


def outermost(directories: Sequence[str]) -> tuple[str, ...]:
    """The directories not inside another one of them (a parent covers its children)."""
    if "/" in directories:
        return ("/",)
    return tuple(
        d for d in directories if not any(d != o and d.startswith(o + "/") for o in directories)
    )


def dry_run_options(mode: ConsistencyMode) -> tuple[str, ...]:
    """The options that turn a sync pass into a verification."""
    options = ("--dry-run", "--itemize-changes", "--itemize-changes", "--out-format=%i %n")
    return (*options, "--checksum") if mode is ConsistencyMode.hash else options


@dataclass(frozen=True)
class VerifyPlan:
    """What one verification compares.

    Attributes:
        source_root: the local directory that stands for the server's `/`.
        destination: the target root on the target.
        filesystem_paths: the copied file systems, relative to the source root.
        directories: absolute directories to verify (each gets a result).
        exclude_rules: the copy's filter rules plus the directories not to verify.
        mode: quick or hash.
    """

    source_root: str
    destination: str
    filesystem_paths: tuple[str, ...]
    directories: tuple[str, ...]
    exclude_rules: tuple[str, ...]
    mode: ConsistencyMode


def plan_verification(
    source_root: str,
    destination: str,
    filesystem_paths: Sequence[str],
    copy_rules: Sequence[str],
    *,
    mode: ConsistencyMode,
    directories: Sequence[str] = (),
    excluded: Sequence[str] = (),
) -> VerifyPlan:
    """The verification of a copy made with `copy_rules`, limited to `directories` (empty: all)
    and leaving out `excluded` (absolute directories)."""
    chosen = outermost([posixpath.normpath(d) for d in directories] or ["/"])
    # The copy's temporary files are the copy's own business, never a difference.
    rules = (*copy_rules, *(f"- {path}" for path in excluded), f"-p {PARTIAL_DIR}/")
    return VerifyPlan(
        source_root,
        destination,
        tuple(filesystem_paths),
        chosen,
        tuple(dict.fromkeys(rules)),
        mode,
    )


def _job(plan: VerifyPlan, directory: str) -> Optional[RsyncJob]:
    """The dry run of one directory; None when the source has no such directory."""
    relative = directory.strip("/")
    local = Path(plan.source_root, relative)
    if local.is_symlink() or not local.is_dir():
        return None
    units = work_units(plan.filesystem_paths, [relative] if relative else [])
    return RsyncJob(
        source_root=plan.source_root,
        sources=tuple(unit.path for unit in units),
        destination=plan.destination,
        kind=PassKind.sync,
        filter_rules=plan.exclude_rules,
        extra_options=dry_run_options(plan.mode),
        remote_rsync_path=guarded_rsync_path(plan.destination),
    )


@dataclass(frozen=True)
class VerifyReport:
    """How a verification ended: the results of the directories verified, or stopped early.

    Attributes:
        results: one per directory verified.
        stopped: stopped early (SKIP, STOP).
        bytes_compared: the size of the files compared (rsync's `Total file size`).
    """

    results: tuple[ConsistencyResult, ...]
    stopped: bool = False
    bytes_compared: int = 0

    @property
    def files_compared(self) -> int:
        """Files (not directories) found on the source and compared with the target."""
        return sum(r.num_total_files or 0 for r in self.results)

    @property
    def files_differing(self) -> int:
        """Files that differ, are missing on the target or are extra there."""
        return sum(
            (r.num_different_files or 0)
            + (r.num_target_miss_files or 0)
            + (r.num_target_more_files or 0)
            for r in self.results
        )

    def describe(self) -> str:
        """One line for people: what was compared and how it came out."""
        verdict = "consistent" if self.consistent else f"{self.files_differing} files differ"
        return f"{self.files_compared} files, {mib(self.bytes_compared)} compared, {verdict}"

    def detail(self) -> dict[str, int]:
        """The figures for a command result's detail."""
        return {
            "verify_files_compared": self.files_compared,
            "verify_bytes_compared": self.bytes_compared,
            "verify_files_differing": self.files_differing,
        }

    @property
    def consistent(self) -> bool:
        """Whether every directory verified matched."""
        return all(
            r.num_different_files == r.num_target_miss_files == r.num_target_more_files == 0
            for r in self.results
        )


async def _verify_one(
    job: RsyncJob,
    target: Optional[TargetSession],
    *,
    policy: RetryPolicy,
    stop: asyncio.Event,
    grace_s: float,
    cgroup: Optional[Path],
) -> tuple[Tally, RsyncResult]:
    tally = Tally()
    result = await run_rsync_with_retries(
        build_argv(job, target),
        policy=policy,
        cancel=stop,
        grace_s=grace_s,
        kind=PassKind.sync,
        on_record=tally.feed,
        on_retry=lambda *_: tally.reset(),
        cgroup=cgroup,
    )
    return tally, result


async def verify(
    plan: VerifyPlan,
    target: Optional[TargetSession],
    *,
    policy: RetryPolicy,
    stop: asyncio.Event,
    grace_s: float,
    cgroup: Optional[Path] = None,
) -> VerifyReport:
    """Compare each directory of `plan` on the source and on the target (through `target`;
    None compares with a local directory).

    Setting `stop` ends the verification early (`stopped`, with the directories done so far).
    `cgroup` is the `cgroup.procs` its rsync runs in (the task's resource limits).

    Raises:
        RsyncError: the comparison could not be made (SMS code inside).
    """
    results: list[ConsistencyResult] = []
    compared = 0
    for directory in plan.directories:
        job = _job(plan, directory)
        if job is None:
            log.warning("consistency_directory_missing", directory=directory)
            results.append(ConsistencyResult(dir_check=directory, **_ZERO_COUNTS))
            continue
        tally, result = await _verify_one(
            job, target, policy=policy, stop=stop, grace_s=grace_s, cgroup=cgroup
        )
        if result.cancelled:
            return VerifyReport(tuple(results), stopped=True, bytes_compared=compared)
        results.append(tally.result(directory))
        directory_bytes = (result.stats.total_file_bytes or 0) if result.stats else 0
        compared += directory_bytes
        log.info(
            "consistency_checked",
            directory=directory,
            consistent=tally.consistent,
            files_compared=results[-1].num_total_files,
            bytes_compared=directory_bytes,
            **{f.value: n for f, n in tally.counts.items()},
            examples={f.value: names for f, names in tally.examples.items()},
        )
    return VerifyReport(tuple(results), bytes_compared=compared)


_ZERO_COUNTS: Final = {
    "num_total_files": 0,
    "num_different_files": 0,
    "num_target_miss_files": 0,
    "num_target_more_files": 0,
}
