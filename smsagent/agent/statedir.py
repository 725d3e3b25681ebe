"""Whether the state directory can hold the agent's state: one verdict for `run` and `check`.

`smsagent run` refuses to start on a problem (before it registers, so SMS never sees an agent
that cannot keep its state), and `smsagent check` shows the same sentence as its ERROR. The
verdict comes from the directory as it is: its owner, a real write (a read-only mount or a full
file system is only found by writing), its mode, and whether the documents in it parse. Nothing
in the directory is changed, except a probe file that is always removed again.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

from smsagent.agent.store import AGENT, CONNECTION, DIR_MODE, TASK, TEMP_SUFFIX, Store

STATE_DIR_UNUSABLE: Final = "SMSAGENT.STATE_DIR"
SETTING: Final = "SMSAGENT_STATE_DIR"
# Enough that a file system has to find real free blocks for it (a few bytes fit in an inode
# or a block already allocated); random, so a compressing file system cannot shrink it.
PROBE_BYTES: Final = 64 * 1024
# Starts with "." and ends with the temporary suffix: if the probe is ever left behind (the
# process killed mid-probe), `Store.open` removes it like any interrupted write.
PROBE_PREFIX: Final = ".write-probe."

_READ_ONLY: Final = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class StateDirVerdict:
    """What the agent would find in its state directory.

    Attributes:
        path: the directory inspected.
        problem: one sentence for the operator (the path, what is wrong, how to fix it), or
            None when the agent can use the directory.
        warnings: what the agent fixes or tolerates when it starts, one sentence each.
        document_warnings: the part of `warnings` about documents that do not parse.
        exists: whether the directory exists now.
        error_code: the code `check` shows with the problem.
    """

    path: Path
    problem: Optional[str] = None
    warnings: tuple[str, ...] = ()
    document_warnings: tuple[str, ...] = ()
    exists: bool = True
    error_code: str = STATE_DIR_UNUSABLE

    @property
    def usable(self) -> bool:
        """Whether the agent can keep its state here."""
        return self.problem is None


class StateDirError(Exception):
    """The state directory cannot hold the agent's state; the message says why and the fix."""

    def __init__(self, verdict: StateDirVerdict) -> None:
        super().__init__(verdict.problem)
        self.verdict: Final = verdict


def inspect_state_dir(path: Path, *, uid: Optional[int] = None) -> StateDirVerdict:
    """Decide whether the agent, running as `uid`, can keep its state in `path`.

    In order: a missing directory must be creatable; an existing one must be a directory, owned
    by `uid`, and take a real write; then a mode other than 0700 and documents that do not parse
    as JSON are warnings (the agent tightens the mode and quarantines those documents).

    Args:
        path: the state directory (the `state_dir` setting).
        uid: the user the agent runs as (default: this process's effective uid). The write
            probe is always made as this process.
    """
    agent_uid = os.geteuid() if uid is None else uid
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return _missing(path)
    except OSError as exc:
        return _unusable(path, f"state directory {path} cannot be inspected: {_why(exc)}")
    if not stat.S_ISDIR(found.st_mode):
        return _unusable(
            path,
            f"state directory {path} is not a directory; move it away or set {SETTING} "
            "to a directory",
        )
    if found.st_uid != agent_uid:
        return _unusable(
            path,
            f"state directory {path} is owned by {_who(found.st_uid)}, not by "
            f"{_who(agent_uid)} the agent runs as, so another user could change the agent's "
            f"state; fix it with chown -R {_name(agent_uid)} {path}",
        )
    failure = write_probe(path)
    if failure is not None:
        return _unusable(path, _write_problem(path, failure))
    store = Store(path)
    outbox = store.outbox_dir
    if outbox.exists() and not outbox.is_dir():
        return _unusable(
            path,
            f"{outbox} is not a directory, so the agent cannot keep the results it owes SMS; "
            "move it away",
        )
    warnings: list[str] = []
    bits = stat.S_IMODE(found.st_mode)
    if bits != DIR_MODE:
        warnings.append(
            f"state directory {path} has mode {bits:04o}; the agent sets it to "
            f"{DIR_MODE:04o} when it starts"
        )
    documents = tuple(_document_warnings(store))
    return StateDirVerdict(path, warnings=(*warnings, *documents), document_warnings=documents)


def require_usable_state_dir(path: Path) -> list[str]:
    """The warnings about `path` for the agent to log; raises `StateDirError` on a problem."""
    verdict = inspect_state_dir(path)
    if verdict.problem is not None:
        raise StateDirError(verdict)
    return list(verdict.warnings)


def _unusable(path: Path, problem: str) -> StateDirVerdict:
    return StateDirVerdict(path, problem=problem)


def _missing(path: Path) -> StateDirVerdict:
    cannot = f"state directory {path} does not exist and cannot be created"
    reason: Optional[str] = None
    try:
        parent, parent_stat = _nearest_existing(path)
        if not stat.S_ISDIR(parent_stat.st_mode):
            reason = f"{parent} is not a directory"
        elif os.statvfs(parent).f_flag & os.ST_RDONLY:
            reason = f"{parent} is on a read-only file system"
        elif not os.access(parent, os.W_OK | os.X_OK):
            reason = f"no permission to write in {parent}"
    except OSError as exc:
        reason = _why(exc)
    if reason is not None:
        problem = f"{cannot}: {reason}; create it (mode 0700) or set {SETTING} to a writable place"
        return StateDirVerdict(path, problem=problem, exists=False)
    created = f"state directory {path} does not exist yet; the agent creates it (mode 0700)"
    return StateDirVerdict(path, warnings=(created,), exists=False)


def _nearest_existing(path: Path) -> tuple[Path, os.stat_result]:
    """The closest ancestor of `path` that exists (possibly a file), and its stat."""
    for ancestor in path.absolute().parents:
        try:
            return ancestor, ancestor.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
    raise FileNotFoundError(errno.ENOENT, "no parent directory exists")  # "/" always does


def write_probe(directory: Path) -> Optional[OSError]:
    """Create, fill, fsync and remove a file in `directory`; the error, if any step failed.

    The ledger runs it too, to learn when a state directory that refused writes takes them
    again."""
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=PROBE_PREFIX, suffix=TEMP_SUFFIX)
    except OSError as exc:
        return exc
    failure: Optional[OSError] = None
    try:
        try:
            block = memoryview(os.urandom(PROBE_BYTES))
            while block:
                block = block[os.write(fd, block) :]
            # A file system that allocates lazily reports a full disk only here.
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        failure = exc
    finally:
        try:
            Path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            failure = failure or exc
    return failure


def _write_problem(path: Path, failure: OSError) -> str:
    if failure.errno in _READ_ONLY:
        return (
            f"state directory {path} is read-only: {_why(failure)}; make it writable for the "
            f"agent (remount it read-write, or fix its owner, mode or attributes) or set "
            f"{SETTING} to a writable directory"
        )
    if failure.errno in _FULL:
        return (
            f"state directory {path} is full: {_why(failure)}; free some space on its file "
            "system (or raise the quota)"
        )
    return f"state directory {path} cannot be written: {_why(failure)}"


def _document_warnings(store: Store) -> list[str]:
    """One warning per document that `Store` or `Outbox` would quarantine as unreadable."""
    documents = [store.path(AGENT), store.path(TASK), store.path(CONNECTION)]
    if store.outbox_dir.is_dir():
        documents += sorted(store.outbox_dir.glob("*.json"))
    warnings = []
    for document in documents:
        reason = _unparsable(document)
        if reason is not None:
            warnings.append(
                f"{document} {reason}; it will be moved to corrupt/ and the agent carries on "
                "without it"
            )
    return warnings


def _unparsable(document: Path) -> Optional[str]:
    """Why `document` is not a JSON object, or None when it is one (or is not there)."""
    try:
        data = document.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({_why(exc)})"
    try:
        value = json.loads(data)
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    except json.JSONDecodeError as exc:
        # The decoder's message names a position only, never the content.
        return f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except RecursionError:
        return "is not valid JSON (nested too deeply)"
    if not isinstance(value, dict):
        return "is not a JSON object"
    return None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _who(uid: int) -> str:
    name = _name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"
