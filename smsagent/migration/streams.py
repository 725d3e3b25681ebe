"""Split the copy into up to N parallel rsync streams by mount point and top-level directory.

One SSH stream is bound by its cipher and its window (movers doc §4), so a wide link needs several.
Work units are the file systems to copy; when there are fewer of them than streams, each file system
is cut further into its top-level directories. Units are then dealt largest first to the least
loaded stream. A stream leaves alone whatever another stream copies below its own sources, so no
file is sent twice and no stream deletes another one's files.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

SizeEstimator = Callable[[str], int]


@dataclass(frozen=True)
class Unit:
    """A piece of work: one rsync source, relative to the source root.

    Attributes:
        path: the source (`""` is the source root).
        own_filesystem: a mount point (or the source root, or a directory the user chose);
            `--one-file-system` stops at its boundary, so it is always a source of its own.
        size_bytes: the estimated bytes below it, for balancing.
    """

    path: str
    own_filesystem: bool
    size_bytes: int = 0


@dataclass(frozen=True)
class Stream:
    """The sources of one rsync pass and the extra rules that keep it off others' work."""

    sources: tuple[str, ...]
    filter_rules: tuple[str, ...]
    size_bytes: int


@dataclass
class _Bin:
    units: list[Unit] = field(default_factory=list)
    size_bytes: int = 0


def _within(path: str, ancestor: str) -> bool:
    return ancestor == "" or path == ancestor or path.startswith(ancestor + "/")


def tree_bytes(path: str) -> int:
    """Allocated bytes below `path` on its own file system (what `du -sx` counts)."""
    try:
        device = os.lstat(path).st_dev
    except OSError:
        return 0
    total, pending = 0, [path]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                        pending.append(entry.path)
        except OSError:
            continue  # unreadable or vanished while walking: an estimate is enough
    return total


def work_units(filesystem_paths: Sequence[str], only_dirs: Sequence[str] = ()) -> list[Unit]:
    """The units to copy: each file system, or, for `ONLY_SYNC_DIR`, the chosen directories and
    the file systems mounted below them.

    Args:
        filesystem_paths: mount points relative to the source root (`""` first).
        only_dirs: directories relative to the source root; empty means everything.
    """
    if not only_dirs:
        return [Unit(path, own_filesystem=True) for path in filesystem_paths]
    units = [Unit(path, own_filesystem=True) for path in only_dirs]
    for mount in filesystem_paths:
        if mount not in only_dirs and any(_within(mount, d) for d in only_dirs):
            units.append(Unit(mount, own_filesystem=True))
    return units


def _top_level_dirs(source_root: str, unit: Unit, others: Sequence[Unit]) -> list[str]:
    """Directories directly below `unit` on its own file system that are not units already."""
    base = _path_of(source_root, unit.path)
    try:
        device = os.lstat(base).st_dev
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return []
    taken = {other.path for other in others}
    found = []
    for entry in entries:
        rel = posixpath.join(unit.path, entry.name) if unit.path else entry.name
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode) and info.st_dev == device and rel not in taken:
            found.append(rel)
    return found


def split_units(source_root: str, units: Sequence[Unit]) -> list[Unit]:
    """Each unit plus its top-level directories as units of their own."""
    result = list(units)
    for unit in units:
        result += [
            Unit(rel, own_filesystem=False) for rel in _top_level_dirs(source_root, unit, units)
        ]
    return result


def _path_of(source_root: str, relative: str) -> str:
    return posixpath.join(source_root, relative) if relative else source_root


def _split_from(unit: Unit, parent: str) -> bool:
    """True when `unit` is a top-level directory split off the unit at `parent`."""
    return (
        not unit.own_filesystem and unit.path != parent and posixpath.dirname(unit.path) == parent
    )


def _sized(source_root: str, units: Sequence[Unit], estimate: SizeEstimator) -> list[Unit]:
    """Units with sizes; a unit's size leaves out what its split-off directories hold."""
    totals = {unit.path: estimate(_path_of(source_root, unit.path)) for unit in units}
    sized = []
    for unit in units:
        inner = sum(totals[other.path] for other in units if _split_from(other, unit.path))
        sized.append(Unit(unit.path, unit.own_filesystem, max(0, totals[unit.path] - inner)))
    return sized


def _deal(units: Sequence[Unit], max_streams: int) -> list[_Bin]:
    """Largest first, each to the least loaded stream (LPT scheduling)."""
    bins = [_Bin() for _ in range(max_streams)]
    for unit in sorted(units, key=lambda u: (-u.size_bytes, u.path)):
        target = min(bins, key=lambda b: b.size_bytes)
        target.units.append(unit)
        target.size_bytes += unit.size_bytes
    return [b for b in bins if b.units]


def _stream(bin_: _Bin, all_units: Sequence[Unit]) -> Stream:
    mine = {unit.path for unit in bin_.units}
    # A split-off directory travels with the unit it came from when both land in this stream.
    sources = [unit.path for unit in bin_.units if not any(_split_from(unit, p) for p in mine)]
    leave_alone = sorted(
        other.path
        for other in all_units
        if other.path and other.path not in mine and any(_within(other.path, s) for s in sources)
    )
    rules = tuple(f"- /{path}/*" for path in leave_alone)
    return Stream(tuple(sorted(sources)), rules, bin_.size_bytes)


def plan_streams(
    source_root: str,
    filesystem_paths: Sequence[str],
    max_streams: int,
    *,
    only_dirs: Sequence[str] = (),
    estimate: SizeEstimator = tree_bytes,
) -> tuple[Stream, ...]:
    """Up to `max_streams` rsync passes that together copy every unit exactly once.

    Sizes are estimated (a metadata walk, run it off the event loop) only when there is more
    than one stream to balance.

    Args:
        source_root: the absolute source root.
        filesystem_paths: the file systems to copy, relative to the source root.
        max_streams: the parallelism (`NUM_PROCESS_MIGRATE` / `NUM_PROCESS_SYNC`, 1..4).
        only_dirs: `ONLY_SYNC_DIR` sources; empty means everything.
    """
    if max_streams < 1:
        msg = f"max_streams must be at least 1, not {max_streams}"
        raise ValueError(msg)
    units = work_units(filesystem_paths, only_dirs)
    if max_streams == 1:
        return (_stream(_Bin(list(units)), units),)
    if len(units) < max_streams:
        units = split_units(source_root, units)
    sized = _sized(source_root, units, estimate)
    return tuple(_stream(b, sized) for b in _deal(sized, max_streams))
