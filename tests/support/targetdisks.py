"""Blank loop disks that stand for a target server's disks, and what a test reads back from them.

Every image carries the `smstgtdisk<pid>x` prefix, so `sweep_stale()` can tell a killed run's
leftovers from a live run's; `TargetDisks.close()` unmounts whatever is still mounted from them
(deepest first), removes LVM groups made on them and detaches them, even after a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PREFIX = "smstgtdisk"
MIB = 1024 * 1024
_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "LVM_SUPPRESS_FD_WARNINGS": "1",
}


def run(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=_ENV, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class TargetDisks:
    """Loop disks attached with partition scanning; `paths` are the devices (`/dev/loopN`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
        self.paths: list[str] = []
        self.images: list[Path] = []

    def add(self, size_mib: int) -> str:
        image = self.workdir / f"{self.tag}-{len(self.images)}.img"
        with open(image, "wb") as handle:
            handle.truncate(size_mib * MIB)
        self.images.append(image)
        path = run("losetup", "--find", "--show", "--partscan", str(image)).strip()
        self.paths.append(path)
        return path

    def close(self) -> None:
        for path in self.paths:
            release_disk(path)
        for image in self.images:
            image.unlink(missing_ok=True)


def release_disk(path: str) -> None:
    """Unmount everything from `path`, drop its LVM groups, detach it."""
    nodes = _tree(path)
    for mount_point in sorted(
        (m for n in nodes for m in n.get("mountpoints") or [] if m), key=lambda m: -m.count("/")
    ):
        if mount_point == "[SWAP]":
            continue
        run("umount", mount_point, check=False)
        run("umount", "--lazy", mount_point, check=False)
    for group in _groups_on(path):
        run("vgremove", "--force", "--force", "--yes", group, check=False)
    run("losetup", "--detach", path, check=False)


def _tree(path: str) -> list[dict[str, Any]]:
    text = run("lsblk", "--json", "--paths", "--output", "NAME,MOUNTPOINTS", path, check=False)
    if not text.strip():
        return []
    found: list[dict[str, Any]] = []
    pending = list(json.loads(text).get("blockdevices", []))
    while pending:
        node = pending.pop()
        found.append(node)
        pending.extend(node.get("children") or [])
    return found


def _groups_on(path: str) -> set[str]:
    text = run("pvs", "--reportformat", "json", "-o", "pv_name,vg_name", check=False)
    if not text.strip():
        return set()
    rows = json.loads(text)["report"][0].get("pv", [])
    return {r["vg_name"] for r in rows if r["pv_name"].startswith(path) and r["vg_name"]}


@contextmanager
def target_disks(workdir: Path) -> Iterator[TargetDisks]:
    disks = TargetDisks(workdir)
    try:
        yield disks
    finally:
        disks.close()


def edges_digest(path: str, span: int = MIB) -> str:
    """A digest of a disk's first and last MiB: what a refused prepare must leave as it was."""
    size = int(run("blockdev", "--getsize64", path).strip())
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(span))
        handle.seek(max(0, size - span))
        digest.update(handle.read(span))
    return digest.hexdigest()


def partition_table(path: str) -> dict[str, Any]:
    """`sfdisk --json`: the label and each partition's start, size and type."""
    table: dict[str, Any] = json.loads(run("sfdisk", "--json", path))["partitiontable"]
    return table


def probe(device: str) -> dict[str, str]:
    """`blkid -p` of a device: TYPE, UUID, ..."""
    text = run("blkid", "--probe", "--output", "export", device, check=False)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def sweep_stale() -> None:
    """Detach loop disks a killed run left behind (its process is gone)."""
    listing = json.loads(run("losetup", "--json", "--list", check=False) or "{}")
    for loop in listing.get("loopdevices", []):
        match = re.search(PREFIX + r"(\d+)x", loop.get("back-file") or "")
        if match and not Path(f"/proc/{match.group(1)}").exists():
            release_disk(loop["name"])
