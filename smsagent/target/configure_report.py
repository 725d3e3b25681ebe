"""What the configure stage did to the migrated tree (files, commands) and how it fails."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Optional

# SMS's code for a failed initrd/initramfs (spec §7.8); the agent's own for everything else.
INITRD_FAILED: Final = "SMS.3102"
CONFIGURE_FAILED: Final = "SMSAGENT.CONFIGURE"
# Lines of a failed command's stderr kept in the error message.
STDERR_LINES_IN_MESSAGE: Final = 5


class ConfigureError(Exception):
    """The migrated tree could not be configured; the message names the file or command."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message


class Action(str, enum.Enum):
    EDITED = "edited"
    CREATED = "created"
    MOVED_ASIDE = "moved aside"
    REMOVED = "removed"
    UNCHANGED = "left as is"


@dataclass(frozen=True)
class FileChange:
    """One file of the tree the stage looked at.

    Attributes:
        path: the tree path.
        action: what was done.
        detail: why, or what changed, in a few words.
        backup: where the source's original is kept, if anywhere.
    """

    path: str
    action: Action
    detail: str = ""
    backup: Optional[str] = None


@dataclass(frozen=True)
class CommandRun:
    """One command run in the tree's chroot."""

    argv: tuple[str, ...]
    returncode: int
    stderr_tail: tuple[str, ...] = ()


@dataclass
class ConfigureReport:
    """Everything one configure run did, in order."""

    os_id: str = ""
    os_family: str = ""
    kernels: tuple[str, ...] = ()
    files: list[FileChange] = field(default_factory=list)
    commands: list[CommandRun] = field(default_factory=list)

    def add(
        self, path: str, action: Action, detail: str = "", backup: Optional[str] = None
    ) -> None:
        self.files.append(FileChange(path, action, detail, backup))

    def changed(self) -> list[FileChange]:
        """The files this run changed (not those it left as is)."""
        return [f for f in self.files if f.action is not Action.UNCHANGED]

    def to_json(self) -> dict[str, Any]:
        return {
            "os_id": self.os_id,
            "os_family": self.os_family,
            "kernels": list(self.kernels),
            "files": [
                {"path": f.path, "action": f.action.value, "detail": f.detail, "backup": f.backup}
                for f in self.files
            ],
            "commands": [{"argv": list(c.argv), "returncode": c.returncode} for c in self.commands],
        }


def command_failure(
    error_code: str, argv: Sequence[str], returncode: int, stderr_tail: Sequence[str]
) -> ConfigureError:
    """The error for a failed chroot command, with the end of its stderr."""
    tail = " | ".join(stderr_tail[-STDERR_LINES_IN_MESSAGE:]) or "no message"
    status = "timed out" if returncode == 124 else f"exited {returncode}"
    return ConfigureError(error_code, f"{' '.join(argv)} {status} in the target tree: {tail}")
