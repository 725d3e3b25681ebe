"""Source and target block devices for block-level copy tests: loop devices, file systems, checks.

Every loop device and mount made here is undone by `close()` (also after a failure).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


def run(*argv: str, check: bool = True, timeout_s: float = 300) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Lab:
    """Loop devices and mounts under `workdir`, undone in reverse order by `close()`."""

    workdir: Path
    _undo: list[tuple[str, str]] = field(default_factory=list)

    def device(self, name: str, size_mib: int) -> str:
        image = self.workdir / f"{name}.img"
        with open(image, "wb") as handle:
            handle.truncate(size_mib * MIB)
        device = run("losetup", "--find", "--show", str(image)).strip()
        self._undo.append(("loop", device))
        return device

    def mount(self, device: str, name: str, *options: str) -> Path:
        where = self.workdir / name
        where.mkdir(exist_ok=True)
        run("mount", *options, device, str(where))
        self._undo.append(("mount", str(where)))
        return where

    def unmount(self, where: Path) -> None:
        run("umount", str(where))
        self._undo.remove(("mount", str(where)))

    def close(self) -> None:
        for kind, what in reversed(self._undo):
            if kind == "mount":
                run("umount", "--lazy", what, check=False)
            else:
                run("losetup", "--detach", what, check=False)
        self._undo.clear()


@contextmanager
def lab(workdir: Path) -> Iterator[Lab]:
    workdir.mkdir(parents=True, exist_ok=True)
    made = Lab(workdir)
    try:
        yield made
    finally:
        made.close()


def fill_random(device: str, size_mib: int) -> None:
    """Random bytes over the whole device: what a file system's free space holds on a server
    that has been in use."""
    run("dd", "if=/dev/urandom", f"of={device}", "bs=1M", f"count={size_mib}", "oflag=direct")


def make_ext4_with_garbage(device: str, size_mib: int) -> None:
    fill_random(device, size_mib)
    # No discard: the free space keeps its garbage, as it would on a disk in use.
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", device)


def write_files(root: Path, count: int, size: int, seed: str = "") -> list[Path]:
    """`count` files of `size` pseudo-random bytes (half compressible) under `root`/data."""
    made = []
    directory = root / "data"
    directory.mkdir(exist_ok=True)
    for number in range(count):
        block = hashlib.sha256(f"{seed}{number}".encode()).digest()
        body = (os.urandom(size // 2) + block * (size // 2 // len(block) + 1))[:size]
        path = directory / f"file-{number:05d}.bin"
        path.write_bytes(body)
        made.append(path)
    return made


def tree_digest(root: Path) -> dict[str, tuple[int, int, str]]:
    """An independent walk: each path's mode, size and sha256 (links by their target)."""
    found: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for name in sorted(filenames + dirnames):
            path = Path(dirpath, name)
            info = path.lstat()
            relative = str(path.relative_to(root))
            if path.is_symlink():
                body = os.readlink(path).encode()
            elif path.is_file():
                body = path.read_bytes()
            else:
                body = b""
            found[relative] = (info.st_mode, info.st_size, hashlib.sha256(body).hexdigest())
    return found


_FREE = re.compile(r"^\s*Free blocks: (.*)$")


def ext_used_ranges(device: str) -> list[tuple[int, int]]:
    """The used byte ranges of an ext file system by `dumpe2fs` (its block bitmaps), for an
    independent check of what the agent's GETFSMAP map said."""
    drop_cache(device)
    text = run("dumpe2fs", device)
    block_size = int(re.search(r"^Block size:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    blocks = int(re.search(r"^Block count:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    first = int(re.search(r"^First block:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    free: list[tuple[int, int]] = []
    for line in text.splitlines():
        match = _FREE.match(line)
        if not match or not match.group(1).strip():
            continue
        for part in match.group(1).split(","):
            low, _, high = part.strip().partition("-")
            free.append((int(low), int(high or low)))
    used: list[tuple[int, int]] = []
    position = first
    for low, high in sorted(free):
        if low > position:
            used.append((position * block_size, (low - position) * block_size))
        position = max(position, high + 1)
    if position < blocks:
        used.append((position * block_size, (blocks - position) * block_size))
    if first:
        used.insert(0, (0, first * block_size))
    return used


def drop_cache(device: str) -> None:
    """Forget the device's cached blocks: a file system writes file data around the device's
    own cache, so a buffered read of a mounted device can return what a block held before."""
    run("blockdev", "--flushbufs", device)


def ranges_digest(device: str, ranges: list[tuple[int, int]]) -> str:
    drop_cache(device)
    digest = hashlib.sha256()
    with open(device, "rb", buffering=0) as handle:
        for offset, length in ranges:
            handle.seek(offset)
            remaining = length
            while remaining:
                part = handle.read(min(remaining, 4 * MIB))
                if not part:
                    break
                digest.update(part)
                remaining -= len(part)
    return digest.hexdigest()
