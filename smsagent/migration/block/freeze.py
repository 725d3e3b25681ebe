"""Holding the source's file systems still for the final pass, never longer than allowed.

`fsfreeze` flushes a file system and blocks its writers, so the last pass copies a state the
file system itself considers consistent. A frozen production file system stalls every writer on
it, so the hold is bounded twice: the agent thaws when the pass ends or the limit comes, and a
watchdog process started before the freeze (in a session of its own, so a `kill -9` of the agent
does not end it) thaws at the limit plus a second whatever happened to the agent.

While the file systems are frozen the agent must not write to them: its state directory may be
on one (`/var/lib/smsagent` on `/`), so the pass runs with the digest table's writes deferred and
without saving the task record until the thaw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from smsagent.childproc import minimal_env

WATCHDOG_MARGIN_S: Final = 1.0
FREEZE_TIMEOUT_S: Final = 60.0


class FreezeError(Exception):
    """A file system could not be frozen (the pass then runs live and says so)."""


@dataclass
class FrozenWindow:
    """What a freeze held and for how long (for the log and the tests)."""

    mount_points: list[str]
    limit_s: float
    started_s: float = 0.0
    held_s: float = 0.0
    thawed_by_watchdog: bool = False
    failures: list[str] = field(default_factory=list)


async def _run(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=minimal_env(),
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return -1, "timed out"
    return process.returncode or 0, stderr.decode("utf-8", "replace").strip()


def _watchdog(mount_points: Sequence[str], after_s: float) -> subprocess.Popen[bytes]:
    """A process that thaws `mount_points` after `after_s`, whatever happens to the agent."""
    thaws = "; ".join(f"fsfreeze --unfreeze {shlex.quote(m)} 2>/dev/null" for m in mount_points)
    script = f"sleep {after_s:.1f}; {thaws}; exit 0"
    return subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=minimal_env(),
        start_new_session=True,
    )


@contextlib.asynccontextmanager
async def frozen(
    mount_points: Sequence[str], limit_s: float, log: Any
) -> AsyncIterator[FrozenWindow]:
    """Freeze `mount_points` (deepest first) for the body, thawing them (in reverse) on exit.

    Raises:
        FreezeError: one could not be frozen (those frozen already are thawed first).
    """
    ordered = sorted(set(mount_points), key=lambda m: (-m.count("/"), m))
    window = FrozenWindow(list(ordered), limit_s)
    watchdog = await asyncio.to_thread(_watchdog, ordered, limit_s + WATCHDOG_MARGIN_S)
    held: list[str] = []
    try:
        window.started_s = time.monotonic()
        for mount_point in ordered:
            code, error = await _run(("fsfreeze", "--freeze", mount_point), FREEZE_TIMEOUT_S)
            if code != 0:
                raise FreezeError(f"{mount_point} cannot be frozen: {error or f'exit {code}'}")
            held.append(mount_point)
        window.started_s = time.monotonic()
        yield window
    finally:
        for mount_point in reversed(held):
            code, error = await _run(("fsfreeze", "--unfreeze", mount_point), FREEZE_TIMEOUT_S)
            if code != 0 and "Invalid argument" in error:
                window.thawed_by_watchdog = True  # thawed already: the watchdog came first
            elif code != 0:
                window.failures.append(f"{mount_point}: {error}")
        window.held_s = time.monotonic() - window.started_s
        with contextlib.suppress(ProcessLookupError):
            os.killpg(watchdog.pid, signal.SIGKILL)  # its shell and its sleep
        await asyncio.to_thread(watchdog.wait)
        if window.failures:
            log.error("source_thaw_failed", failures=window.failures)
