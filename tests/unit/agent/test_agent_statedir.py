"""The state-directory verdict against real directories, mounts and file systems."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smsagent.agent.statedir import (
    STATE_DIR_UNUSABLE,
    StateDirError,
    inspect_state_dir,
    require_usable_state_dir,
)
from tests.support.mounts import require_root_mounts, tmpfs

OTHER_UID = 12345


def _needs_root() -> None:
    require_root_mounts()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """`path` with the immutable attribute (even root cannot create files in it); always
    cleared after, so the temporary tree can be removed."""
    _needs_root()
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"this file system has no immutable attribute: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    path.chmod(0o700)  # the umask may have taken bits away; exactly 0700 is the point
    return path


class TestUsable:
    def test_private_directory(self, tmp_path: Path) -> None:
        """A 0700 directory of ours that takes a write is usable with nothing to say, and the
        probe leaves nothing behind."""
        state = _private_dir(tmp_path / "state")
        verdict = inspect_state_dir(state)
        assert (verdict.problem, verdict.warnings, verdict.exists) == (None, (), True)
        assert verdict.usable and verdict.error_code == STATE_DIR_UNUSABLE
        assert list(state.iterdir()) == []

    def test_open_mode_is_a_warning(self, tmp_path: Path) -> None:
        """A mode other than 0700 is tolerated: the agent tightens it."""
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(0o755)
        verdict = inspect_state_dir(state)
        assert verdict.problem is None
        assert verdict.warnings == (
            f"state directory {state} has mode 0755; the agent sets it to 0700 when it starts",
        )
        assert verdict.document_warnings == ()

    def test_valid_documents(self, tmp_path: Path) -> None:
        """Documents that parse are not mentioned, in the directory or its outbox."""
        state = _private_dir(tmp_path / "state")
        (state / "task.json").write_text('{"schema_version": 1}')
        (state / "outbox").mkdir()
        (state / "outbox" / "000001.json").write_text("{}")
        assert inspect_state_dir(state).warnings == ()


class TestMissing:
    def test_creatable(self, tmp_path: Path) -> None:
        """A missing directory whose parent takes writes is usable and is not created."""
        state = tmp_path / "lib" / "smsagent"
        verdict = inspect_state_dir(state)
        assert verdict.problem is None and not verdict.exists
        assert verdict.warnings == (
            f"state directory {state} does not exist yet; the agent creates it (mode 0700)",
        )
        assert not (tmp_path / "lib").exists()

    def test_under_a_file(self, tmp_path: Path) -> None:
        """A file where a parent should be makes the directory impossible to create."""
        (tmp_path / "lib").write_text("")
        state = tmp_path / "lib" / "smsagent"
        problem = inspect_state_dir(state).problem
        assert problem is not None
        assert problem.startswith(
            f"state directory {state} does not exist and cannot be created: "
            f"{tmp_path / 'lib'} is not a directory;"
        )

    @pytest.mark.root
    def test_under_a_read_only_mount(self, tmp_path: Path) -> None:
        """Below a read-only mount the directory cannot be created, and the mount is named."""
        with tmpfs(tmp_path / "ro", "size=1m,ro,mode=0755") as mount_point:
            state = mount_point / "lib" / "smsagent"
            verdict = inspect_state_dir(state)
        assert verdict.problem is not None and not verdict.exists
        assert verdict.problem.startswith(
            f"state directory {state} does not exist and cannot be created: "
            f"{mount_point} is on a read-only file system;"
        )

    @pytest.mark.root
    def test_under_an_immutable_parent(self, tmp_path: Path) -> None:
        """A parent nobody may write in (immutable: not even root) makes it a problem."""
        parent = tmp_path / "lib"
        parent.mkdir()
        with immutable(parent):
            problem = inspect_state_dir(parent / "smsagent").problem
        assert problem is not None and f"no permission to write in {parent}" in problem


class TestProblems:
    def test_not_a_directory(self, tmp_path: Path) -> None:
        """A file where the directory should be is a problem."""
        state = tmp_path / "state"
        state.write_text("")
        problem = inspect_state_dir(state).problem
        assert problem is not None
        assert problem.startswith(f"state directory {state} is not a directory;")

    @pytest.mark.root
    def test_owned_by_another_user(self, tmp_path: Path) -> None:
        """A directory another uid owns is a problem: that user could change the agent's state."""
        _needs_root()
        state = _private_dir(tmp_path / "state")
        os.chown(state, OTHER_UID, OTHER_UID)
        problem = inspect_state_dir(state).problem
        assert problem == (
            f"state directory {state} is owned by uid {OTHER_UID}, not by root (uid 0) the agent "
            "runs as, so another user could change the agent's state; fix it with "
            f"chown -R root {state}"
        )

    def test_owner_compared_with_the_agents_uid(self, tmp_path: Path) -> None:
        """The owner is compared with the uid the agent runs as, when it is given."""
        state = _private_dir(tmp_path / "state")
        problem = inspect_state_dir(state, uid=OTHER_UID).problem
        assert problem is not None and f"chown -R {OTHER_UID} {state}" in problem

    @pytest.mark.root
    def test_read_only_mount(self, tmp_path: Path) -> None:
        """A read-only mount is found by writing, not from the mode bits, which allow it."""
        with tmpfs(tmp_path / "state", "size=1m,ro,mode=0700") as state:
            verdict = inspect_state_dir(state)
        assert verdict.problem is not None and verdict.exists
        assert verdict.problem.startswith(
            f"state directory {state} is read-only: Read-only file system; make it writable"
        )
        assert "\n" not in verdict.problem

    @pytest.mark.root
    def test_read_only_bind_mount_keeps_its_documents(self, tmp_path: Path) -> None:
        """A directory with state in it, bind-mounted read-only, is read-only too."""
        _needs_root()
        state = _private_dir(tmp_path / "state")
        (state / "task.json").write_text("{}")
        subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
            problem = inspect_state_dir(state).problem
        finally:
            subprocess.run(["umount", str(state)], check=True)
        assert problem is not None and "is read-only: Read-only file system" in problem
        assert sorted(p.name for p in state.iterdir()) == ["task.json"]

    @pytest.mark.root
    def test_immutable_directory(self, tmp_path: Path) -> None:
        """An immutable directory refuses even root's write: read-only, with the kernel's
        reason."""
        state = _private_dir(tmp_path / "state")
        with immutable(state):
            problem = inspect_state_dir(state).problem
        assert problem is not None
        assert problem.startswith(f"state directory {state} is read-only: Operation not permitted;")

    @pytest.mark.root
    def test_full_file_system(self, tmp_path: Path) -> None:
        """A file system with no free blocks is `full`, and the probe file is removed."""
        with tmpfs(tmp_path / "state", "size=256k,mode=0700") as state:
            filler = state / "filler"
            with filler.open("wb", buffering=0) as handle, pytest.raises(OSError) as raised:
                while True:
                    handle.write(b"\0" * 4096)
            assert raised.value.errno == errno.ENOSPC
            verdict = inspect_state_dir(state)
            left = sorted(p.name for p in state.iterdir())
        assert verdict.problem == (
            f"state directory {state} is full: No space left on device; free some space on its "
            "file system (or raise the quota)"
        )
        assert left == ["filler"]

    def test_probe_removed_when_fsync_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Any other write error is a problem with its reason, and the probe is still removed."""
        state = _private_dir(tmp_path / "state")

        def failing_fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", failing_fsync)
        problem = inspect_state_dir(state).problem
        assert problem == f"state directory {state} cannot be written: Input/output error"
        assert list(state.iterdir()) == []

    def test_outbox_not_a_directory(self, tmp_path: Path) -> None:
        """A file named outbox would stop the agent from keeping results it owes."""
        state = _private_dir(tmp_path / "state")
        (state / "outbox").write_text("")
        problem = inspect_state_dir(state).problem
        assert problem is not None and problem.startswith(f"{state / 'outbox'} is not a directory")


class TestDocuments:
    @pytest.mark.parametrize(
        ("name", "content", "reason"),
        [
            ("task.json", b'{"task_id": ', "is not valid JSON (Expecting value at line 1 column"),
            ("agent.json", b"[]", "is not a JSON object"),
            ("connection.json", b"", "is not valid JSON (Expecting value at line 1 column 1)"),
            ("outbox/000007.json", b"\xff\xfe\xfa", "is not UTF-8 text"),
            ("outbox/delivered.json", b"null", "is not a JSON object"),
        ],
    )
    def test_unparsable_is_a_warning_and_left_alone(
        self, tmp_path: Path, name: str, content: bytes, reason: str
    ) -> None:
        """A document that does not parse is named in a warning; nothing is moved or changed."""
        state = _private_dir(tmp_path / "state")
        (state / "outbox").mkdir(mode=0o700)
        document = state / name
        document.write_bytes(content)
        before = document.stat()
        verdict = inspect_state_dir(state)
        assert verdict.problem is None
        assert len(verdict.warnings) == 1 and verdict.document_warnings == verdict.warnings
        warning = verdict.warnings[0]
        assert warning.startswith(f"{document} {reason}")
        assert warning.endswith(
            "; it will be moved to corrupt/ and the agent carries on without it"
        )
        assert document.read_bytes() == content
        assert document.stat().st_mtime_ns == before.st_mtime_ns
        assert not (state / "corrupt").exists()

    def test_content_is_not_quoted(self, tmp_path: Path) -> None:
        """A warning names the position, never the document's content (it may hold keys)."""
        state = _private_dir(tmp_path / "state")
        (state / "task.json").write_text('{"key": "very-secret-value" oops}')
        (warning,) = inspect_state_dir(state).warnings
        assert "very-secret-value" not in warning and "line 1 column" in warning

    def test_mode_and_documents_together(self, tmp_path: Path) -> None:
        """Every warning is listed, the mode first."""
        state = tmp_path / "state"
        state.mkdir()
        state.chmod(0o750)
        (state / "task.json").write_text("{")
        verdict = inspect_state_dir(state)
        assert len(verdict.warnings) == 2 and "mode 0750" in verdict.warnings[0]
        assert verdict.document_warnings == verdict.warnings[1:]


class TestRequire:
    def test_returns_the_warnings(self, tmp_path: Path) -> None:
        """A usable directory gives its warnings for the log."""
        state = tmp_path / "state"
        assert require_usable_state_dir(state) == list(inspect_state_dir(state).warnings)

    def test_raises_the_problem(self, tmp_path: Path) -> None:
        """An unusable directory raises with the problem as the message, and its verdict."""
        state = tmp_path / "state"
        state.write_text("")
        with pytest.raises(StateDirError) as raised:
            require_usable_state_dir(state)
        assert str(raised.value) == inspect_state_dir(state).problem
        assert raised.value.verdict.error_code == STATE_DIR_UNUSABLE
