"""SystemProbe against the real machine: commands, files, devices and file systems."""

from __future__ import annotations

import time
from pathlib import Path

from smsagent.inventory.probe import SystemProbe


class TestRun:
    def test_stdout_of_a_successful_command(self) -> None:
        """A command that exits 0 gives its standard output."""
        assert SystemProbe().run(["echo", "hello"]) == "hello\n"

    def test_failure_and_accepted_exit_codes(self) -> None:
        """A non-zero exit is None unless the caller accepts that code."""
        probe = SystemProbe()
        assert probe.run(["false"]) is None
        assert probe.run(["false"], ok_returncodes=(0, 1)) == ""

    def test_missing_program_is_none(self) -> None:
        """A program that is not installed gives None, not an exception."""
        assert SystemProbe().run(["smsinvtest-no-such-tool"]) is None

    def test_timeout_kills_and_gives_none(self) -> None:
        """A hanging command is stopped at the timeout."""
        started = time.monotonic()
        assert SystemProbe().run(["sleep", "30"], timeout_s=0.3) is None
        assert time.monotonic() - started < 5

    def test_children_get_a_minimal_environment_and_no_shell(self) -> None:
        """Only PATH, LC_ALL and the LVM switch reach a child; `;` is an argument, not syntax."""
        env = SystemProbe().run(["env"])
        assert env is not None
        assert {line.split("=", 1)[0] for line in env.splitlines()} == {
            "PATH",
            "LC_ALL",
            "LVM_SUPPRESS_FD_WARNINGS",
        }
        assert SystemProbe().run(["echo", "a;", "touch", "/tmp/x"]) == "a; touch /tmp/x\n"

    def test_search_path_limits_the_programs(self, tmp_path: Path) -> None:
        """With a search path holding no programs, nothing can be run."""
        probe = SystemProbe(search_path=str(tmp_path))
        assert probe.which("echo") is None and probe.run(["echo", "x"]) is None


class TestFiles:
    def test_read_text_and_missing_files(self, tmp_path: Path) -> None:
        """A readable file gives its text; a missing one None."""
        (tmp_path / "f").write_text("abc")
        probe = SystemProbe()
        assert probe.read_text(str(tmp_path / "f")) == "abc"
        assert probe.read_text(str(tmp_path / "missing")) is None

    def test_read_bytes_at_an_offset(self, tmp_path: Path) -> None:
        """Bytes are read from the offset, up to the length."""
        (tmp_path / "f").write_bytes(b"0123456789")
        probe = SystemProbe()
        assert probe.read_bytes(str(tmp_path / "f"), 3, 4) == b"3456"
        assert probe.read_bytes(str(tmp_path / "missing"), 0, 4) is None

    def test_list_dir_and_exists(self, tmp_path: Path) -> None:
        """Entries are sorted; a dangling symlink still exists."""
        (tmp_path / "b").touch()
        (tmp_path / "a").symlink_to(tmp_path / "nowhere")
        probe = SystemProbe()
        assert probe.list_dir(str(tmp_path)) == ["a", "b"]
        assert probe.list_dir(str(tmp_path / "missing")) is None
        assert probe.exists(str(tmp_path / "a")) and not probe.exists(str(tmp_path / "c"))

    def test_statvfs_of_the_root(self) -> None:
        """Used plus free bytes make the total; block counts agree with the size."""
        usage = SystemProbe().statvfs("/")
        assert usage is not None
        assert usage.used_bytes + usage.free_bytes == usage.total_bytes
        assert usage.block_count * usage.block_size == usage.total_bytes
        assert SystemProbe().statvfs("/smsinvtest-missing") is None
