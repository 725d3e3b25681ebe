"""Checks of the migration target: port 22, SSH login with the task key, rsync, the target root
and its free space."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import time
from typing import Final, Optional

from smsagent.api.models import Task
from smsagent.checks.local import human_bytes
from smsagent.checks.model import Check
from smsagent.target.session import (
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    SSH_FAILED,
    TargetError,
    TargetSession,
    check_host,
)
from smsagent.waits import within

# SMS codes where one fits (spec §6.3); the agent's own otherwise.
TARGET_ROOT_NOT_WRITABLE: Final = "SMS.0210"
TARGET_NO_ADDRESS: Final = "SMSAGENT.TARGET_ADDRESS"
TARGET_NO_RSYNC: Final = "SMSAGENT.TARGET_RSYNC"
TARGET_ROOT_MISSING: Final = "SMSAGENT.TARGET_ROOT"
TARGET_SPACE_SHORT: Final = "SMSAGENT.TARGET_SPACE"

TARGET_ADDRESS: Final = "target_address"
TARGET_PORT: Final = "target_port"
TARGET_LOGIN: Final = "target_login"
RSYNC_TARGET: Final = "rsync_target"
TARGET_ROOT: Final = "target_root"
TARGET_SPACE: Final = "target_space"

# Free space below this share above the bytes to copy leaves no room for file-system overhead.
SPACE_HEADROOM: Final = 1.1
COMMAND_NOT_FOUND: Final = 127
_ROOT_MISSING_EXIT: Final = 3
_ROOT_READONLY_EXIT: Final = 4
# Exit 3: the root is no directory; 4: no file can be created in it. The probe file is removed.
_ROOT_PROBE: Final = (
    'test -d "$1" || exit 3; '
    'probe=$(mktemp "$1/.smsagent-drill.XXXXXX" 2>/dev/null) || exit 4; '
    'rm -f -- "$probe"'
)
# `df -P` (POSIX): "device blocks used available capacity% mount point", one line per file system.
_DF_LINE: Final = re.compile(
    r"^(?P<device>.*?)\s+\d+\s+\d+\s+(?P<available>\d+)\s+\d+%\s+(?P<mount>/.*)$"
)


def target_address(task: Task) -> Optional[str]:
    """The address data goes to: the task's `migration_ip`, else its target server's `ip`."""
    candidates = (task.migration_ip, task.target_server.ip if task.target_server else None)
    return next((address.strip() for address in candidates if address and address.strip()), None)


def address_check(address: Optional[str]) -> Check:
    """OK when the task names a usable target address."""
    if address is None:
        return Check.error(
            TARGET_ADDRESS, "the task names no target address (migration_ip)", TARGET_NO_ADDRESS
        )
    try:
        check_host(address)
    except ValueError as exc:
        return Check.error(TARGET_ADDRESS, str(exc), TARGET_NO_ADDRESS)
    return Check.ok(TARGET_ADDRESS, f"the target is {address}", address=address)


async def connect_once(host: str, port: int, timeout_s: float) -> float:
    """Open and close one TCP connection; the seconds the handshake took.

    Raises:
        asyncio.TimeoutError: no handshake within `timeout_s`.
        OSError: the connection was refused or the host is unreachable.
    """
    started = time.monotonic()
    _, writer = await within(asyncio.open_connection(host, port), timeout_s)
    elapsed_s = time.monotonic() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed_s


async def check_port(host: str, port: int, timeout_s: float) -> Check:
    """Whether the target accepts TCP connections on its SSH port."""
    where = f"{host} port {port}"
    try:
        elapsed_s = await connect_once(host, port, timeout_s)
    except asyncio.TimeoutError:
        reason = f"{where} did not answer within {timeout_s:g} s (check routes, security groups)"
        return Check.error(TARGET_PORT, reason, CONNECT_TIMEOUT)
    except ConnectionRefusedError:
        reason = f"{where} refused the connection (is sshd running there?)"
        return Check.error(TARGET_PORT, reason, CONNECT_REFUSED)
    except OSError as exc:
        code = (
            CONNECT_TIMEOUT if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else SSH_FAILED
        )
        return Check.error(TARGET_PORT, f"{where} cannot be reached: {exc.strerror or exc}", code)
    return Check.ok(
        TARGET_PORT, f"{where} accepts connections", connect_ms=round(elapsed_s * 1000, 1)
    )


async def check_login(session: TargetSession, timeout_s: float) -> Check:
    """Whether the target lets root in with the task key and the pinned host key."""
    try:
        await session.check(timeout_s)
    except TargetError as exc:
        return Check.error(TARGET_LOGIN, exc.message, exc.error_code)
    return Check.ok(TARGET_LOGIN, f"{session.user}@{session.host} accepted the task key")


async def check_remote_rsync(session: TargetSession, timeout_s: float) -> Check:
    """Whether rsync runs on the target (it is the receiving end of every copy)."""
    try:
        result = await session.run(["rsync", "--version"], timeout_s)
    except TargetError as exc:
        return Check.error(RSYNC_TARGET, exc.message, exc.error_code)
    if result.returncode == COMMAND_NOT_FOUND:
        reason = "rsync is not installed on the target (not found on its PATH)"
        return Check.error(RSYNC_TARGET, reason, TARGET_NO_RSYNC)
    if not result.ok:
        detail = result.stderr_tail[-1] if result.stderr_tail else f"exit {result.returncode}"
        return Check.error(RSYNC_TARGET, f"rsync on the target fails: {detail}", TARGET_NO_RSYNC)
    version = result.stdout.decode("utf-8", "replace").partition("\n")[0].strip()
    return Check.ok(RSYNC_TARGET, f"the target has {version}", version=version)


async def check_target_root(session: TargetSession, root: str, timeout_s: float) -> Check:
    """Whether the target root exists and a file can be created in it."""
    try:
        result = await session.run(["sh", "-c", _ROOT_PROBE, "sh", root], timeout_s)
    except TargetError as exc:
        return Check.error(TARGET_ROOT, exc.message, exc.error_code)
    if result.returncode == _ROOT_MISSING_EXIT:
        reason = f"the target root {root} is not a directory on the target"
        return Check.error(TARGET_ROOT, reason, TARGET_ROOT_MISSING)
    if result.returncode == _ROOT_READONLY_EXIT:
        reason = f"no file can be created in the target root {root} (read-only or full?)"
        return Check.error(TARGET_ROOT, reason, TARGET_ROOT_NOT_WRITABLE)
    if not result.ok:
        detail = result.stderr_tail[-1] if result.stderr_tail else f"exit {result.returncode}"
        return Check.error(TARGET_ROOT, f"the target root cannot be probed: {detail}")
    return Check.ok(TARGET_ROOT, f"the target root {root} exists and is writable")


def parse_df_available(output: str) -> int:
    """Available bytes from the output of `df -P -k PATH`.

    Raises:
        ValueError: the output holds no file-system line.
    """
    for line in reversed(output.splitlines()):
        match = _DF_LINE.match(line.strip())
        if match:
            return int(match["available"]) * 1024
    msg = f"df printed no file-system line: {output.strip()[:200]!r}"
    raise ValueError(msg)


def space_check(root: str, available_bytes: int, needed_bytes: int) -> Check:
    """ERROR when the target root has less room than the data to copy, WARN when barely more."""
    details = {"available_bytes": available_bytes, "needed_bytes": needed_bytes}
    text = f"{human_bytes(available_bytes)} free in {root}, {human_bytes(needed_bytes)} to copy"
    if available_bytes < needed_bytes:
        return Check.error(TARGET_SPACE, f"too little space: {text}", TARGET_SPACE_SHORT, **details)
    if available_bytes < needed_bytes * SPACE_HEADROOM:
        reason = f"little room to spare: {text} (less than 10 % headroom)"
        return Check.warn(TARGET_SPACE, reason, TARGET_SPACE_SHORT, **details)
    return Check.ok(TARGET_SPACE, text, **details)


async def check_target_space(
    session: TargetSession, root: str, needed_bytes: int, timeout_s: float
) -> Check:
    """Whether the file system of the target root can hold the data to copy."""
    try:
        result = await session.run(["df", "-P", "-k", "--", root], timeout_s)
    except TargetError as exc:
        return Check.error(TARGET_SPACE, exc.message, exc.error_code)
    output = result.stdout.decode("utf-8", "replace")
    try:
        if not result.ok:
            raise ValueError(result.stderr_tail[-1] if result.stderr_tail else "df failed")
        available_bytes = parse_df_available(output)
    except ValueError as exc:
        return Check.error(TARGET_SPACE, f"the free space on the target is unknown: {exc}")
    return space_check(root, available_bytes, needed_bytes)
