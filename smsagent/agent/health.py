"""`health.json`: what the running agent says about itself, for `smsagent status` and `check`.

The agent's faults (its state directory full or read-only, a part of it that crashed) must be
visible exactly when the state directory cannot take a new file. So the file is made once, at
start-up, at a fixed size, and every later update overwrites it in place: that needs no new
blocks, and works on a full file system. It is written only when something changes, never per
poll; a reader sees a JSON object padded with spaces.

The running agent also holds an exclusive `flock` on the file, which the kernel lets go when the
process ends however it ends (even `kill -9`): so `agent_running` tells a live agent from a
`pid` left behind, without trusting a pid that may since belong to another process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Final, Optional

import structlog

log = structlog.get_logger(__name__)

HEALTH_FILE: Final = "health.json"
SIZE: Final = 4096
_FAULT_CHARS: Final = 1500
# A reader (`agent_running`) holds a shared lock for two system calls; the agent tries this
# often before it concludes that another process holds the file.
_LOCK_TRIES: Final = 50
_LOCK_RETRY_S: Final = 0.01


class HealthFile:
    """The agent's own `health.json` in the state directory.

    Args:
        state_dir: where the file lives.
        clock: wall-clock seconds (shown to people).
    """

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path: Final = state_dir / HEALTH_FILE
        self._clock = clock
        self._fd: Optional[int] = None
        self._fields: dict[str, Any] = {}

    @property
    def fault(self) -> Optional[str]:
        """The fault now reported, or None."""
        fault = self._fields.get("fault")
        return fault if isinstance(fault, str) else None

    def open(self) -> None:
        """Create the file at its full size and say this process runs.

        Raises:
            OSError: the file cannot be made (the state directory was found usable just
                before, so this is rare; the caller reports it as a start-up failure).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd, self.path)
            os.ftruncate(fd, SIZE)
            os.pwrite(fd, b" " * SIZE, 0)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        now_s = self._clock()
        self._fields = {"pid": os.getpid(), "started_at": now_s, "fault": None}
        self._write()

    def set_fault(self, fault: str) -> None:
        """Report `fault` (one line for the operator) until `clear_fault`."""
        if self._fields.get("fault") == fault:
            return
        self._fields["fault"] = fault[:_FAULT_CHARS]
        self._fields["fault_since"] = self._clock()
        self._write()

    def clear_fault(self) -> None:
        """The fault is over."""
        if self._fields.get("fault") is None:
            return
        self._fields["fault"] = None
        self._fields["fault_since"] = None
        self._write()

    def close(self) -> None:
        """Say the agent stopped, and let the file go."""
        if self._fd is None:
            return
        self._fields["pid"] = None
        self._fields["stopped_at"] = self._clock()
        self._write()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None

    def _write(self) -> None:
        if self._fd is None:
            return
        data = json.dumps({**self._fields, "updated_at": self._clock()}).encode("utf-8")
        try:
            os.pwrite(self._fd, data.ljust(SIZE)[:SIZE], 0)
        except OSError as exc:
            # In-place writes of an allocated file do not fail for space; anything else is
            # logged, and the journal still carries the fault.
            log.warning("health_write_failed", path=str(self.path), error=str(exc))


def _lock(fd: int, path: Path) -> None:
    """Hold the file's exclusive lock for as long as `fd` is open."""
    for _ in range(_LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(_LOCK_RETRY_S)
    # Another agent runs with this state directory. Starting anyway is what the agent always
    # did; `status` then names the first one only.
    log.warning(
        "health_file_locked", path=str(path), hint="another agent uses this state directory"
    )


def agent_running(state_dir: Path) -> Optional[bool]:
    """Whether an agent holds `health.json` in `state_dir` now; None when it cannot be told
    (the file cannot be opened for another reason than its absence, e.g. no permission).

    Nothing is written: the file is opened read-only and locked shared for an instant.
    """
    try:
        fd = os.open(state_dir / HEALTH_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as exc:
        return True if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) else None
    finally:
        os.close(fd)  # lets go of the shared lock, if it was taken
    return False


def read_health(state_dir: Path) -> Optional[dict[str, Any]]:
    """The agent's `health.json`, or None when there is none or it cannot be read."""
    try:
        document = json.loads((state_dir / HEALTH_FILE).read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
