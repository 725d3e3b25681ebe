"""The argv of one rsync pass (pure): what to copy where, with which options and rules."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Optional

from smsagent.target.session import TargetSession

PARTIAL_DIR: Final = ".rsync-partial"
DEFAULT_IO_TIMEOUT_S: Final = 600


class PassKind(str, Enum):
    """What a pass is for: the full copy, or a later incremental sync that also deletes."""

    migrate = "migrate"
    sync = "sync"


@dataclass(frozen=True)
class RsyncJob:
    """One rsync pass: which paths under the source root go to which remote directory, and how.

    Attributes:
        source_root: the local directory that stands for the server's `/` (normally `/`).
        sources: paths relative to `source_root`; `""` is the source root itself. With
            `--relative` each keeps its path under `destination`.
        destination: the directory on the target that receives the tree (the target root).
        kind: `sync` passes delete what no longer exists on the source.
        filter_rules: rsync filter rules, anchored at `source_root` (see `excludes.py`).
        bwlimit_kib_s: rsync's `--bwlimit` in KiB/s; 0 is unlimited.
        io_timeout_s: rsync's `--timeout`: give up when no data moves for this long.
        incremental_recursion: True streams the file list (less memory on huge trees); False
            (the default) makes rsync's file totals exact from the start and links hard links
            found in different directories without sending their data twice.
        one_file_system: do not descend into other mounts below a source.
        nanosecond_times: compare times to the nanosecond, not the second, so a directory touched
            twice within one second is still brought in line; turn off only when the target's
            file system keeps coarser times than the source's (each pass would resend).
        rsync_path: the local rsync.
        remote_rsync_path: rsync on the target, when it is not on the target's PATH.
        extra_options: more options, placed after the standard ones (e.g. a dry run that
            itemizes every file, for a verification).
    """

    source_root: str
    sources: tuple[str, ...]
    destination: str
    kind: PassKind = PassKind.migrate
    filter_rules: tuple[str, ...] = ()
    bwlimit_kib_s: int = 0
    io_timeout_s: int = DEFAULT_IO_TIMEOUT_S
    incremental_recursion: bool = False
    one_file_system: bool = True
    nanosecond_times: bool = True
    rsync_path: str = "rsync"
    remote_rsync_path: Optional[str] = None
    extra_options: tuple[str, ...] = ()


def bwlimit_kib_s(limit_mbit_s: float, streams: int = 1) -> int:
    """rsync's `--bwlimit` (KiB/s) for one of `streams` parallel passes sharing `limit_mbit_s`.

    0 Mbit/s means unlimited and gives 0; any positive limit gives at least 1 KiB/s.
    """
    if limit_mbit_s <= 0:
        return 0
    bytes_per_s = limit_mbit_s * 1_000_000 / 8 / max(1, streams)
    return max(1, round(bytes_per_s / 1024))


def _source_argument(source_root: str, relative: str) -> str:
    """`root/./rel`: with `--relative`, the part after `/./` is the path kept on the target."""
    if not source_root.startswith("/"):
        msg = f"source_root {source_root!r} must be an absolute path"
        raise ValueError(msg)
    parts = relative.split("/") if relative else []
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        msg = f"source {relative!r} must be a normalized path relative to the source root"
        raise ValueError(msg)
    base = source_root.rstrip("/") or ""
    return f"{base}/./{relative}" if relative else f"{base}/./"


def _options(job: RsyncJob) -> list[str]:
    argv = [
        "-aHAXS",
        "--numeric-ids",
        "--relative",
        f"--timeout={job.io_timeout_s}",
        "--open-noatime",
        "--no-h",
        "--info=progress2,stats2",
    ]
    if job.one_file_system:
        argv.append("--one-file-system")
    if not job.incremental_recursion:
        argv.append("--no-inc-recursive")
    if job.nanosecond_times:
        argv.append("--modify-window=-1")
    if job.kind is PassKind.migrate:
        # A stopped full copy resumes on its partial files. A sync pass goes without: rsync
        # then looks for a partial file beside every file it checks, some 15 % of a no-change
        # pass over many small files, and a changed file still travels as a delta against the
        # copy the target already holds.
        argv.append(f"--partial-dir={PARTIAL_DIR}")
    if job.kind is PassKind.sync:
        # Deletions are found during the run and applied at its end, so an interrupted pass
        # never leaves the target with files removed but their replacements not yet copied.
        argv.append("--delete-delay")
    if job.bwlimit_kib_s > 0:
        argv.append(f"--bwlimit={job.bwlimit_kib_s}")
    if job.remote_rsync_path:
        argv.append(f"--rsync-path={job.remote_rsync_path}")
    argv += job.extra_options
    argv += [f"--filter={rule}" for rule in job.filter_rules]
    return argv


def build_argv(job: RsyncJob, target: Optional[TargetSession]) -> list[str]:
    """The complete rsync argv of a pass; `target` None copies to a local directory.

    Raises:
        ValueError: a source is not a normalized relative path, or there is none.
    """
    if not job.sources:
        msg = "an rsync pass needs at least one source"
        raise ValueError(msg)
    argv = [job.rsync_path, *_options(job)]
    destination = job.destination.rstrip("/") + "/"
    if target is not None:
        argv += ["-e", target.remote_shell()]
        destination = target.rsync_destination(destination)
    # Every source is absolute and the destination starts with "/" or a host, but "--" makes
    # sure no path is ever read as an option.
    argv.append("--")
    argv += [_source_argument(job.source_root, rel) for rel in job.sources]
    argv.append(destination)
    return argv
