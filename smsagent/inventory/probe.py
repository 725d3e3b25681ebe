"""The one seam through which the inventory reads this machine: commands, files and file systems."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional, Protocol

import structlog

log = structlog.get_logger()

# Children get a fixed PATH and the C locale, so their output parses the same on every distro and
# nothing of the agent's environment (credentials included) reaches them.
CHILD_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHILD_ENV: Final = {
    "PATH": CHILD_PATH,
    "LC_ALL": "C",
    # LVM warns about every inherited descriptor; the warnings are noise in our logs.
    "LVM_SUPPRESS_FD_WARNINGS": "1",
}
DEFAULT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class FsUsage:
    """Capacity and use of a mounted file system, from statvfs(2)."""

    total_bytes: int
    free_bytes: int
    used_bytes: int
    block_size: int
    block_count: int
    inode_count: int


class Probe(Protocol):
    """Read-only access to this machine's facts; every method returns None when a fact is absent."""

    def run(
        self,
        argv: Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ok_returncodes: Collection[int] = (0,),
    ) -> Optional[str]:
        """Stdout of a command, or None when it is missing, fails or times out."""

    def read_text(self, path: str) -> Optional[str]:
        """A text file's content, or None when it cannot be read."""

    def read_bytes(self, path: str, offset: int, length: int) -> Optional[bytes]:
        """Up to `length` bytes of a file or device from `offset`, or None when unreadable."""

    def list_dir(self, path: str) -> Optional[list[str]]:
        """Sorted entry names of a directory, or None when it cannot be listed."""

    def exists(self, path: str) -> bool:
        """Whether a path exists."""

    def which(self, program: str) -> Optional[str]:
        """The absolute path of a program on the children's PATH, or None."""

    def statvfs(self, path: str) -> Optional[FsUsage]:
        """Capacity and use of the file system mounted at `path`, or None."""


class SystemProbe:
    """The real machine: subprocesses with an argv list and a minimal environment, never a shell.

    Args:
        search_path: where programs are looked up; children see it as their PATH.
    """

    def __init__(self, search_path: str = CHILD_PATH) -> None:
        self._search_path: Final = search_path
        self._env: Final = {**CHILD_ENV, "PATH": search_path}

    def run(
        self,
        argv: Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ok_returncodes: Collection[int] = (0,),
    ) -> Optional[str]:
        """Run `argv` and return its stdout when its exit code is in `ok_returncodes`."""
        program = self.which(argv[0])
        if program is None:
            log.info("inventory_tool_missing", tool=argv[0])
            return None
        try:
            done = subprocess.run(
                [program, *argv[1:]],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("inventory_command_timeout", argv=list(argv), timeout_s=timeout_s)
            return None
        except OSError as exc:
            log.warning("inventory_command_failed", argv=list(argv), error=str(exc))
            return None
        if done.returncode not in ok_returncodes:
            stderr = done.stderr.decode("utf-8", "replace").strip()
            log.info(
                "inventory_command_failed",
                argv=list(argv),
                exit_code=done.returncode,
                stderr=stderr[-500:],
            )
            return None
        return done.stdout.decode("utf-8", "replace")

    def read_text(self, path: str) -> Optional[str]:
        """Read a text file; sysfs and procfs files are small, so the whole file is read."""
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return None

    def read_bytes(self, path: str, offset: int, length: int) -> Optional[bytes]:
        """Read raw bytes, e.g. a file system's superblock from a block device."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("inventory_device_unreadable", path=path, error=exc.strerror)
            return None
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            log.debug("inventory_device_unreadable", path=path, error=exc.strerror)
            return None
        finally:
            os.close(fd)

    def list_dir(self, path: str) -> Optional[list[str]]:
        """List a directory."""
        try:
            return sorted(entry.name for entry in Path(path).iterdir())
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        """Check a path without following it into errors."""
        return Path(path).exists() or Path(path).is_symlink()

    def which(self, program: str) -> Optional[str]:
        """Find a program the way the children would."""
        return shutil.which(program, path=self._search_path)

    def statvfs(self, path: str) -> Optional[FsUsage]:
        """statvfs(2) of a mount point, in bytes."""
        try:
            st = os.statvfs(path)
        except OSError as exc:
            log.info("inventory_statvfs_failed", path=path, error=exc.strerror)
            return None
        return FsUsage(
            total_bytes=st.f_blocks * st.f_frsize,
            free_bytes=st.f_bfree * st.f_frsize,
            used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
            block_size=st.f_frsize,
            block_count=st.f_blocks,
            inode_count=st.f_files,
        )
