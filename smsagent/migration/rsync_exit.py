"""rsync exit codes as outcome classes, each with the SMS error code to report (pure)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Optional

from smsagent.migration.rsync_argv import PassKind
from smsagent.target.session import AUTH_REFUSED, HOST_KEY_CHANGED

# SMS error codes of the data copy (spec §6.3).
MIGRATE_FAILED: Final = "SMS.0805"
SYNC_FAILED: Final = "SMS.0806"
NETWORK_FAILED: Final = "SMS.0807"
RSYNC_MISSING: Final = "SMS.6517"
# The target root is not there (the target's disks are not mounted): nothing may be written.
TARGET_ROOT_MISSING: Final = "SMSAGENT.TARGET_ROOT"
# What a guarded remote rsync command (`guarded_rsync_path`) prints when it refuses to start.
TARGET_ROOT_MARKER: Final = "smsagent: the target root is not a directory on the target"


class ExitClass(str, Enum):
    """What an rsync exit means for the task."""

    ok = "ok"
    partial_warning = "partial_warning"  # 24: files vanished while copying a live system
    cancelled = "cancelled"  # our own stop
    retryable = "retryable"  # the connection or the remote side died; run the pass again
    fatal = "fatal"  # retrying cannot help until someone fixes the cause


@dataclass(frozen=True)
class ExitOutcome:
    """An exit class with the SMS error code and message to report (None/"" when ok)."""

    exit_class: ExitClass
    error_code: Optional[str]
    message: str


# rsync(1) EXIT VALUES. Codes not listed are fatal with a generic message.
_EXIT_MEANINGS: Final[Mapping[int, tuple[ExitClass, str]]] = {
    0: (ExitClass.ok, "success"),
    1: (ExitClass.fatal, "syntax or usage error"),
    2: (ExitClass.fatal, "protocol incompatibility (rsync on the target too old?)"),
    3: (ExitClass.fatal, "errors selecting input/output files or directories"),
    4: (ExitClass.fatal, "requested action not supported by rsync on one side"),
    5: (ExitClass.retryable, "error starting the client-server protocol"),
    10: (ExitClass.retryable, "error in socket I/O"),
    11: (ExitClass.fatal, "error in file I/O (is the target disk full?)"),
    12: (ExitClass.retryable, "error in the rsync protocol data stream (connection lost)"),
    13: (ExitClass.fatal, "errors with program diagnostics"),
    14: (ExitClass.retryable, "error in IPC code"),
    20: (ExitClass.cancelled, "received SIGINT, SIGTERM or SIGHUP"),
    21: (ExitClass.fatal, "some error returned by waitpid()"),
    22: (ExitClass.fatal, "error allocating core memory buffers"),
    23: (ExitClass.retryable, "partial transfer due to error"),
    24: (ExitClass.partial_warning, "some source files vanished before they could be copied"),
    25: (ExitClass.fatal, "the --max-delete limit stopped deletions"),
    30: (ExitClass.retryable, "timeout in data send/receive"),
    35: (ExitClass.retryable, "timeout waiting for the daemon connection"),
    255: (ExitClass.retryable, "the SSH connection to the target failed"),
}

# stderr messages that make a retryable code fatal: retrying cannot fix them.
_FATAL_STDERR: Final = (
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION"), HOST_KEY_CHANGED),
    (re.compile(r"Permission denied \(|Too many authentication failures"), AUTH_REFUSED),
    (re.compile(r"rsync: (command )?not found|rsync: No such file or directory"), None),
    (re.compile(re.escape(TARGET_ROOT_MARKER)), TARGET_ROOT_MISSING),
)


def guarded_rsync_path(target_root: str, rsync_path: str = "rsync") -> str:
    """A remote rsync command (`--rsync-path`) that starts rsync only when `target_root` is a
    directory on the target, and otherwise says so and exits (a fatal failure).

    rsync appends its server arguments to this text and the target's shell runs it, so it ends
    with the rsync command and the path is quoted for that shell.
    """
    message = f"{TARGET_ROOT_MARKER}: {target_root}"
    return (
        f"test -d {shlex.quote(target_root)} || "
        f"{{ printf '%s\\n' {shlex.quote(message)} >&2; exit 1; }}; exec {rsync_path}"
    )


def _pass_code(kind: PassKind) -> str:
    return SYNC_FAILED if kind is PassKind.sync else MIGRATE_FAILED


def _detail(stderr_lines: Sequence[str]) -> str:
    """The most telling stderr line: rsync's own error summary, else the last line."""
    for line in reversed(stderr_lines):
        if line.startswith("rsync error:") or line.startswith("rsync: "):
            return line
    return stderr_lines[-1] if stderr_lines else ""


def classify_exit(
    returncode: int, *, kind: PassKind = PassKind.migrate, stderr_lines: Sequence[str] = ()
) -> ExitOutcome:
    """Map rsync's exit code (and, for SSH failures, its stderr) to an outcome class.

    A negative code (killed by a signal we did not send) is retryable.
    """
    if returncode < 0:
        exit_class, meaning = ExitClass.retryable, f"killed by signal {-returncode}"
    else:
        exit_class, meaning = _EXIT_MEANINGS.get(returncode, (ExitClass.fatal, "unknown error"))
    detail = _detail(stderr_lines)
    message = f"rsync exited {returncode}: {meaning}" + (f" ({detail})" if detail else "")
    if exit_class is ExitClass.ok:
        return ExitOutcome(exit_class, None, "")
    if exit_class in (ExitClass.partial_warning, ExitClass.cancelled):
        return ExitOutcome(exit_class, None, message)
    if exit_class is ExitClass.retryable:
        text = "\n".join(stderr_lines)
        for pattern, code in _FATAL_STDERR:
            if pattern.search(text):
                return ExitOutcome(ExitClass.fatal, code or _pass_code(kind), message)
        return ExitOutcome(exit_class, NETWORK_FAILED, message)
    return ExitOutcome(exit_class, _pass_code(kind), message)
