"""Child processes the agent starts (movers, ssh): minimal environment, bounded output, the stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Optional

from smsagent.waits import within

# The environment a mover's child gets. Nothing else is inherited: the agent's own environment
# may hold credentials, and a child's environment is readable in /proc by its owner.
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

STDERR_TAIL_LINES: Final = 50
STDERR_LINE_BYTES: Final = 1024
READ_CHUNK_BYTES: Final = 65536
# After a leader has exited, its helpers get this long at most to exit too, and are looked at
# this often. Enough for rsync's local receiver to save its partial file; a helper stuck on a
# dead network (ssh) costs a stop no more than this.
HELPERS_GRACE_S: Final = 2.0
GROUP_POLL_S: Final = 0.02


def minimal_env(path: str = DEFAULT_PATH) -> dict[str, str]:
    """The whole environment of a mover's child: `PATH`, the C locale and the user's `HOME`.

    `LC_ALL=C` keeps rsync's numbers free of locale separators, so its output parses the same
    on every server.
    """
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir or "/"
    except KeyError:
        home = "/"
    return {"PATH": path, "LC_ALL": "C", "LANG": "C", "HOME": home}


MOVER_TAG: Final = "SMSAGENT_MOVER_TASK"

# Puts itself into a cgroup, then becomes the mover: the shell writes its own pid ($$, which
# exec keeps) to `cgroup.procs`, so the mover and every child it starts (ssh) are born inside,
# before any data moves. Python 3.9 cannot start a child in a cgroup (no clone3 with
# CLONE_INTO_CGROUP), writing the pid after the start would let the first reads escape the limit,
# and a preexec_fn is not safe in a process that runs threads. The script is fixed; the path and
# the mover's argv are its arguments, never parsed by the shell.
CGROUP_TRAMPOLINE: Final = 'echo "$$" > "$1" || exit 126; shift; exec "$@"'
TRAMPOLINE_SHELL: Final = "/bin/sh"


def in_cgroup(argv: Sequence[str], cgroup_procs: Optional[Path]) -> list[str]:
    """`argv` started through `CGROUP_TRAMPOLINE` so that it runs in the cgroup whose
    `cgroup.procs` is given; `argv` as it is when None."""
    if cgroup_procs is None:
        return list(argv)
    return [TRAMPOLINE_SHELL, "-c", CGROUP_TRAMPOLINE, "smsagent-mover", str(cgroup_procs), *argv]


def mover_env(task_id: str) -> dict[str, str]:
    """`minimal_env()` plus a tag naming the task, which rsync's ssh inherits too: a restart
    after `kill -9` finds the movers the killed agent left running by it."""
    return {**minimal_env(), MOVER_TAG: task_id}


def kill_leftover_movers(task_id: str, proc_root: Path = Path("/proc")) -> list[int]:
    """SIGKILL the process groups of movers a previous run left for `task_id`; returns their
    pids. Processes are matched by the environment tag only, never by name."""
    tag = f"{MOVER_TAG}={task_id}".encode()
    killed: list[int] = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            tagged = tag in (entry / "environ").read_bytes().split(b"\0")
            if tagged:
                os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return killed


class LineTail:
    """The last lines of a byte stream, bounded in count and in line length.

    Args:
        max_lines: lines kept; older ones are dropped.
        max_line_bytes: a longer line is cut to this many bytes.
    """

    def __init__(self, max_lines: int = STDERR_TAIL_LINES, max_line_bytes: int = STDERR_LINE_BYTES):
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._max_line_bytes = max_line_bytes
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        """Add a chunk; keep its complete lines, hold a trailing partial line for the next one."""
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            self._keep(raw)
        if len(self._partial) > self._max_line_bytes:
            # A line that never ends must not grow without bound.
            self._keep(self._partial)
            self._partial = b""

    def close(self) -> None:
        """Keep the trailing partial line, if any."""
        if self._partial:
            self._keep(self._partial)
            self._partial = b""

    def lines(self) -> list[str]:
        """The kept lines, oldest first."""
        return list(self._lines)

    def _keep(self, raw: bytes) -> None:
        line = raw[: self._max_line_bytes].rstrip(b"\r").decode("utf-8", "backslashreplace")
        if line.strip():
            self._lines.append(line)


async def drain_into(stream: Optional[asyncio.StreamReader], tail: LineTail) -> None:
    """Read a child's pipe to its end into `tail`, so a full pipe never blocks the child."""
    if stream is None:
        return
    while chunk := await stream.read(READ_CHUNK_BYTES):
        tail.feed(chunk)
    tail.close()


def live_group_members(pgid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """The pids in process group `pgid` that still run. A zombie is left out: a helper whose
    parent has exited waits there for init to reap it, and has nothing left to do."""
    members: list[int] = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


async def end_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """Give the rest of an exited leader's group up to `grace_s` (at most `HELPERS_GRACE_S`)
    to exit, then SIGKILL it.

    rsync's leader signals its local helpers as it exits and does not wait for them; a local
    receiver then moves its temporary file into the partial dir. Killed at once, it would leave
    that file behind as a stray on the destination and its data lost to the resume.
    """
    deadline = time.monotonic() + min(grace_s, HELPERS_GRACE_S)
    while await asyncio.to_thread(live_group_members, proc.pid):
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(GROUP_POLL_S)
    kill_group(proc)


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's whole process group (the child leads it: `start_new_session=True`)."""
    # The group may be gone already (PermissionError: its id now names a foreign group).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def terminate_leader(proc: asyncio.subprocess.Process) -> bool:
    """SIGTERM only the group's leader; False when it has already exited."""
    if proc.returncode is not None:
        return False
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """Stop a child that leads its own process group and reap it.

    The leader gets SIGTERM first so that it can wind down (rsync then tells its remote side to
    keep the partial file); once the leader and then its helpers are gone, or after `grace_s`,
    the whole group gets SIGKILL so no helper (ssh) outlives it.
    """
    deadline = time.monotonic() + grace_s
    terminate_leader(proc)
    try:
        await within(asyncio.shield(proc.wait()), grace_s)
        await end_group(proc, deadline - time.monotonic())
    except asyncio.TimeoutError:
        pass
    finally:
        kill_group(proc)
        await proc.wait()
