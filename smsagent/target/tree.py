"""The migrated tree on the target as the configure stage sees it: paths resolved as in a chroot.

A `TargetTree` is the copy of the source mounted under one root directory. Every path given to it
is a path *inside* the tree (`/etc/fstab`), and every symbolic link met on the way is followed
inside the tree, the way the kernel would follow it in a chroot of that root: an absolute link
`/etc/x -> /usr/y` means `<root>/usr/y`, and `..` never climbs above the root. So no path, however
its links are made, reaches a file of the machine the tree is mounted on.

`resolve_many` does that resolution for any implementation over one primitive, a batched
`lstat` of host paths; `glob_tree` does the same for wildcard patterns over a batched directory
listing. `RemoteTree` (`tree_remote.py`) and `LocalTree` (`tree_local.py`) implement the protocol.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import posixpath
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Final, Optional, Protocol

from smsagent.target.session import CompletedRemote

# The kernel gives up after 40 links in one lookup (ELOOP); so does the resolution here.
MAX_LINK_HOPS: Final = 40
# The configure stage reads configuration files; anything larger is not one.
MAX_READ_BYTES: Final = 4 * 1024 * 1024
# What the chroot gets bound from the machine the tree is mounted on, in binding order.
SYSTEM_DIRS: Final = ("/dev", "/proc", "/sys", "/run")


class TreeError(Exception):
    """An operation on the tree failed; the message names the operation and the tree path."""


class EntryKind(str, enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True)
class Entry:
    """What `lstat` says of one path of the tree.

    Attributes:
        path: the tree path (its parents resolved, the last component as named).
        kind: regular file, directory, symbolic link or anything else.
        mode: the permission bits (`0o644`).
        uid: the owner.
        gid: the group.
        size: bytes.
        link: a symbolic link's target, verbatim ("" for anything else).
    """

    path: str
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    size: int
    link: str = ""


# A batched lstat of tree paths: each path maps to its entry, or None when it does not exist.
LstatMany = Callable[[Sequence[str]], Awaitable[Mapping[str, Optional[Entry]]]]
# A batched listing of directories (tree paths, resolved): each maps to its entries.
ListMany = Callable[[Sequence[str]], Awaitable[Mapping[str, Sequence[Entry]]]]


class TargetTree(Protocol):
    """The migrated tree: files read and changed by tree path, commands run in its chroot.

    Paths are absolute tree paths; a relative path or one holding a NUL is refused with
    `TreeError`. Reads and `stat` follow links (inside the tree); `lstat`, `rename`, `remove`
    and `symlink` act on the last component itself.
    """

    @property
    def root(self) -> str:
        """Where the tree is mounted on its machine (for messages)."""

    async def lstat(self, path: str) -> Optional[Entry]:
        """The entry at `path` without following a link in its last component."""

    async def stat(self, path: str) -> Optional[Entry]:
        """The entry `path` leads to, every link followed; None when it does not exist."""

    async def resolve(self, path: str) -> str:
        """`path` with every link followed inside the tree (it need not exist)."""

    async def read_files(self, paths: Sequence[str]) -> dict[str, Optional[bytes]]:
        """The bytes of each regular file, in one go; None for a path that is not one."""

    async def list_dirs(self, paths: Sequence[str]) -> dict[str, list[Entry]]:
        """The entries of each directory (links in `paths` followed), sorted by name."""

    async def glob(self, pattern: str) -> list[str]:
        """Tree paths matching `pattern` (`*`, `?`, `[...]` in any component), sorted."""

    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o644, make_parents: bool = False
    ) -> None:
        """Replace or create the file atomically (a temporary file beside it, then a rename).

        A replaced file keeps its mode and owner; a new one gets `mode` and root's ownership.
        """

    async def copy_file(self, source: str, destination: str, *, make_parents: bool = False) -> None:
        """Copy a file with its mode, owner and times to a path that must not exist yet."""

    async def rename(self, source: str, destination: str, *, make_parents: bool = False) -> None:
        """Move a file, directory or link (itself) within its file system to a path that must
        not exist yet."""

    async def symlink(self, path: str, target: str, *, make_parents: bool = False) -> None:
        """Make `path` a link to `target` (verbatim); `path` must not exist."""

    async def remove(self, path: str) -> None:
        """Remove a file or a link (never a directory); a missing path is no error."""

    async def run_chroot(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Optional[Mapping[str, str]] = None,
        input: Optional[bytes] = None,
    ) -> CompletedRemote:
        """Run a command chrooted into the tree with only `env` (plus PATH and the C locale).

        A command past `timeout_s` is killed and returns status 124 (as `timeout(1)` does).
        """

    async def bind_system_dirs(self) -> None:
        """Bind /dev, /proc, /sys and /run into the tree; those already bound are left alone."""

    async def unbind_system_dirs(self) -> None:
        """Undo `bind_system_dirs` (lazily if a mount is busy); unbound ones are no error."""

    async def sync(self) -> None:
        """Flush the tree's file systems to disk."""


@contextlib.asynccontextmanager
async def system_dirs_bound(tree: TargetTree) -> AsyncIterator[None]:
    """Bind /dev, /proc, /sys and /run into the tree for the block; always unbound after it,
    even when binding itself failed halfway."""
    try:
        await tree.bind_system_dirs()
        yield
    finally:
        await tree.unbind_system_dirs()


def tree_parts(path: str) -> list[str]:
    """The components of an absolute tree path (`.` and empty ones dropped, `..` kept).

    Raises:
        TreeError: the path is relative or holds a NUL.
    """
    if not path.startswith("/") or "\0" in path:
        raise TreeError(f"{path!r} is not an absolute path inside the tree")
    return [part for part in path.split("/") if part not in ("", ".")]


def join_parts(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)


def host_path(root: str, tree_path: str) -> str:
    """The path on the tree's machine of a resolved tree path."""
    return root.rstrip("/") + tree_path if tree_path != "/" else root.rstrip("/") or "/"


def check_name(name: str) -> str:
    """A single path component; refused if it is empty, `.`/`..`, or holds `/` or NUL."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise TreeError(f"{name!r} is not a file name")
    return name


class _Walk:
    """The resolution of one path, advanced one batch of lstat answers at a time."""

    def __init__(self, path: str, follow_last: bool) -> None:
        self.path = path
        self.done: list[str] = []
        self.todo = tree_parts(path)
        self.follow_last = follow_last
        self.hops = 0
        self.result: Optional[str] = None
        if not self.todo:
            self.result = "/"

    def candidates(self) -> list[str]:
        """The prefixes to lstat, assuming no link until the end (each link restarts a batch)."""
        found: list[str] = []
        parts = list(self.done)
        for part in self.todo:
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
            found.append(join_parts(parts))
        return found

    def advance(self, stats: Mapping[str, Optional[Entry]]) -> None:
        while self.todo:
            part, rest = self.todo[0], self.todo[1:]
            if part == "..":
                if self.done:
                    self.done.pop()
                self.todo = rest
                continue
            entry = stats.get(join_parts([*self.done, part]))
            if entry is None:
                # Nothing below a missing component can be a link: the rest is lexical.
                self.done.append(part)
                self.todo = rest
                self._finish_lexically()
                return
            if entry.kind is EntryKind.SYMLINK and (rest or self.follow_last):
                self._follow(entry.link, rest)
                return
            self.done.append(part)
            self.todo = rest
        self.result = join_parts(self.done)

    def _follow(self, link: str, rest: list[str]) -> None:
        self.hops += 1
        if self.hops > MAX_LINK_HOPS:
            raise TreeError(f"{self.path}: more than {MAX_LINK_HOPS} symbolic links to follow")
        if link.startswith("/"):
            self.done = []  # an absolute link starts again at the tree's root, as in a chroot
        self.todo = [p for p in link.split("/") if p not in ("", ".")] + rest

    def _finish_lexically(self) -> None:
        for part in self.todo:
            if part == "..":
                if self.done:
                    self.done.pop()
            else:
                self.done.append(part)
        self.todo = []
        self.result = join_parts(self.done)


async def resolve_many(
    paths: Sequence[str], lstat_many: LstatMany, *, follow_last: bool = True
) -> dict[str, str]:
    """Each tree path resolved inside the tree: every link followed as a chroot would.

    One `lstat_many` call per round of links, for all paths together (usually one in all).

    Raises:
        TreeError: a path is not absolute, or loops through more than 40 links.
    """
    walks = [_Walk(path, follow_last) for path in paths]
    while True:
        pending = [walk for walk in walks if walk.result is None]
        if not pending:
            break
        wanted = sorted({c for walk in pending for c in walk.candidates()})
        stats = await lstat_many(wanted)
        for walk in pending:
            walk.advance(stats)
    return {walk.path: walk.result or "/" for walk in walks}


async def lstat_in_tree(paths: Sequence[str], lstat_many: LstatMany) -> dict[str, Optional[Entry]]:
    """Each path's entry with its parents resolved and a link in its last component not
    followed (what `lstat(2)` in a chroot would say)."""
    located = await resolve_many(paths, lstat_many, follow_last=False)
    stats = await lstat_many(sorted(set(located.values())))
    return {path: stats.get(where) for path, where in located.items()}


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


async def glob_tree(pattern: str, list_many: ListMany, lstat_many: LstatMany) -> list[str]:
    """Tree paths matching `pattern`; dot files match only a pattern starting with a dot.

    Directories are listed through links (resolved inside the tree); the paths returned are as
    the pattern spells them (`/lib/modules/6.1.0-18-amd64`, even if `/lib` is a link).
    """
    matches = [""]
    for part in tree_parts(pattern):
        if not _has_magic(part):
            matches = [f"{m}/{part}" for m in matches]
            continue
        directories = await resolve_many([m or "/" for m in matches], lstat_many)
        listing = await list_many(sorted(set(directories.values())))
        found: list[str] = []
        for m in matches:
            for entry in listing.get(directories[m or "/"], []):
                name = posixpath.basename(entry.path)
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    found.append(f"{m}/{name}")
        matches = found
    if not matches:
        return []
    existing = await lstat_in_tree([m or "/" for m in matches], lstat_many)
    return sorted(m or "/" for m in matches if existing[m or "/"] is not None)
