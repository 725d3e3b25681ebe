"""`RemoteTree`: the migrated tree on the target, every operation one remote command over SSH.

Each operation is a fixed `sh -c` script or a plain command; the paths go to it as separate
arguments (quoted by `TargetSession.run`), never spliced into the script. Paths are resolved
inside the tree first (`tree.resolve_many`, over a batched `find -printf` lstat), so the
commands only ever see `<root>/<resolved path>`, whose components hold no link.

The target helper needs GNU coreutils and findutils (`find -printf`, `stat -c`, `chown
--reference`, `timeout`) and util-linux (`mountpoint`, `mount`, `umount`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Final, Optional, Protocol

from smsagent.target.session import CompletedRemote
from smsagent.target.tree import (
    MAX_READ_BYTES,
    SYSTEM_DIRS,
    Entry,
    EntryKind,
    TreeError,
    glob_tree,
    host_path,
    lstat_in_tree,
    resolve_many,
)

# A file operation is a small command; this bounds one on a slow or stalled link.
FILE_OP_TIMEOUT_S: Final = 60.0
# A chroot command gets its own limit on the target (`timeout`); ssh gets this much more.
SSH_MARGIN_S: Final = 30.0
CHROOT_KILL_AFTER_S: Final = 10
CHROOT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# find's exit status when some start point was missing (the others are still listed).
_FIND_SOME_MISSING: Final = 1
_MISSING_MARKERS: Final = ("No such file or directory", "Not a directory")
_PRINTF: Final = r"%y\0%m\0%U\0%G\0%s\0%l\0%p\0"
_FIELDS: Final = 7
_KINDS: Final = {"f": EntryKind.FILE, "d": EntryKind.DIR, "l": EntryKind.SYMLINK}
_EXISTS_STATUS: Final = 17

# Each regular file as "<size>\n<bytes>", anything else as "-\n".
_READ_SCRIPT: Final = """\
for f; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then
    n=$(stat -c %s -- "$f") || exit 1
    printf '%s\\n' "$n"
    head -c "$n" -- "$f" || exit 1
  else
    printf -- '-\\n'
  fi
done
"""

# $1 file, $2 mode for a new file, $3 1 to make missing parents; the data on stdin.
_WRITE_SCRIPT: Final = """\
set -eu
f=$1
d=${f%/*}
[ -n "$d" ] || d=/
[ "$3" != 1 ] || mkdir -p -m 0755 -- "$d"
tmp=$(mktemp "$d/.smsagent.XXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat > "$tmp"
if [ -e "$f" ]; then
  chown --reference="$f" -- "$tmp"
  chmod --reference="$f" -- "$tmp"
else
  chmod -- "$2" "$tmp"
fi
sync -- "$tmp" 2>/dev/null || true
mv -f -T -- "$tmp" "$f"
trap - EXIT
"""

# $1 source, $2 destination (must not exist), $3 1 to make missing parents; atomic so a
# crash never leaves half a copy.
_COPY_SCRIPT: Final = """\
set -eu
if [ -e "$2" ] || [ -L "$2" ]; then echo "$2 exists already" >&2; exit 17; fi
[ "$3" != 1 ] || mkdir -p -m 0755 -- "${2%/*}"
tmp=$(mktemp "${2%/*}/.smsagent.XXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cp -a -T -- "$1" "$tmp"
mv -T -- "$tmp" "$2"
trap - EXIT
"""

_RENAME_SCRIPT: Final = """\
set -eu
if [ -e "$2" ] || [ -L "$2" ]; then echo "$2 exists already" >&2; exit 17; fi
[ "$3" != 1 ] || mkdir -p -m 0755 -- "${2%/*}"
mv -T -- "$1" "$2"
"""

# $1 link path, $2 target, $3 1 to make missing parents.
_SYMLINK_SCRIPT: Final = """\
set -eu
if [ -e "$1" ] || [ -L "$1" ]; then echo "$1 exists already" >&2; exit 17; fi
[ "$3" != 1 ] || mkdir -p -m 0755 -- "${1%/*}"
ln -s -T -- "$2" "$1"
"""

_REMOVE_SCRIPT: Final = """\
set -eu
if [ -d "$1" ] && [ ! -L "$1" ]; then echo "$1 is a directory" >&2; exit 21; fi
rm -f -- "$1"
"""

# $1 root, then the directories; a mount point already there (a resumed run) is left as is.
_BIND_SCRIPT: Final = """\
set -eu
root=$1
shift
for d; do
  t="$root$d"
  if [ -L "$t" ]; then echo "$t is a symbolic link" >&2; exit 3; fi
  [ -d "$t" ] || mkdir -m 0755 -- "$t"
  mountpoint -q -- "$t" || mount --bind -- "$d" "$t"
done
"""

# Unmount each (even one bound twice); a busy one lazily.
_UNBIND_SCRIPT: Final = """\
root=$1
shift
rc=0
for d; do
  t="$root$d"
  n=0
  while mountpoint -q -- "$t" && [ "$n" -lt 4 ]; do
    umount -- "$t" 2>/dev/null || umount -l -- "$t" || rc=1
    n=$((n + 1))
  done
  if mountpoint -q -- "$t"; then rc=1; fi
done
exit $rc
"""


class RemoteRunner(Protocol):
    """What runs a command on the target (`TargetSession`)."""

    async def run(
        self,
        argv_remote: Sequence[str],
        timeout_s: float,
        *,
        grace_s: float = 5.0,
        input: Optional[bytes] = None,
    ) -> CompletedRemote:
        """Run `argv_remote` on the target."""


def parse_find_records(output: bytes, root: str) -> list[Entry]:
    """Entries from `find -printf` records (seven NUL-ended fields each), as tree paths."""
    fields = output.split(b"\0")
    entries: list[Entry] = []
    prefix = root.rstrip("/")
    for i in range(0, len(fields) - _FIELDS + 1, _FIELDS):
        kind, mode, uid, gid, size, link, path = (
            f.decode("utf-8", "surrogateescape") for f in fields[i : i + _FIELDS]
        )
        tree_path = path[len(prefix) :] if path.startswith(prefix) else path
        entries.append(
            Entry(
                tree_path or "/",
                _KINDS.get(kind, EntryKind.OTHER),
                int(mode, 8),
                int(uid),
                int(gid),
                int(size),
                link,
            )
        )
    return entries


def parse_read_output(output: bytes, paths: Sequence[str]) -> dict[str, Optional[bytes]]:
    """The files of `_READ_SCRIPT`'s output, in the order asked.

    Raises:
        TreeError: the output does not frame the files asked for.
    """
    found: dict[str, Optional[bytes]] = {}
    offset = 0
    for path in paths:
        end = output.find(b"\n", offset)
        if end < 0:
            raise TreeError(f"read {path}: the target's answer ended early")
        header = output[offset:end]
        offset = end + 1
        if header == b"-":
            found[path] = None
            continue
        size = int(header)
        found[path] = output[offset : offset + size]
        offset += size
    return found


def _failure(op: str, result: CompletedRemote) -> TreeError:
    detail = result.stderr_tail[-1] if result.stderr_tail else f"exit status {result.returncode}"
    return TreeError(f"{op}: {detail}")


class RemoteTree:
    """The tree mounted at `root` on the target, reached through `session`.

    Args:
        session: runs commands on the target (a `TargetSession`).
        root: where the tree is mounted on the target (absolute).
    """

    def __init__(self, session: RemoteRunner, root: str) -> None:
        if not root.startswith("/") or root.rstrip("/") == "" or "\0" in root:
            raise ValueError(f"tree root {root!r} is not an absolute directory below /")
        self._session = session
        self._root = posixpath.normpath(root)
        # What find said of each path, and each directory's entries. Nothing but this tree
        # changes the copy while it is configured, so they hold until it changes them itself.
        self._stats: dict[str, Optional[Entry]] = {}
        self._listings: dict[str, list[Entry]] = {}

    @property
    def root(self) -> str:
        return self._root

    def _host(self, tree_path: str) -> str:
        return host_path(self._root, tree_path)

    async def _run(
        self, op: str, argv: Sequence[str], *, input: Optional[bytes] = None
    ) -> CompletedRemote:
        result = await self._session.run(argv, FILE_OP_TIMEOUT_S, input=input)
        if not result.ok:
            raise _failure(op, result)
        return result

    async def _sh(self, op: str, script: str, *args: str, input: Optional[bytes] = None) -> None:
        await self._run(op, ["sh", "-c", script, "sh", *args], input=input)

    async def _find(self, op: str, starts: Sequence[str], depth: Sequence[str]) -> list[Entry]:
        argv = ["find", "-P", *starts, *depth, "-printf", _PRINTF]
        result = await self._session.run(argv, FILE_OP_TIMEOUT_S)
        if result.returncode == _FIND_SOME_MISSING and all(
            any(marker in line for marker in _MISSING_MARKERS) for line in result.stderr_tail
        ):
            pass  # the missing ones are simply not listed
        elif not result.ok:
            raise _failure(op, result)
        return parse_find_records(result.stdout, self._root)

    def _forget(self, *tree_paths: str) -> None:
        """Drop what the caches know of these paths, their parents and what lies below them
        (a write may have made parents; a rename moves a whole subtree)."""
        for path in tree_paths:
            below = path.rstrip("/") + "/"
            for cache in (self._stats, self._listings):
                for key in [
                    k
                    for k in cache
                    if k == path or k.startswith(below) or below.startswith(k.rstrip("/") + "/")
                ]:
                    del cache[key]

    def _forget_all(self) -> None:
        self._stats.clear()
        self._listings.clear()

    async def _lstat_many(self, paths: Sequence[str]) -> dict[str, Optional[Entry]]:
        unknown = [p for p in dict.fromkeys(paths) if p not in self._stats]
        if unknown:
            hosts = [self._host(p) for p in unknown]
            entries = await self._find(f"lstat {unknown[0]}", hosts, ["-maxdepth", "0"])
            by_path = {entry.path: entry for entry in entries}
            for path in unknown:
                self._stats[path] = by_path.get(path)
        return {path: self._stats[path] for path in paths}

    async def _list_many(self, paths: Sequence[str]) -> dict[str, list[Entry]]:
        unknown = [p for p in dict.fromkeys(paths) if p not in self._listings]
        if unknown:
            stats = await self._lstat_many(unknown)
            directories = [
                p for p in unknown if (e := stats[p]) is not None and e.kind is EntryKind.DIR
            ]
            found: dict[str, list[Entry]] = {path: [] for path in unknown}
            if directories:
                hosts = [self._host(p) for p in directories]
                entries = await self._find(
                    f"list {directories[0]}", hosts, ["-mindepth", "1", "-maxdepth", "1"]
                )
                for entry in entries:
                    found.setdefault(posixpath.dirname(entry.path), []).append(entry)
                    self._stats[entry.path] = entry
            for path in unknown:
                self._listings[path] = sorted(found[path], key=lambda e: e.path)
        return {path: self._listings[path] for path in paths}

    async def _resolved(self, path: str, *, follow_last: bool = True) -> str:
        return (await resolve_many([path], self._lstat_many, follow_last=follow_last))[path]

    async def lstat(self, path: str) -> Optional[Entry]:
        return (await lstat_in_tree([path], self._lstat_many))[path]

    async def stat(self, path: str) -> Optional[Entry]:
        where = await self._resolved(path)
        return (await self._lstat_many([where]))[where]

    async def resolve(self, path: str) -> str:
        return await self._resolved(path)

    async def read_files(self, paths: Sequence[str]) -> dict[str, Optional[bytes]]:
        if not paths:
            return {}
        resolved = await resolve_many(paths, self._lstat_many)
        wanted = sorted(set(resolved.values()))
        stats = await self._lstat_many(wanted)
        for path in paths:
            entry = stats[resolved[path]]
            if entry is not None and entry.size > MAX_READ_BYTES:
                raise TreeError(f"read {path}: {entry.size} bytes is too large for a setting file")
        result = await self._run(
            f"read {paths[0]}", ["sh", "-c", _READ_SCRIPT, "sh", *[self._host(w) for w in wanted]]
        )
        contents = parse_read_output(result.stdout, wanted)
        return {path: contents[resolved[path]] for path in paths}

    async def list_dirs(self, paths: Sequence[str]) -> dict[str, list[Entry]]:
        resolved = await resolve_many(paths, self._lstat_many)
        listing = await self._list_many(sorted(set(resolved.values())))
        return {path: listing[resolved[path]] for path in paths}

    async def glob(self, pattern: str) -> list[str]:
        return await glob_tree(pattern, self._list_many, self._lstat_many)

    async def write_file(
        self, path: str, data: bytes, *, mode: int = 0o644, make_parents: bool = False
    ) -> None:
        where = await self._resolved(path)
        flag = "1" if make_parents else "0"
        try:
            await self._sh(
                f"write {path}", _WRITE_SCRIPT, self._host(where), f"{mode:o}", flag, input=data
            )
        finally:
            self._forget(where)

    async def copy_file(self, source: str, destination: str, *, make_parents: bool = False) -> None:
        origin = self._host(await self._resolved(source))
        where = await self._resolved(destination, follow_last=False)
        flag = "1" if make_parents else "0"
        try:
            await self._sh(
                f"copy {source} to {destination}", _COPY_SCRIPT, origin, self._host(where), flag
            )
        finally:
            self._forget(where)

    async def rename(self, source: str, destination: str, *, make_parents: bool = False) -> None:
        origin = await self._resolved(source, follow_last=False)
        where = await self._resolved(destination, follow_last=False)
        flag = "1" if make_parents else "0"
        op = f"rename {source} to {destination}"
        try:
            await self._sh(op, _RENAME_SCRIPT, self._host(origin), self._host(where), flag)
        finally:
            self._forget(origin, where)

    async def symlink(self, path: str, target: str, *, make_parents: bool = False) -> None:
        where = await self._resolved(path, follow_last=False)
        flag = "1" if make_parents else "0"
        try:
            await self._sh(f"symlink {path}", _SYMLINK_SCRIPT, self._host(where), target, flag)
        finally:
            self._forget(where)

    async def remove(self, path: str) -> None:
        where = await self._resolved(path, follow_last=False)
        try:
            await self._sh(f"remove {path}", _REMOVE_SCRIPT, self._host(where))
        finally:
            self._forget(where)

    async def run_chroot(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Optional[Mapping[str, str]] = None,
        input: Optional[bytes] = None,
    ) -> CompletedRemote:
        # `env -i` so nothing of the ssh session's environment reaches the tree's tools, and
        # `timeout` on the target so a command past its limit dies there too: killing ssh alone
        # would leave it running.
        variables = {"PATH": CHROOT_PATH, "LC_ALL": "C", "LANG": "C", "HOME": "/root"}
        variables.update(env or {})
        remote = [
            "timeout",
            f"--kill-after={CHROOT_KILL_AFTER_S}",
            f"{timeout_s:g}",
            "env",
            "-i",
            *(f"{key}={value}" for key, value in sorted(variables.items())),
            "chroot",
            self._root,
            *argv,
        ]
        self._forget_all()  # the command may change any file
        result = await self._session.run(
            remote, timeout_s + CHROOT_KILL_AFTER_S + SSH_MARGIN_S, input=input
        )
        return CompletedRemote(tuple(argv), result.returncode, result.stdout, result.stderr_tail)

    async def bind_system_dirs(self) -> None:
        for directory in SYSTEM_DIRS:
            entry = await self.lstat(directory)
            if entry is not None and entry.kind is not EntryKind.DIR:
                raise TreeError(f"bind {directory}: it is not a directory in the tree")
        self._forget_all()
        await self._sh("bind the system directories", _BIND_SCRIPT, self._root, *SYSTEM_DIRS)

    async def unbind_system_dirs(self) -> None:
        self._forget_all()
        await self._sh(
            "unbind the system directories",
            _UNBIND_SCRIPT,
            self._root,
            *reversed(SYSTEM_DIRS),
        )

    async def sync(self) -> None:
        await self._run("sync", ["sync"])
