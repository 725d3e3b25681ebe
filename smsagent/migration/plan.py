"""What a copy pass copies and how: the source's file systems, the filter rules, the streams.

What is copied: every local file system under the source root, from the mount table (no pseudo,
network or duplicate mounts), minus spec §7.5's default exclusions, the task's own exclusions,
the contents of mounts that are not copied and the agent's own files.

How much there is (`totalsize`, spec §3.11): the used bytes of the file systems copied, as `df`
counts them (statvfs), like SMS itself; when the source root is a directory inside a file system
rather than its mount point, the bytes allocated below it (as `du -sx`). Excluded paths stay in the
total (spec §7.5 says so for the defaults; a walk to subtract the others would cost a second scan
of the whole server).

This is the one size the agent shows: `totalsize` of the full copy and of every sync pass (what a
sync compares), `bytes_total` in a pass's result, the MiB in the progress trace. It is space used,
not the files' apparent sizes: a sparse file counts its data blocks, a file with several names
counts once, and a copy holds about as much on the target. What rsync sends is a second figure
(`bytes_sent`, see `pipeline.py`), larger than the used space when files are sparse (rsync reads
holes as zeros) and far smaller on a sync pass that finds little changed.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from smsagent.api.enums import SubtaskName
from smsagent.inventory.mounts import MountEntry, MountSelection, select_filesystems
from smsagent.migration.excludes import filter_rules, migrate_excludes, sync_excludes
from smsagent.migration.rsync import (
    PassKind,
    RsyncJob,
)
from smsagent.migration.rsync_exit import guarded_rsync_path
from smsagent.migration.settings import MigrationSettings, SettingError
from smsagent.migration.streams import plan_streams, survey_tree

STAGES: Final = {
    PassKind.migrate: SubtaskName.MIGRATE_LINUX_FILE,
    PassKind.sync: SubtaskName.SYNC_LINUX_FILE,
}


@dataclass(frozen=True)
class SourcePlan:
    """What this server has to copy.

    Attributes:
        source_root: the directory that stands for the server's `/` (normally `/`).
        filesystem_paths: the file systems copied, relative to the source root (`""` first).
        skipped_paths: mounts below the source root that are not copied.
        agent_paths: the agent's own files, as rules anchored at the source root.
        used_bytes: how much there is to copy (see the module docstring).
    """

    source_root: str
    filesystem_paths: tuple[str, ...]
    skipped_paths: tuple[str, ...]
    agent_paths: tuple[str, ...]
    used_bytes: int


def _agent_rules(source_root: str, own_paths: Sequence[Path]) -> tuple[str, ...]:
    root = posixpath.normpath(source_root)
    rules = []
    for own in own_paths:
        path = posixpath.normpath(str(own))
        if path != root and path.startswith(root.rstrip("/") + "/"):
            rules.append("/" + posixpath.relpath(path, root))
    return tuple(rules)


def used_bytes(selection: MountSelection, source_root: str) -> int:
    """The used bytes of the selected file systems (see the module docstring)."""
    root = posixpath.normpath(source_root)
    # A walk stops at every mount below the root: those copied are counted on their own.
    below = [fs.relative_path for fs in selection.filesystems[1:]]
    below += [mount.relative_path for mount in selection.skipped]
    skipped = frozenset(posixpath.join(root, relative) for relative in below)
    total = 0
    for filesystem in selection.filesystems:
        path = posixpath.join(root, filesystem.relative_path) if filesystem.relative_path else root
        if posixpath.normpath(filesystem.mount_point) == path:
            usage = os.statvfs(path)
            total += (usage.f_blocks - usage.f_bfree) * usage.f_frsize
        else:
            # The walk counts what lies below `path`; `du` also counts the directory itself.
            total += os.lstat(path).st_blocks * 512 + survey_tree(path, skipped).size_bytes
    return total


def plan_source(
    source_root: Path, own_paths: Sequence[Path], mounts: Sequence[MountEntry]
) -> SourcePlan:
    """What to copy from `source_root`, leaving out `own_paths` (state dir, env file).

    Blocking (statvfs, possibly a walk): run it in a thread.
    """
    root = str(source_root)
    selection = select_filesystems(mounts, root)
    return SourcePlan(
        source_root=root,
        filesystem_paths=tuple(fs.relative_path for fs in selection.filesystems),
        skipped_paths=tuple(mount.relative_path for mount in selection.skipped),
        agent_paths=_agent_rules(root, own_paths),
        used_bytes=used_bytes(selection, root),
    )


def copy_rules(plan: SourcePlan, settings: MigrationSettings, kind: PassKind) -> tuple[str, ...]:
    """The filter rules of a pass of `kind` (and of a verification of its result)."""
    build = migrate_excludes if kind is PassKind.migrate else sync_excludes
    user = settings.migrate_exclude_dir if kind is PassKind.migrate else settings.sync_exclude_dir
    excludes = build(
        user,
        agent_paths=plan.agent_paths,
        mount_paths=plan.filesystem_paths,
        skipped_mount_paths=plan.skipped_paths,
    )
    return filter_rules(excludes)


@dataclass(frozen=True)
class PassSpec:
    """One pass, ready to run.

    Attributes:
        stage: the SMS subtask it reports as.
        kind: migrate (full copy) or sync (also deletes).
        jobs: one rsync job per stream (their `bwlimit_kib_s` is set when each run starts).
        shares: each stream's share of the work (by surveyed size), summing to 1.
        total_bytes: `totalsize`.
    """

    stage: SubtaskName
    kind: PassKind
    jobs: tuple[RsyncJob, ...]
    shares: tuple[float, ...]
    total_bytes: int


def _only_dirs(plan: SourcePlan, settings: MigrationSettings, kind: PassKind) -> tuple[str, ...]:
    if kind is PassKind.migrate or not settings.only_sync_dirs:
        return ()
    present = tuple(
        path
        for path in settings.only_sync_dirs
        if Path(plan.source_root, path).is_dir() and not Path(plan.source_root, path).is_symlink()
    )
    if not present:
        msg = f"ONLY_SYNC_DIR: none of {', '.join('/' + p for p in settings.only_sync_dirs)} exist"
        raise SettingError(msg)
    return present


def build_pass(
    plan: SourcePlan,
    settings: MigrationSettings,
    kind: PassKind,
    destination: str,
    extra_rules: Sequence[str] = (),
) -> PassSpec:
    """The streams of a pass of `kind` to `destination` on the target.

    `extra_rules` come first: what the target's configuration manages on a sync pass.

    Blocking (with several streams the source is surveyed): run it in a thread.

    Raises:
        SettingError: `ONLY_SYNC_DIR` names no directory that exists.
    """
    streams_wanted = settings.streams_migrate if kind is PassKind.migrate else settings.streams_sync
    streams = plan_streams(
        plan.source_root,
        plan.filesystem_paths,
        streams_wanted,
        only_dirs=_only_dirs(plan, settings, kind),
    )
    rules = copy_rules(plan, settings, kind)
    jobs = tuple(
        RsyncJob(
            source_root=plan.source_root,
            sources=stream.sources,
            destination=destination,
            kind=kind,
            filter_rules=(*extra_rules, *rules, *stream.filter_rules),
            remote_rsync_path=guarded_rsync_path(destination),
        )
        for stream in streams
    )
    sizes = [max(stream.size_bytes, 1) for stream in streams]
    shares = tuple(size / sum(sizes) for size in sizes)
    return PassSpec(STAGES[kind], kind, jobs, shares, plan.used_bytes)
