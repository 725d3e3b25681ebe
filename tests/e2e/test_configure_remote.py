"""RemoteTree against a real sshd target: file operations, links kept inside the tree, binds,
the chroot, and configure's file part giving the same bytes as through LocalTree."""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
import structlog

from smsagent.target.configure import configure
from smsagent.target.session import CompletedRemote, TargetSession
from smsagent.target.tree import TreeError
from smsagent.target.tree_local import LocalTree
from smsagent.target.tree_remote import RemoteTree
from tests.support.configure_trees import (
    RecordingRunner,
    debian_prepared,
    debian_tree,
    link,
    put,
    rhel_prepared,
    rhel_tree,
    snapshot,
)
from tests.support.target import TargetHost

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
LOG: Any = structlog.get_logger()


class RecordingRemoteTree(RemoteTree):
    """A RemoteTree whose chroot commands and binds are recorded: a fixture tree has no
    binaries to run."""

    def __init__(self, session: TargetSession, root: str) -> None:
        super().__init__(session, root)
        self.recorder = RecordingRunner()

    async def run_chroot(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        env: Optional[Mapping[str, str]] = None,
        input: Optional[bytes] = None,
    ) -> CompletedRemote:
        return await self.recorder(argv, dict(env or {}), input)

    async def bind_system_dirs(self) -> None:
        pass

    async def unbind_system_dirs(self) -> None:
        pass


@pytest.fixture
def tree_root(target_host: TargetHost) -> Path:
    root = target_host.root / "tree"
    root.mkdir()
    return root


@pytest.fixture
def remote(target_session: TargetSession, tree_root: Path) -> RemoteTree:
    return RemoteTree(target_session, str(tree_root))


class TestFiles:
    async def test_read_many_in_one_go(self, tree_root: Path, remote: RemoteTree) -> None:
        """Files with any bytes come back whole; missing ones and directories as None."""
        put(tree_root, "/etc/a", "line 1\nline 2\n")
        (tree_root / "etc/bin").write_bytes(b"\x00\xff\n-\n12\n")
        put(tree_root, "/etc/empty", "")
        (tree_root / "etc/dir").mkdir()
        files = await remote.read_files(["/etc/a", "/etc/bin", "/etc/empty", "/etc/dir", "/no"])
        assert files == {
            "/etc/a": b"line 1\nline 2\n",
            "/etc/bin": b"\x00\xff\n-\n12\n",
            "/etc/empty": b"",
            "/etc/dir": None,
            "/no": None,
        }

    async def test_write_keeps_mode_and_owner(self, tree_root: Path, remote: RemoteTree) -> None:
        """A replaced file keeps mode and owner; stdin carries the bytes; no temp file stays."""
        target = put(tree_root, "/etc/NetworkManager/system-connections/x", "old", mode=0o600)
        shutil.chown(target, 1234, 5678)
        await remote.write_file("/etc/NetworkManager/system-connections/x", b"new\x00bytes")
        assert target.read_bytes() == b"new\x00bytes"
        info = target.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, 1234, 5678)
        assert [p.name for p in target.parent.iterdir()] == ["x"]
        await remote.write_file("/etc/new/file", b"x", mode=0o640, make_parents=True)
        assert stat.S_IMODE((tree_root / "etc/new/file").stat().st_mode) == 0o640

    async def test_copy_rename_symlink_remove(self, tree_root: Path, remote: RemoteTree) -> None:
        """Copies keep mode; nothing overwrites; links are made and removed as themselves."""
        put(tree_root, "/etc/f", "f", mode=0o600)
        await remote.copy_file("/etc/f", "/etc/backup/f.bak", make_parents=True)
        assert stat.S_IMODE((tree_root / "etc/backup/f.bak").stat().st_mode) == 0o600
        with pytest.raises(TreeError, match="exists already"):
            await remote.copy_file("/etc/f", "/etc/backup/f.bak")
        await remote.rename("/etc/f", "/etc/g")
        with pytest.raises(TreeError, match="exists already"):
            await remote.rename("/etc/g", "/etc/backup/f.bak")
        await remote.symlink("/etc/systemd/system/a.service", "/dev/null", make_parents=True)
        assert str((tree_root / "etc/systemd/system/a.service").readlink()) == "/dev/null"
        entry = await remote.lstat("/etc/systemd/system/a.service")
        assert entry is not None and entry.link == "/dev/null"
        await remote.remove("/etc/systemd/system/a.service")
        assert not (tree_root / "etc/systemd/system/a.service").is_symlink()
        with pytest.raises(TreeError, match="is a directory"):
            await remote.remove("/etc/backup")

    async def test_glob_through_links(self, tree_root: Path, remote: RemoteTree) -> None:
        """Globs walk linked directories inside the tree; names with spaces survive."""
        put(tree_root, "/usr/lib/modules/6.1.0-18-amd64/modules.dep")
        put(tree_root, "/usr/lib/modules/odd name/x")
        link(tree_root, "/lib", "usr/lib")
        assert await remote.glob("/lib/modules/*") == [
            "/lib/modules/6.1.0-18-amd64",
            "/lib/modules/odd name",
        ]


class TestEscapes:
    async def test_links_resolve_inside_the_tree(
        self, tree_root: Path, remote: RemoteTree, tmp_path: Path
    ) -> None:
        """`/../../etc/passwd` and absolute links out of the tree lead into the tree."""
        put(tree_root, "/etc/passwd", "tree passwd\n")
        link(tree_root, "/var/evil", "/../../etc/passwd")
        link(tree_root, "/var/evil2", "../../../../../../../etc/passwd")
        outside = tmp_path / "host-secret"
        outside.write_text("host\n")
        link(tree_root, "/var/out", str(outside))
        files = await remote.read_files(["/var/evil", "/var/evil2", "/var/out"])
        assert files["/var/evil"] == files["/var/evil2"] == b"tree passwd\n"
        assert files["/var/out"] is None  # the tree has no such file
        await remote.write_file("/var/out", b"written", make_parents=True)
        assert outside.read_text() == "host\n"
        assert (tree_root / str(outside).lstrip("/")).read_text() == "written"

    async def test_relative_path_refused(self, remote: RemoteTree) -> None:
        """A relative path never reaches the target."""
        with pytest.raises(TreeError, match="not an absolute path"):
            await remote.read_files(["etc/passwd"])


def _copy_shell(tree_root: Path) -> None:
    """/bin/sh and the libraries it needs, so the chroot has something to run."""
    listing = subprocess.run(["ldd", "/bin/sh"], capture_output=True, text=True, check=True)
    libraries = [w for w in listing.stdout.split() if w.startswith("/")]
    for path in ["/bin/sh", *libraries]:
        where = tree_root / Path(path).resolve().relative_to("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(path).resolve(), where)
        if Path(path).resolve() != Path(path):
            alias = tree_root / path.lstrip("/")
            alias.parent.mkdir(parents=True, exist_ok=True)
            if not alias.exists():
                alias.symlink_to(Path(path).resolve())


class TestChroot:
    async def test_run_in_chroot(self, tree_root: Path, remote: RemoteTree) -> None:
        """Commands run chrooted with only the given environment; stderr and status come back."""
        _copy_shell(tree_root)
        put(tree_root, "/marker", "inside\n")
        result = await remote.run_chroot(
            [
                "/bin/sh",
                "-c",
                'read m < /marker; echo "$m $GRUB_DISABLE_OS_PROBER $SSH_CONNECTION"; '
                "echo err >&2; exit 3",
            ],
            timeout_s=30,
            env={"GRUB_DISABLE_OS_PROBER": "true"},
        )
        assert (result.returncode, result.stdout, result.stderr_tail) == (
            3,
            b"inside true \n",
            ("err",),
        )

    async def test_timeout_kills_on_the_target(
        self, target_host: TargetHost, tree_root: Path, remote: RemoteTree
    ) -> None:
        """A command past its limit ends with status 124 and leaves nothing running."""
        _copy_shell(tree_root)
        result = await remote.run_chroot(["/bin/sh", "-c", "while :; do :; done"], timeout_s=1)
        assert result.returncode == 124
        target_host.wait_quiet()

    async def test_binds_idempotent_and_undone(
        self, tree_root: Path, remote: RemoteTree, target_session: TargetSession
    ) -> None:
        """Binding twice binds once; unbinding removes every bind; the tree's dirs are made."""

        async def bound() -> list[str]:
            script = 'for d in dev proc sys run; do mountpoint -q "$1/$d" && echo "$d"; done; true'
            result = await target_session.run(["sh", "-c", script, "sh", str(tree_root)], 10)
            return result.stdout.decode().split()

        try:
            await remote.bind_system_dirs()
            await remote.bind_system_dirs()
            assert await bound() == ["dev", "proc", "sys", "run"]
            init = await remote.stat("/proc/1/cmdline")  # the helper's /proc, seen in the tree
            assert init is not None
        finally:
            await remote.unbind_system_dirs()
        assert await bound() == []
        await remote.unbind_system_dirs()  # nothing bound: no error


class TestConfigureFilePart:
    # Two configure runs of about 100 ssh round trips each, over one shared connection as the
    # CONFIGURE stage runs them (a new ssh handshake for each took some 50 s a test).
    @pytest.mark.slow
    @pytest.mark.timeout(400)
    @pytest.mark.parametrize("flavour", ["debian", "rhel-uefi"])
    async def test_same_bytes_as_local(
        self, flavour: str, tree_root: Path, target_session: TargetSession, tmp_path: Path
    ) -> None:
        """configure through RemoteTree leaves the same files (bytes, links) as through
        LocalTree, runs the same commands, and a second run changes nothing."""
        local_root = tmp_path / "local"
        local_root.mkdir()
        for root in (tree_root, local_root):
            if flavour == "debian":
                debian_tree(root)
            else:
                rhel_tree(root, uefi=True)
        prepared_for = (
            debian_prepared if flavour == "debian" else (lambda r: rhel_prepared(r, uefi=True))
        )
        local_runner = RecordingRunner()
        await configure(LocalTree(local_root, local_runner), prepared_for(local_root), LOG)
        remote = RecordingRemoteTree(target_session, str(tree_root))
        async with target_session.shared_connection():
            report = await configure(remote, prepared_for(tree_root), LOG)
        assert snapshot(tree_root) == snapshot(local_root)
        assert remote.recorder.argvs == local_runner.argvs
        assert report.changed()
        again = RecordingRemoteTree(target_session, str(tree_root))
        async with target_session.shared_connection():
            second = await configure(again, prepared_for(tree_root), LOG)
        assert second.changed() == []
        assert snapshot(tree_root) == snapshot(local_root)
