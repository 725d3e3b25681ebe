"""Commands run outside the agent's sandbox: as transient units of the service manager.

Under its unit the agent may not write /etc or /run and opens block devices read-only
(`ProtectSystem=strict`, `DevicePolicy=closed`): right for what the agent does itself, but LVM
writes its metadata, backups and locks there and needs /dev/mapper/control. Such a command runs
as a transient oneshot service (`systemd-run`), which the sandbox does not cover, and outlives
the agent should the agent be killed. Its output goes to files in the agent's temporary
directory. `systemd-run --wait --pipe` would be simpler, but it needs a D-Bus daemon, which a
minimal server may lack; waiting for a oneshot unit's start job does not.

Outside a unit (the agent in the foreground) a command runs as the agent's child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

from smsagent.childproc import minimal_env

UNIT_PREFIX: Final = "smsagent-"
# systemctl's own calls (status, stop, reset-failed) are local and quick.
SYSTEMCTL_TIMEOUT_S: Final = 30.0
# The unit's start timeout is the command's; the client gets a little more, to hear of it.
CLIENT_GRACE_S: Final = 15.0


class OutsideError(Exception):
    """The command could not be run, or did not end in time."""


@dataclass(frozen=True)
class Completed:
    """How a command ended, and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def under_systemd() -> bool:
    """Whether the agent runs as a unit of the service manager (which sets INVOCATION_ID)."""
    return bool(os.environ.get("INVOCATION_ID")) and shutil.which("systemd-run") is not None


@dataclass(frozen=True)
class Detached:
    """What `start_detached` started: a transient unit, or a child process."""

    unit: Optional[str]
    process: Optional[subprocess.Popen[bytes]]


async def run(
    argv: Sequence[str],
    timeout_s: float,
    purpose: str,
    env: Optional[Mapping[str, str]] = None,
) -> Completed:
    """Run `argv` to its end: outside the sandbox under systemd, else as a child.

    `purpose` names the transient unit (`smsagent-<purpose>-<random>`); `env` is added to
    `minimal_env()`.

    Raises:
        OutsideError: it cannot be started, or did not end within `timeout_s`.
    """
    environment = {**minimal_env(), **(env or {})}
    if not under_systemd():
        return await _child(argv, timeout_s, environment)
    unit = f"{UNIT_PREFIX}{purpose}-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix=f"{purpose}-") as directory:
        out, err = Path(directory, "stdout"), Path(directory, "stderr")
        client = [
            "systemd-run", "--quiet", f"--unit={unit}", "--service-type=oneshot",
            f"--property=TimeoutStartSec={max(1, round(timeout_s))}s",
            f"--property=StandardOutput=file:{out}", f"--property=StandardError=file:{err}",
            *(f"--setenv={name}={value}" for name, value in environment.items()),
            "--", *argv,
        ]  # fmt: skip
        try:
            started = await _child(client, timeout_s + CLIENT_GRACE_S, minimal_env())
        except OutsideError:
            await _systemctl("stop", unit)
            await _systemctl("reset-failed", unit)
            raise
        stdout, stderr = _text(out), _text(err)
    if started.returncode == 0:
        return Completed(0, stdout, stderr)
    # A failed oneshot stays loaded, with its exit status, until reset-failed.
    state = await _systemctl("show", "--property=LoadState,Result,ExecMainStatus", unit)
    await _systemctl("reset-failed", unit)
    fields = dict(line.split("=", 1) for line in state.stdout.splitlines() if "=" in line)
    if fields.get("LoadState") != "loaded":
        why = started.stderr.strip() or f"systemd-run exited {started.returncode}"
        raise OutsideError(f"{argv[0]} cannot be started as {unit}: {why}")
    if fields.get("Result") == "timeout":
        raise OutsideError(f"{argv[0]} did not end in {timeout_s:.0f} s")
    status = int(fields.get("ExecMainStatus") or 0)
    return Completed(status or started.returncode, stdout, stderr)


def start_detached(argv: Sequence[str], purpose: str) -> Detached:
    """Start `argv` so that it outlives the agent however the agent ends: under systemd as a
    transient service of its own, else as a child in a session of its own (so that a Ctrl-C
    at the terminal does not reach it). `stop_detached` ends it.

    Raises:
        OutsideError: it cannot be started.
    """
    environment = minimal_env()
    if not under_systemd():
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
            )
        except OSError as exc:
            raise OutsideError(f"{argv[0]} cannot be run: {exc.strerror or exc}") from exc
        return Detached(None, process)
    unit = f"{UNIT_PREFIX}{purpose}-{secrets.token_hex(4)}"
    client = [
        "systemd-run", "--quiet", "--collect", f"--unit={unit}",
        *(f"--setenv={name}={value}" for name, value in environment.items()),
        "--", *argv,
    ]  # fmt: skip
    done = subprocess.run(
        client, capture_output=True, text=True, env=environment, check=False,
        timeout=SYSTEMCTL_TIMEOUT_S,
    )  # fmt: skip
    if done.returncode != 0:
        why = done.stderr.strip() or f"systemd-run exited {done.returncode}"
        raise OutsideError(f"{argv[0]} cannot be started as {unit}: {why}")
    return Detached(unit, None)


async def stop_detached(detached: Detached) -> None:
    """End what `start_detached` started (nothing happens if it has ended)."""
    if detached.unit is not None:
        await _systemctl("stop", detached.unit)
    if detached.process is not None:
        if detached.process.poll() is None:
            detached.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(detached.process.wait, SYSTEMCTL_TIMEOUT_S)


async def _child(argv: Sequence[str], timeout_s: float, env: Mapping[str, str]) -> Completed:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
        )
    except OSError as exc:
        raise OutsideError(f"{argv[0]} cannot be run: {exc.strerror or exc}") from exc
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise OutsideError(f"{argv[0]} did not end in {timeout_s:.0f} s") from None
    assert process.returncode is not None
    return Completed(
        process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    )


async def _systemctl(*args: str) -> Completed:
    try:
        return await _child(["systemctl", *args], SYSTEMCTL_TIMEOUT_S, minimal_env())
    except OutsideError as exc:
        return Completed(1, "", str(exc))


def _text(path: Path) -> str:
    try:
        return path.read_text("utf-8", "replace")
    except OSError:
        return ""
