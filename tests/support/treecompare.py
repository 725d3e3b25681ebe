"""Compare two directory trees independently of the code under test.

A walk of `lstat` (type, mode, owner, size, mtime, device numbers), extended attributes, POSIX ACLs
(decoded from their `system.posix_acl_*` attributes), symlink targets, hard-link groups, sparse
allocation and content hashes. A second, separate opinion comes from `rsync -n --checksum
--itemize-changes`, which must list nothing.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import subprocess
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

PathLike = Union[Path, bytes, str]

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_ACL_NAMED = {0x02, 0x08}
_SPARSE_SLACK_BYTES = 1024 * 1024

_KINDS = (
    (stat.S_ISREG, "file"),
    (stat.S_ISDIR, "dir"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISCHR, "char-device"),
    (stat.S_ISBLK, "block-device"),
    (stat.S_ISSOCK, "socket"),
)


@dataclass(frozen=True)
class Entry:
    """What is compared of one path."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: Optional[int]
    mtime_ns: Optional[int]
    rdev: Optional[int]
    link_target: Optional[bytes]
    xattrs: tuple[tuple[bytes, bytes], ...]
    acl_access: tuple[str, ...]
    acl_default: tuple[str, ...]
    sha256: Optional[str]
    allocated_bytes: int
    inode: tuple[int, int]
    nlink: int


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "unknown"


def decode_acl(raw: Optional[bytes]) -> tuple[str, ...]:
    """Render a `system.posix_acl_*` value as sorted `tag:id:rwx` lines (what getfacl shows)."""
    if not raw:
        return ()
    lines = []
    for offset in range(4, len(raw), 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
        who = str(ident) if tag in _ACL_NAMED else ""
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        lines.append(f"{_ACL_TAGS.get(tag, hex(tag))}:{who}:{bits}")
    return tuple(sorted(lines))


def _getxattr(path: bytes, name: bytes) -> Optional[bytes]:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return ()
        raise
    pairs = []
    for name in names:
        key = os.fsencode(name)
        if key in (ACL_ACCESS, ACL_DEFAULT):
            continue
        value = _getxattr(path, key)
        if value is not None:
            pairs.append((key, value))
    return tuple(sorted(pairs))


def _sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(path: bytes) -> Entry:
    st = os.lstat(path)
    kind = _kind(st.st_mode)
    is_link = kind == "symlink"
    return Entry(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if kind in ("file", "symlink") else None,
        mtime_ns=None if is_link else st.st_mtime_ns,
        rdev=st.st_rdev if kind in ("char-device", "block-device") else None,
        link_target=os.readlink(path) if is_link else None,
        xattrs=_xattrs(path),
        acl_access=() if is_link else decode_acl(_getxattr(path, ACL_ACCESS)),
        acl_default=decode_acl(_getxattr(path, ACL_DEFAULT)) if kind == "dir" else (),
        sha256=_sha256(path) if kind == "file" else None,
        allocated_bytes=st.st_blocks * 512,
        inode=(st.st_dev, st.st_ino),
        nlink=st.st_nlink,
    )


def _walk(root: bytes) -> Iterator[bytes]:
    yield b""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield os.path.relpath(os.path.join(dirpath, name), root)


def snapshot(root: PathLike, *, ignore: Collection[bytes] = ()) -> dict[bytes, Entry]:
    """Every path under `root` (relative, bytes; `b""` is the root itself) and what it holds.

    Args:
        ignore: relative paths left out, with everything below them.
    """
    broot = os.fsencode(root)
    entries: dict[bytes, Entry] = {}
    for rel in _walk(broot):
        if any(rel == skip or rel.startswith(skip + b"/") for skip in ignore):
            continue
        entries[rel] = _entry(os.path.join(broot, rel) if rel else broot)
    return entries


def hard_link_groups(entries: dict[bytes, Entry]) -> dict[bytes, frozenset[bytes]]:
    """For each non-directory with several names in the tree: all of its names in the tree."""
    by_inode: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    for rel, entry in entries.items():
        if entry.kind != "dir" and entry.nlink > 1:
            by_inode[entry.inode].add(rel)
    groups: dict[bytes, frozenset[bytes]] = {}
    for names in by_inode.values():
        if len(names) > 1:
            for name in names:
                groups[name] = frozenset(names)
    return groups


_COMPARED_FIELDS = (
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime_ns",
    "rdev",
    "link_target",
    "xattrs",
    "acl_access",
    "acl_default",
    "sha256",
)


def _entry_differences(rel: bytes, src: Entry, dst: Entry) -> list[str]:
    shown = rel or b"."
    differences = []
    for name in _COMPARED_FIELDS:
        want, got = getattr(src, name), getattr(dst, name)
        if want != got:
            differences.append(f"{shown!r}: {name} {want!r} != {got!r}")
    limit = src.allocated_bytes + max(src.allocated_bytes // 4, _SPARSE_SLACK_BYTES)
    if src.kind == "file" and dst.allocated_bytes > limit:
        differences.append(
            f"{shown!r}: allocated {dst.allocated_bytes} bytes, the source only "
            f"{src.allocated_bytes} (sparseness lost)"
        )
    return differences


def compare_trees(
    source: PathLike, target: PathLike, *, ignore: Collection[bytes] = ()
) -> list[str]:
    """Every difference between two trees, as readable lines; empty when they are identical.

    Args:
        ignore: relative paths (bytes) left out on both sides.
    """
    src, dst = snapshot(source, ignore=ignore), snapshot(target, ignore=ignore)
    differences = [f"{rel!r}: missing on the target" for rel in sorted(src.keys() - dst.keys())]
    differences += [f"{rel!r}: only on the target" for rel in sorted(dst.keys() - src.keys())]
    for rel in sorted(src.keys() & dst.keys()):
        differences += _entry_differences(rel, src[rel], dst[rel])
    src_groups, dst_groups = hard_link_groups(src), hard_link_groups(dst)
    for rel in sorted(src_groups.keys() | dst_groups.keys()):
        want, got = src_groups.get(rel, frozenset()), dst_groups.get(rel, frozenset())
        if want != got:
            differences.append(f"{rel!r}: hard links {sorted(want)} != {sorted(got)}")
    return differences


def rsync_differences(source: PathLike, target: PathLike) -> list[str]:
    """What `rsync -n -aHAXS --checksum --itemize-changes --delete` would change; empty if none."""
    argv = [
        "rsync",
        "-n",
        "-aHAXS",
        "--numeric-ids",
        "--checksum",
        "--itemize-changes",
        "--delete",
        "--no-inc-recursive",
        os.path.join(os.fsencode(source), b""),
        os.path.join(os.fsencode(target), b""),
    ]
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, capture_output=True, check=False, timeout=600, env=env)
    if done.returncode != 0:
        msg = f"rsync -n exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        raise RuntimeError(msg)
    return [line for line in done.stdout.decode(errors="backslashreplace").splitlines() if line]
