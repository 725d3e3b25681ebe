"""Small file systems mounted for one test: a state directory that is read-only, or that fills up.

    with tmpfs(tmp_path / "state", "size=2m,mode=0700") as state_dir:
        ...

Needs root; a test that cannot mount is skipped, never failed. The mount is always undone,
lazily if something (a child the test could not end) still holds it, so that the temporary
tree can be removed and no mount outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

MOUNT_TIMEOUT_S: Final = 30
FILESYSTEM_NAME: Final = "smsagent-test"


def require_root_mounts() -> None:
    """Skip the test unless it runs as root (only root mounts file systems)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")


def is_mounted(mount_point: Path) -> bool:
    """Whether something is mounted at `mount_point` in this process's mount namespace."""
    text = Path("/proc/self/mountinfo").read_text()
    return any(line.split()[4] == str(mount_point) for line in text.splitlines())


@contextlib.contextmanager
def tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted with `options` (e.g. `ro,size=1m`) at `mount_point`, created if missing.

    Yields the mount point; unmounts it after the block however the block ends.
    """
    require_root_mounts()
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, FILESYSTEM_NAME, str(mount_point)],
        capture_output=True,
        text=True,
        timeout=MOUNT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        unmount(mount_point)


def unmount(mount_point: Path) -> None:
    """Unmount `mount_point`; lazily when it is still busy, so it is gone from the tree."""
    subprocess.run(
        ["umount", str(mount_point)], capture_output=True, timeout=MOUNT_TIMEOUT_S, check=False
    )
    if is_mounted(mount_point):
        subprocess.run(
            ["umount", "--lazy", str(mount_point)],
            capture_output=True,
            timeout=MOUNT_TIMEOUT_S,
            check=True,
        )
