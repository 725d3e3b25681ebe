"""A task's files in the state directory: which belong to which task, and their removal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smsagent.target.session import store_private_key
from smsagent.taskfiles import block_dir, remove_other_tasks, remove_task_files

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n"


def _task_files(state_dir: Path, task_id: str) -> None:
    store_private_key(state_dir, task_id, KEY)
    (state_dir / "known_hosts" / task_id).write_text("target ssh-ed25519 AAAA\n")
    (block_dir(state_dir, task_id) / "tls").mkdir(parents=True)
    (block_dir(state_dir, task_id) / "tls" / "key.pem").write_text("secret\n")
    (block_dir(state_dir, task_id) / "0-dev_vdb1.digests").write_bytes(b"\0" * 64)


def _listing(state_dir: Path) -> set[str]:
    return {str(path.relative_to(state_dir)) for path in state_dir.rglob("*")}


def test_other_tasks_files_go_the_kept_tasks_and_the_agents_stay(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for task_id in ("old-1", "kept", "old-2"):
        _task_files(state, task_id)
    (state / "task.json").write_text("{}")
    (state / "keys" / ".key-half-written").write_text("x")

    removed, kept = remove_other_tasks(state, "kept")

    assert (removed, kept) == (["old-1", "old-2"], [])
    assert not [path for path in _listing(state) if "old-" in path], sorted(_listing(state))
    assert {
        "task.json",
        "keys/kept.key",
        "keys/.key-half-written",
        "known_hosts/kept",
        "block/kept/tls/key.pem",
        "block/kept/0-dev_vdb1.digests",
    } <= _listing(state)


def test_one_tasks_files_go(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _task_files(state, "gone")
    _task_files(state, "stays")

    assert remove_task_files(state, "gone") == []
    assert remove_task_files(state, "never-here") == []

    assert not [path for path in _listing(state) if "gone" in path]
    assert "keys/stays.key" in _listing(state)


def test_a_state_directory_without_task_files(tmp_path: Path) -> None:
    assert remove_other_tasks(tmp_path / "missing", "any") == ([], [])
    assert remove_task_files(tmp_path / "missing", "any") == []


@pytest.mark.root
@pytest.mark.timeout(60)
def test_a_tree_with_a_mount_under_it_is_left_whole(tmp_path: Path) -> None:
    """A snapshot's file system still mounted in a task's block directory (say, after a crash)
    is not reached into: the tree stays and is reported."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace")
    state = tmp_path / "state"
    _task_files(state, "old")
    _task_files(state, "kept")
    mount_point = block_dir(state, "old") / "snap-mnt"
    mount_point.mkdir()
    script = textwrap.dedent(
        f"""
        import json, subprocess
        from pathlib import Path
        from smsagent.taskfiles import remove_other_tasks
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", {str(mount_point)!r}], check=True)
        Path({str(mount_point)!r}, "on-the-snapshot").write_text("not ours to remove")
        removed, kept = remove_other_tasks(Path({str(state)!r}), "kept")
        left = Path({str(mount_point)!r}, "on-the-snapshot").exists()
        print(json.dumps([removed, [str(p) for p in kept], left]))
        """
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    removed, kept, left = json.loads(done.stdout)

    assert removed == [] and kept == [str(block_dir(state, "old"))] and left is True
    assert (block_dir(state, "old") / "0-dev_vdb1.digests").exists()
    # The rest of the old task's files (no mount under them) are gone.
    assert not (state / "keys" / "old.key").exists()
    assert not (state / "known_hosts" / "old").exists()
