"""`LocalTree`: a `TargetTree` over a directory of this machine, for fixture trees and tools.

Paths resolve inside the tree exactly as `RemoteTree` resolves them (`tree.resolve_many`). The
chroot is not entered: commands go to an injected `ChrootRunner`, because a fixture tree holds
no binaries; without one, `run_chroot` refuses. Binding the system directories only counts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Callable, Optional

from smsagent.target.session import CompletedRemote
from smsagent.target.tree import (
    MAX_READ_BYTES,
    Entry,
    EntryKind,
    TreeError,
    glob_tree,
    host_path,
    lstat_in_tree,
    resolve_many,
)

# What runs a command "in the chroot" of a LocalTree: (argv, env, stdin) -> its outcome.
ChrootRunner = Callable[
    [Sequence[str], Mapping[str, str], Optional[bytes]], Awaitable[CompletedRemote]
]


def _kind(mode: int) -> EntryKind:
    if stat.S_ISLNK(mode):
        return EntryKind.SYMLINK
    if stat.S_ISDIR(mode):
        return EntryKind.DIR
    if stat.S_ISREG(mode):
        return EntryKind.FILE
    return EntryKind.OTHER


def _lstat(tree_path: str, where: Path) -> Optional[Entry]:
    try:
        info = where.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    link = str(where.readlink()) if stat.S_ISLNK(info.st_mode) else ""
    mode = stat.S_IMODE(info.st_mode)
    return Entry(tree_path, _kind(info.st_mode), mode, info.st_uid, info.st_gid, info.st_size, link)


def _names(where: Path) -> list[str]:
    try:
        return sorted(child.name for child in where.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _write(target: Path, data: bytes, mode: int, make_parents: bool) -> None:
    if make_parents:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        old: Optional[os.stat_result] = target.stat()
    except FileNotFoundError:
        old = None
    fd, name = tempfile.mkstemp(prefix=".smsagent.", dir=target.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if old is not None:
            os.chown(temp, old.st_uid, old.st_gid)
        temp.chmod(stat.S_IMODE(old.st_mode) if old is not None else mode)
        temp.replace(target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _check_free(op: str, tree_path: str, where: Path, make_parents: bool) -> None:
    if where.exists() or where.is_symlink():
        raise TreeError(f"{op} {tree_path}: it exists already")
    if make_parents:
        where.parent.mkdir(mode=0o755, parents=True, exist_ok=True)


def _copy(origin: Path, where: Path) -> None:
    shutil.copy2(origin, where)
    info = origin.stat()
    os.chown(where, info.st_uid, info.st_gid)


def _remove(tree_path: str, where: Path) -> None:
    if where.is_dir() and not where.is_symlink():
        raise TreeError(f"remove {tree_path}: it is a directory")
    where.unlink(missing_ok=True)


class LocalTree:
    """A tree in a local directory.

    Args:
        root: the directory holding the tree.
        runner: what `run_chroot` calls instead of chrooting.
    """

    def __init__(self, root: Path, runner: Optional[ChrootRunner] = None) -> None:
        self._root = str(root)
        self._runner = runner
        self.bound = False
        """Whether the system directories count as bound."""
        self.bind_count = 0
        """How often `bind_system_dirs` was called."""

    @property
    def root(self) -> str:
        return self._root

    def _host(self, tree_path: str) -> Path:
        return Path(host_path(self._root, tree_path))

    async def _lstat_many(self, paths: Sequence[str]) -> dict[str, Optional[Entry]]:
        return {path: await asyncio.to_thread(_lstat, path, self._host(path)) for path in paths}

    async def _list_many(self, paths: Sequence[str]) -> dict[str, list[Entry]]:
        listing: dict[str, list[Entry]] = {}
        for path in paths:
            names = await asyncio.to_thread(_names, self._host(path))
            stats = await self._lstat_many([f"{path.rstrip('/')}/{name}" for name in names])
            listing[path] = [entry for entry in stats.values() if entry is not None]
        return listing

    async def _resolved(self, path: str, *, follow_last: bool = True) -> str:
        return (await resolve_many([path], self._lstat_many, follow_last=follow_last))[path]

    async def _where(self, path: str, *, follow_last: bool = True) -> Path:
        return self._host(await self._resolved(path, follow_last=follow_last))

    async def lstat(self, path: str) -> Optional[Entry]:
        return (await lstat_in_tree([path], self._lstat_many))[path]

    async def stat(self, path: str) -> Optional[Entry]:
        where = await self._resolved(path)
        return (await self._lstat_many([where]))[where]

    async def resolve(self, path: str) -> str:
        return await self._resolved(path)

    async def read_files(self, paths: Sequence[str]) -> dict[str, Optional[bytes]]:
        resolved = await resolve_many(paths, self._lstat_many)
        stats = await self._lstat_many(sorted(set(resolved.values())))
        found: dict[str, Optional[bytes]] = {}
        for path in paths:
            entry = stats[resolved[path]]
            if entry is None or entry.kind is not EntryKind.FILE:
                found[path] = None
            elif entry.size > MAX_READ_BYTES:
                raise TreeError(f"read {path}: {entry.size} bytes is too large for a setting file")
            else:
                found[path] = await asyncio.to_thread(self._host(resolved[path]).read_bytes)
        return found

    async def list_dirs(self, paths: Sequence[str]) -> dict[str, list[Entry]]:
        resolved = await resolve_many(paths, self._lstat_many)
        listing = await self._list_many(sorted(set(resolved.values())))
        return {path: listing[resolved[path]] for path in paths}

    async def glob(self, pattern: str) -> list[str]:
        return await glob_tree(pattern, self._list_many, self._lstat_many)

    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o644, make_parents: bool = False
    ) -> None:
        await asyncio.to_thread(_write, await self._where(path), data, mode, make_parents)

    async def copy_file(self, source: str, destination: str, *, make_parents: bool = False) -> None:
        origin = await self._where(source)
        where = await self._where(destination, follow_last=False)
        await asyncio.to_thread(_check_free, "copy to", destination, where, make_parents)
        await asyncio.to_thread(_copy, origin, where)

    async def rename(self, source: str, destination: str, *, make_parents: bool = False) -> None:
        origin = await self._where(source, follow_last=False)
        where = await self._where(destination, follow_last=False)
        await asyncio.to_thread(_check_free, "rename to", destination, where, make_parents)
        await asyncio.to_thread(origin.rename, where)

    async def symlink(self, path: str, target: str, *, make_parents: bool = False) -> None:
        where = await self._where(path, follow_last=False)
        await asyncio.to_thread(_check_free, "symlink", path, where, make_parents)
        await asyncio.to_thread(where.symlink_to, target)

    async def remove(self, path: str) -> None:
        await asyncio.to_thread(_remove, path, await self._where(path, follow_last=False))

    async def run_chroot(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Optional[Mapping[str, str]] = None,
        input: Optional[bytes] = None,
    ) -> CompletedRemote:
        if self._runner is None:
            raise TreeError(f"run {argv[0]!r}: this local tree has no chroot runner")
        return await self._runner(tuple(argv), dict(env or {}), input)

    async def bind_system_dirs(self) -> None:
        self.bind_count += 1
        self.bound = True

    async def unbind_system_dirs(self) -> None:
        self.bound = False

    async def sync(self) -> None:
        await asyncio.to_thread(os.sync)
