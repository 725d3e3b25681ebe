"""LocalTree and the tree's path resolution: links followed as in a chroot, never out of it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from smsagent.target.tree import TargetTree, TreeError, system_dirs_bound
from smsagent.target.tree_local import LocalTree
from tests.support.configure_trees import RecordingRunner, link, put


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "tree"
    path.mkdir()
    return path


@pytest.fixture
def tree(root: Path) -> LocalTree:
    return LocalTree(root, RecordingRunner())


def test_local_tree_is_a_target_tree(tree: LocalTree) -> None:
    """LocalTree satisfies the TargetTree protocol (checked by mypy on this assignment)."""
    typed: TargetTree = tree
    assert typed.root == tree.root


class TestResolve:
    async def test_absolute_link_means_inside_the_tree(self, root: Path, tree: LocalTree) -> None:
        """An absolute link `/etc/x -> /usr/y` leads to the tree's /usr/y, not the host's."""
        put(root, "/usr/y", "inside")
        link(root, "/etc/x", "/usr/y")
        assert await tree.resolve("/etc/x") == "/usr/y"
        assert (await tree.read_files(["/etc/x"]))["/etc/x"] == b"inside"

    async def test_dotdot_link_cannot_climb_out(self, root: Path, tree: LocalTree) -> None:
        """A link to `/../../etc/passwd` resolves to the tree's own /etc/passwd."""
        put(root, "/etc/passwd", "tree's passwd\n")
        link(root, "/var/evil", "/../../etc/passwd")
        link(root, "/var/evil2", "../../../../../../etc/passwd")
        assert await tree.resolve("/var/evil") == "/etc/passwd"
        files = await tree.read_files(["/var/evil", "/var/evil2", "/../../etc/passwd"])
        assert set(files.values()) == {b"tree's passwd\n"}

    async def test_write_through_escaping_link_stays_inside(
        self, root: Path, tree: LocalTree, tmp_path: Path
    ) -> None:
        """Writing through a link that points out of the tree writes inside the tree."""
        outside = tmp_path / "outside.txt"
        outside.write_text("host file\n")
        link(root, "/etc/trap", str(outside))
        await tree.write_file("/etc/trap", b"written\n", make_parents=True)
        assert outside.read_text() == "host file\n"
        assert (root / str(outside).lstrip("/")).read_text() == "written\n"

    async def test_relative_link_and_directory_links(self, root: Path, tree: LocalTree) -> None:
        """Relative links resolve from their directory; linked directories are walked through."""
        put(root, "/usr/lib/os-release", "ID=debian\n")
        link(root, "/etc/os-release", "../usr/lib/os-release")
        link(root, "/lib", "usr/lib")
        assert await tree.resolve("/etc/os-release") == "/usr/lib/os-release"
        assert await tree.resolve("/lib/os-release") == "/usr/lib/os-release"
        assert await tree.glob("/lib/*") == ["/lib/os-release"]

    async def test_lstat_does_not_follow_the_last_link(self, root: Path, tree: LocalTree) -> None:
        """lstat reports the link itself; stat what it leads to; a dangling link stats None."""
        put(root, "/usr/y", "data")
        link(root, "/etc/x", "/usr/y")
        link(root, "/etc/dangling", "/nowhere")
        entry = await tree.lstat("/etc/x")
        assert entry is not None and entry.link == "/usr/y"
        target = await tree.stat("/etc/x")
        assert target is not None and target.path == "/usr/y" and target.size == 4
        assert await tree.stat("/etc/dangling") is None
        assert await tree.lstat("/etc/dangling") is not None

    async def test_link_loop_is_refused(self, root: Path, tree: LocalTree) -> None:
        """A loop of links fails like ELOOP instead of spinning."""
        link(root, "/a", "/b")
        link(root, "/b", "/a")
        with pytest.raises(TreeError, match="more than 40 symbolic links"):
            await tree.resolve("/a/file")

    @pytest.mark.parametrize("path", ["etc/fstab", "", "/etc/\0x"])
    async def test_relative_path_is_refused(self, tree: LocalTree, path: str) -> None:
        """Only absolute tree paths are accepted."""
        with pytest.raises(TreeError, match="not an absolute path inside the tree"):
            await tree.read_files([path])


class TestFileOperations:
    async def test_write_keeps_mode_and_is_atomic(self, root: Path, tree: LocalTree) -> None:
        """Replacing a file keeps its mode; no temporary file is left behind."""
        put(root, "/etc/secret", "old\n", mode=0o600)
        await tree.write_file("/etc/secret", b"new\n")
        assert (root / "etc/secret").read_text() == "new\n"
        assert stat.S_IMODE((root / "etc/secret").stat().st_mode) == 0o600
        assert sorted(p.name for p in (root / "etc").iterdir()) == ["secret"]

    async def test_new_file_gets_the_mode_asked(self, root: Path, tree: LocalTree) -> None:
        """A new file gets the given mode and its missing parents are made."""
        await tree.write_file("/etc/new/dir/file", b"x", mode=0o600, make_parents=True)
        assert stat.S_IMODE((root / "etc/new/dir/file").stat().st_mode) == 0o600

    async def test_copy_and_rename_refuse_to_overwrite(self, root: Path, tree: LocalTree) -> None:
        """copy_file and rename never replace an existing destination."""
        put(root, "/a", "a")
        put(root, "/b", "b")
        with pytest.raises(TreeError, match="exists already"):
            await tree.copy_file("/a", "/b")
        with pytest.raises(TreeError, match="exists already"):
            await tree.rename("/a", "/b")
        await tree.rename("/a", "/c")
        assert (root / "c").read_text() == "a"

    async def test_rename_moves_the_link_itself(self, root: Path, tree: LocalTree) -> None:
        """Renaming a link moves the link, not what it points to."""
        put(root, "/usr/y", "y")
        link(root, "/etc/x", "/usr/y")
        await tree.rename("/etc/x", "/etc/x.bak")
        assert (root / "etc/x.bak").is_symlink()
        assert (root / "usr/y").read_text() == "y"

    async def test_remove_refuses_directories(self, root: Path, tree: LocalTree) -> None:
        """remove deletes files and links only; a missing path is no error."""
        (root / "dir").mkdir()
        with pytest.raises(TreeError, match="is a directory"):
            await tree.remove("/dir")
        await tree.remove("/missing")

    async def test_read_files_missing_and_directories(self, root: Path, tree: LocalTree) -> None:
        """A missing path or a directory reads as None."""
        (root / "etc").mkdir()
        assert await tree.read_files(["/etc", "/etc/none"]) == {"/etc": None, "/etc/none": None}

    async def test_glob_skips_dot_files(self, root: Path, tree: LocalTree) -> None:
        """Wildcards match in any component; hidden names only for a pattern with a dot."""
        put(root, "/etc/systemd/system/multi-user.target.wants/a.service")
        put(root, "/etc/systemd/system/sockets.target.wants/a.service")
        put(root, "/etc/systemd/system/.hidden.wants/a.service")
        found = await tree.glob("/etc/systemd/system/*.wants/a.service")
        assert found == [
            "/etc/systemd/system/multi-user.target.wants/a.service",
            "/etc/systemd/system/sockets.target.wants/a.service",
        ]
        assert await tree.glob("/nothing/*") == []


class TestChroot:
    async def test_binds_are_undone_after_an_error(self, tree: LocalTree) -> None:
        """The system directories are unbound even when the block fails."""
        with pytest.raises(RuntimeError):
            async with system_dirs_bound(tree):
                assert tree.bound
                raise RuntimeError("step failed")
        assert not tree.bound

    async def test_without_runner_commands_are_refused(self, root: Path) -> None:
        """A LocalTree without a runner never runs anything on this machine."""
        with pytest.raises(TreeError, match="no chroot runner"):
            await LocalTree(root).run_chroot(["true"], timeout_s=1)
