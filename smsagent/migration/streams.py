"""Split the copy into up to N parallel rsync streams by mount point and top-level directory.

One SSH stream is bound by its cipher and its window (movers doc §4), so a wide link needs several.
Work units are the file systems to copy; when there are fewer of them than streams, each file system
is cut further into its top-level directories. Units that share a hard-linked file must travel in
one stream (rsync links only what one run sees); such groups are then dealt largest first to the
least loaded stream. A stream leaves alone whatever another stream copies below its own sources,
so no file is sent twice and no stream deletes another one's files.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Survey:
    """What a walk of one unit found: allocated bytes and its multiply-linked files."""

    size_bytes: int
    linked_inodes: frozenset[tuple[int, int]] = frozenset()


# survey(absolute path, absolute paths to leave out) -> Survey
Surveyor = Callable[[str, frozenset[str]], Survey]


@dataclass(frozen=True)
class Unit:
    """A piece of work: one rsync source, relative to the source root.

    Attributes:
        path: the source (`""` is the source root).
        own_filesystem: a mount point (or the source root, or a directory the user chose);
            `--one-file-system` stops at its boundary, so it is always a source of its own.
    """

    path: str
    own_filesystem: bool


@dataclass(frozen=True)
class Stream:
    """The sources of one rsync pass and the extra rules that keep it off others' work."""

    sources: tuple[str, ...]
    filter_rules: tuple[str, ...]
    size_bytes: int


@dataclass
class _Group:
    """Units that must share a stream, with their total size."""

    units: list[Unit] = field(default_factory=list)
    size_bytes: int = 0


def _within(path: str, ancestor: str) -> bool:
    return ancestor == "" or path == ancestor or path.startswith(ancestor + "/")


def _path_of(source_root: str, relative: str) -> str:
    return posixpath.join(source_root, relative) if relative else source_root


def survey_tree(path: str, skip: frozenset[str] = frozenset()) -> Survey:
    """Walk `path` on its own file system: allocated bytes (as `du -sx`) and hard-linked files.

    Args:
        skip: absolute paths whose subtrees are left out (other units).
    """
    try:
        device = os.lstat(path).st_dev
    except OSError:
        return Survey(0)
    total, linked, pending = 0, set(), [path]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.path in skip:
                        continue
                    info = entry.stat(follow_symlinks=False)
                    inode = (info.st_dev, info.st_ino)
                    if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                        pending.append(entry.path)
                    elif info.st_nlink > 1:
                        if inode in linked:
                            continue  # another name of a file already counted
                        linked.add(inode)
                    total += info.st_blocks * 512
        except OSError:
            continue  # unreadable or vanished while walking: an estimate is enough
    return Survey(total, frozenset(linked))


def work_units(filesystem_paths: Sequence[str], only_dirs: Sequence[str] = ()) -> list[Unit]:
    """The units to copy: each file system or, for `ONLY_SYNC_DIR`, the chosen directories and
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
        children = _top_level_dirs(source_root, unit, units)
        result += [Unit(rel, own_filesystem=False) for rel in children]
    return result


def _split_from(unit: Unit, parent: str) -> bool:
    """True when `unit` is a top-level directory split off the unit at `parent`."""
    return (
        not unit.own_filesystem and unit.path != parent and posixpath.dirname(unit.path) == parent
    )


def _surveys(source_root: str, units: Sequence[Unit], survey: Surveyor) -> list[Survey]:
    """Survey each unit without the directories split off it (they are surveyed on their own)."""
    results = []
    for unit in units:
        skip = frozenset(
            _path_of(source_root, other.path) for other in units if _split_from(other, unit.path)
        )
        results.append(survey(_path_of(source_root, unit.path), skip))
    return results


def _groups(units: Sequence[Unit], surveys: Sequence[Survey]) -> list[_Group]:
    """Units joined whenever they share a hard-linked file (union-find over shared inodes)."""
    parent = list(range(len(units)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_seen: dict[tuple[int, int], int] = {}
    for index, found in enumerate(surveys):
        for inode in found.linked_inodes:
            parent[find(index)] = find(first_seen.setdefault(inode, index))
    groups: dict[int, _Group] = {}
    for index, unit in enumerate(units):
        group = groups.setdefault(find(index), _Group())
        group.units.append(unit)
        group.size_bytes += surveys[index].size_bytes
    return list(groups.values())


def _deal(groups: Sequence[_Group], max_streams: int) -> list[_Group]:
    """Largest first, each to the least loaded stream (LPT scheduling)."""
    bins = [_Group() for _ in range(max_streams)]
    for group in sorted(groups, key=lambda g: (-g.size_bytes, g.units[0].path)):
        target = min(bins, key=lambda b: b.size_bytes)
        target.units += group.units
        target.size_bytes += group.size_bytes
    return [b for b in bins if b.units]


def _stream(bin_: _Group, all_units: Sequence[Unit]) -> Stream:
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
    survey: Surveyor = survey_tree,
) -> tuple[Stream, ...]:
    """Up to `max_streams` rsync passes that together copy every unit exactly once.

    With more than one stream every unit is surveyed (a metadata walk of the whole source: run
    this off the event loop).

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
        return (_stream(_Group(list(units)), units),)
    if len(units) < max_streams:
        units = split_units(source_root, units)
    groups = _groups(units, _surveys(source_root, units, survey))
    return tuple(_stream(b, units) for b in _deal(groups, max_streams))
