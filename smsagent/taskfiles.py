"""A task's files in the agent's state directory, and their removal once the task is gone.

A task leaves secrets and working files on the source server: the SSH key SMS gave for its
target (`keys/<id>.key`), the target's pinned host key (`known_hosts/<id>`), and for a block task
its TLS material, digest tables and snapshot mount points (`block/<id>/`). The agent holds one
task at a time, so another task's files are leftovers: of a task deleted on the server, or of one
a new task replaced. They are removed when a DELETE names their task and when the task the agent
holds starts work (`remove_other_tasks`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Final

KEYS_DIR: Final = "keys"
KNOWN_HOSTS_DIR: Final = "known_hosts"
BLOCK_DIR: Final = "block"
_KEY_SUFFIX: Final = ".key"


def block_dir(state_dir: Path, task_id: str) -> Path:
    """The directory of a block task's working files."""
    return state_dir / BLOCK_DIR / task_id


def _files_by_task(state_dir: Path) -> dict[str, list[Path]]:
    """Every task file or directory in `state_dir`, by the task it belongs to."""
    found: dict[str, list[Path]] = {}
    places = (
        (KEYS_DIR, _KEY_SUFFIX),
        (KNOWN_HOSTS_DIR, ""),
        (BLOCK_DIR, ""),
    )
    for directory, suffix in places:
        try:
            entries = list(os.scandir(state_dir / directory))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(suffix):
                continue  # a key being written (`.key-*`) or nothing of a task
            task_id = name[: len(name) - len(suffix)] if suffix else name
            found.setdefault(task_id, []).append(Path(entry.path))
    return found


def _holds_a_mount(directory: Path) -> bool:
    """Whether a file system is mounted anywhere under `directory` (a snapshot's, say): removing
    the tree would reach into it."""
    for parent, subdirs, _files in os.walk(directory):
        if any(Path(parent, name).is_mount() for name in subdirs):
            return True
    return False


def _remove(path: Path) -> bool:
    """Remove a task's file or tree; False if it stays (a mount under it, or an error)."""
    try:
        if path.is_dir() and not path.is_symlink():
            if _holds_a_mount(path):
                return False
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def remove_task_files(state_dir: Path, task_id: str) -> list[Path]:
    """Remove `task_id`'s files; the ones that could not be removed (none, normally)."""
    paths = _files_by_task(state_dir).get(task_id, [])
    return [path for path in paths if not _remove(path)]


def remove_other_tasks(state_dir: Path, keep: str) -> tuple[list[str], list[Path]]:
    """Remove the files of every task but `keep`: the task ids removed, and the paths that
    could not be."""
    removed: list[str] = []
    kept: list[Path] = []
    for task_id, paths in sorted(_files_by_task(state_dir).items()):
        if task_id == keep:
            continue
        failed = [path for path in paths if not _remove(path)]
        kept += failed
        if not failed:
            removed.append(task_id)
    return removed, kept
