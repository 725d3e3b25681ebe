"""Build a source tree that holds everything a whole-server copy must preserve.

Hard links, symlinks (dangling too), sparse files, a FIFO, device nodes, user xattrs, POSIX ACLs,
owners without names, setuid/setgid/sticky bits, empty dirs, names with spaces, newlines and invalid
UTF-8, and one large file of a chosen size. Paths are bytes so any name can be expressed.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

MiB = 1024 * 1024
BASE_MTIME_NS = 1_600_000_000_123_456_789
SPARSE_FILE_BYTES = 16 * MiB
# Owners that exist nowhere in /etc/passwd or /etc/group of the source or the target.
NAMELESS_UID = 4242
NAMELESS_GID = 4343

BytesPath = Union[bytes, str]


@dataclass
class SpecialTree:
    """What was built, by relative path (bytes)."""

    root: Path
    large_file: bytes = b"data/big.bin"
    sparse_file: bytes = b"data/sparse.img"
    hard_link_groups: list[tuple[bytes, ...]] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)

    def path(self, relative: BytesPath) -> bytes:
        """The absolute path (bytes) of a relative one."""
        rel = os.fsencode(relative)
        return os.path.join(os.fsencode(self.root), rel) if rel else os.fsencode(self.root)


def _write(root: bytes, rel: bytes, data: bytes, mode: int = 0o644) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _write_random(path: bytes, size_bytes: int) -> None:
    """Incompressible, never-repeating content, so rsync cannot match blocks by chance."""
    with open(path, "wb") as handle:
        remaining = size_bytes
        while remaining:
            chunk = min(remaining, 4 * MiB)
            handle.write(os.urandom(chunk))
            remaining -= chunk


def _write_sparse(path: bytes, size_bytes: int) -> None:
    """Mostly holes: 4 KiB at the start, 1 MiB in the middle, 4 KiB at the end."""
    with open(path, "wb") as handle:
        handle.truncate(size_bytes)
        handle.write(os.urandom(4096))
        handle.seek(size_bytes // 2)
        handle.write(os.urandom(MiB))
        handle.seek(size_bytes - 4096)
        handle.write(os.urandom(4096))


def _basic_files(tree: SpecialTree, root: bytes, large_file_bytes: int) -> None:
    _write(root, b"etc/config.txt", b"key = value\n")
    _write(root, b"etc/motd", b"")
    _write(root, b"home/user one/notes.txt", b"notes with a space in the dir name\n")
    _write(root, b"srv/many/small-000", b"x" * 100)
    for index in range(1, 50):
        _write(root, b"srv/many/small-%03d" % index, os.urandom(index * 97))
    os.makedirs(os.path.join(root, b"data"), exist_ok=True)
    _write_random(os.path.join(root, tree.large_file), large_file_bytes)
    _write_sparse(os.path.join(root, tree.sparse_file), SPARSE_FILE_BYTES)


def _hard_links(tree: SpecialTree, root: bytes) -> None:
    _write(root, b"links/hard_a", b"three names, one inode\n")
    os.makedirs(os.path.join(root, b"links/sub"), exist_ok=True)
    os.makedirs(os.path.join(root, b"other"), exist_ok=True)
    os.link(os.path.join(root, b"links/hard_a"), os.path.join(root, b"links/sub/hard_b"))
    os.link(os.path.join(root, b"links/hard_a"), os.path.join(root, b"other/hard c"))
    _write(root, b"links/pair_1", os.urandom(3 * MiB), mode=0o640)
    os.link(os.path.join(root, b"links/pair_1"), os.path.join(root, b"links/pair_2"))
    os.lchown(os.path.join(root, b"links/pair_1"), NAMELESS_UID, NAMELESS_GID)
    tree.hard_link_groups += [
        (b"links/hard_a", b"links/sub/hard_b", b"other/hard c"),
        (b"links/pair_1", b"links/pair_2"),
    ]


def _symlinks(root: bytes) -> None:
    links = os.path.join(root, b"links")
    os.symlink(b"../etc/config.txt", os.path.join(links, b"relative"))
    os.symlink(b"/etc/hostname", os.path.join(links, b"absolute"))
    os.symlink(b"does/not/exist", os.path.join(links, b"dangling"))
    os.symlink(b"../etc", os.path.join(links, b"to_dir"))
    os.symlink(b"x" * 1000, os.path.join(links, b"long_target"))
    owned = os.path.join(links, b"owned_by_4242")
    os.symlink(b"hard_a", owned)
    os.lchown(owned, NAMELESS_UID, NAMELESS_GID)


def _specials(root: bytes) -> None:
    dev = os.path.join(root, b"dev")
    os.makedirs(dev, exist_ok=True)
    os.mkfifo(os.path.join(dev, b"fifo"), 0o620)
    os.mknod(os.path.join(dev, b"null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(os.path.join(dev, b"loop200"), 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(os.path.join(dev, b"loop200"), 0, 6)


def _xattrs_and_acls(root: bytes) -> None:
    _write(root, b"attrs/file", b"has xattrs\n")
    path = os.path.join(root, b"attrs/file")
    os.setxattr(path, b"user.comment", b"hello")
    os.setxattr(path, b"user.binary", b"\x00\x01\xff\xfe")
    os.setxattr(path, b"user.large", os.urandom(3000))
    os.setxattr(os.path.join(root, b"attrs"), b"user.on_dir", b"dir value")
    _write(root, b"acl/file", b"has an ACL\n", mode=0o640)
    os.makedirs(os.path.join(root, b"acl/inherits"), exist_ok=True)
    setfacl = ["setfacl", "-m", f"u:{NAMELESS_UID}:rw-,g:{NAMELESS_GID}:r--,u:1:r--"]
    subprocess.run([*setfacl, os.path.join(root, b"acl/file")], check=True)
    default_acl = f"u:{NAMELESS_UID}:rwx,g::r-x,o::---"
    inherits = os.path.join(root, b"acl/inherits")
    subprocess.run(["setfacl", "-d", "-m", default_acl, inherits], check=True)
    # Created after the default ACL, so it inherits an access ACL from it.
    _write(root, b"acl/inherits/child", b"inherited ACL\n")


def _owners_and_modes(root: bytes) -> None:
    owners = [
        (b"owners/nobody", 65534, 65534),
        (b"owners/u4242", NAMELESS_UID, NAMELESS_GID),
        (b"owners/daemon", 1, 1),
        (b"owners/root", 0, 0),
        (b"owners/mixed", 0, NAMELESS_GID),
    ]
    for rel, uid, gid in owners:
        _write(root, rel, rel + b"\n")
        os.chown(os.path.join(root, rel), uid, gid)
    os.makedirs(os.path.join(root, b"owners/dir4242"), exist_ok=True)
    os.chown(os.path.join(root, b"owners/dir4242"), NAMELESS_UID, NAMELESS_UID)
    os.chmod(os.path.join(root, b"owners/dir4242"), 0o750)
    for rel, mode in [
        (b"modes/setuid", 0o4755),
        (b"modes/setgid", 0o2711),
        (b"modes/no_access", 0o000),
        (b"modes/group_write", 0o664),
    ]:
        _write(root, rel, b"#!/bin/sh\n", mode=mode)
    os.makedirs(os.path.join(root, b"modes/sticky"), exist_ok=True)
    os.chmod(os.path.join(root, b"modes/sticky"), 0o1777)
    _write(root, b"modes/read_only_dir/inside", b"in a 0555 dir\n")
    os.chmod(os.path.join(root, b"modes/read_only_dir"), 0o555)
    os.makedirs(os.path.join(root, b"modes/private"), mode=0o700, exist_ok=True)
    os.chmod(os.path.join(root, b"modes/private"), 0o700)


def _names(root: bytes) -> None:
    names = [
        b"names/with space",
        b"names/new\nline",
        b"names/bad\xff\xfeutf8",
        b"names/-leading-dash",
        b"names/\xc3\xa9t\xc3\xa9 nfc",
        b"names/e\xcc\x81te\xcc\x81 nfd",
        b"names/" + b"L" * 255,
        b"names/*star?[glob]",
        b"names/back\\slash",
        b"names/.hidden",
        b"names/dir with\nnewline/inside",
        b"names/tab\tand\rcr",
    ]
    for rel in names:
        _write(root, rel, rel + b"\n")
    os.makedirs(os.path.join(root, b"empty/nested/deeper"), exist_ok=True)
    os.makedirs(os.path.join(root, b"empty too"), exist_ok=True)


def _set_times(root: bytes) -> None:
    """Distinct nanosecond mtimes everywhere; directories last and deepest first."""
    directories: list[bytes] = []
    offset = 0
    for dirpath, dirnames, filenames in os.walk(root):
        directories.append(dirpath)
        for name in sorted(filenames) + sorted(d for d in dirnames if _is_link(dirpath, d)):
            offset += 1_000_003_001
            stamp = BASE_MTIME_NS + offset
            os.utime(os.path.join(dirpath, name), ns=(stamp, stamp), follow_symlinks=False)
    for dirpath in sorted(directories, key=lambda p: p.count(b"/"), reverse=True):
        offset += 999_999_937
        stamp = BASE_MTIME_NS + offset
        os.utime(dirpath, ns=(stamp, stamp))


def _is_link(dirpath: bytes, name: bytes) -> bool:
    return os.path.islink(os.path.join(dirpath, name))


def build_special_tree(root: Path, *, large_file_bytes: int = 20 * MiB) -> SpecialTree:
    """Create the tree under `root` (which must not exist yet or be empty) and describe it.

    Args:
        root: the tree's top directory (a server's `/` in miniature).
        large_file_bytes: size of `data/big.bin`, random content.
    """
    root.mkdir(parents=True, exist_ok=True)
    tree = SpecialTree(root=root)
    broot = os.fsencode(root)
    _basic_files(tree, broot, large_file_bytes)
    _hard_links(tree, broot)
    _symlinks(broot)
    _specials(broot)
    _xattrs_and_acls(broot)
    _owners_and_modes(broot)
    _names(broot)
    _set_times(broot)
    os.chmod(broot, 0o755)
    tree.files = sorted(
        os.path.relpath(os.path.join(d, f), broot) for d, _, files in os.walk(broot) for f in files
    )
    return tree
