"""TargetSession: SSH to the migration target with the task key and a host key pinned per task."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Optional

from smsagent.childproc import (
    LineTail,
    drain_into,
    kill_group,
    minimal_env,
    mover_env,
    stop_process,
)
from smsagent.taskfiles import KEYS_DIR, KNOWN_HOSTS_DIR
from smsagent.waits import within

# SMS error codes of the target connection (spec §6.3).
SSH_FAILED: Final = "SMS.3802"
HOST_KEY_CHANGED: Final = "SMS.3803"
AUTH_REFUSED: Final = "SMS.3804"
CONNECT_TIMEOUT: Final = "SMS.3805"
CONNECT_REFUSED: Final = "SMS.3806"

# ssh's own messages (OpenSSH, LogLevel=ERROR still prints them) mapped to the codes above.
# The first match wins; ssh exits 255 for all of them.
_SSH_FAILURES: Final[tuple[tuple[re.Pattern[str], str, str], ...]] = (
    (
        re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed"),
        HOST_KEY_CHANGED,
        "the target's host key differs from the one pinned for this task",
    ),
    (
        re.compile(r"Permission denied \(|Too many authentication failures"),
        AUTH_REFUSED,
        "the target refused the task key",
    ),
    (
        re.compile(r"Connection timed out|Operation timed out|timed out during banner exchange"),
        CONNECT_TIMEOUT,
        "the connection to the target timed out",
    ),
    (re.compile(r"Connection refused"), CONNECT_REFUSED, "the target refused the connection"),
)

_CIPHERS: Final = ",".join(
    (
        "aes128-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes256-ctr",
    )
)
SSH_EXIT_FAILED: Final = 255
KEY_FILE_MODE: Final = 0o600
KEY_DIR_MODE: Final = 0o700
_TASK_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HOSTNAME_RE: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


class TargetError(Exception):
    """The target cannot be reached or used; `error_code` is the SMS code to report."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class CompletedRemote:
    """The outcome of one remote command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr_tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when the remote command exited 0."""
        return self.returncode == 0


@dataclass(frozen=True)
class TaskKeyPaths:
    """Where one task's SSH material lives in the state dir."""

    private_key: Path
    known_hosts: Path


def task_key_paths(state_dir: Path, task_id: str) -> TaskKeyPaths:
    """The private-key file and the pinned known_hosts file of a task.

    Raises:
        ValueError: `task_id` cannot be used as a file name.
    """
    if not _TASK_ID_RE.match(task_id):
        msg = f"task_id {task_id!r} is not a valid task id (letters, digits, '.', '_', '-')"
        raise ValueError(msg)
    return TaskKeyPaths(
        private_key=state_dir / KEYS_DIR / f"{task_id}.key",
        known_hosts=state_dir / KNOWN_HOSTS_DIR / task_id,
    )


def store_private_key(state_dir: Path, task_id: str, private_key_pem: str) -> TaskKeyPaths:
    """Write the task's private key (from `GET certkey`) mode 0600 and prepare its known_hosts dir.

    The key is written to a temporary file created 0600 in the same directory, synced and renamed,
    so it is never readable by others, not even for an instant, and never half-written.
    """
    paths = task_key_paths(state_dir, task_id)
    for directory in (paths.private_key.parent, paths.known_hosts.parent):
        directory.mkdir(mode=KEY_DIR_MODE, parents=True, exist_ok=True)
        directory.chmod(KEY_DIR_MODE)
    text = private_key_pem if private_key_pem.endswith("\n") else private_key_pem + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=".key-", dir=paths.private_key.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(paths.private_key)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return paths


def check_host(host: str) -> str:
    """Return `host` if it is an IP address or a DNS name; it must never look like an option.

    Raises:
        ValueError: naming the field.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _HOSTNAME_RE.match(host):
        return host
    msg = f"target host {host!r} is neither an IP address nor a host name"
    raise ValueError(msg)


def classify_ssh_failure(stderr_lines: Sequence[str]) -> TargetError:
    """Map ssh's messages (exit 255) to a `TargetError` with the matching SMS code."""
    text = "\n".join(stderr_lines)
    for pattern, code, message in _SSH_FAILURES:
        if pattern.search(text):
            return TargetError(code, message)
    detail = stderr_lines[-1] if stderr_lines else "no message from ssh"
    return TargetError(SSH_FAILED, f"the SSH connection to the target failed: {detail}")


class TargetSession:
    """SSH access to the target as root with the task key; no local shell is involved.

    The host key is accepted on first use and pinned in the task's own known_hosts file; a
    different key later fails with SMS.3803.

    Args:
        host: the target's IP address or host name.
        port: the target's SSH port.
        private_key_path: the task key (mode 0600).
        known_hosts_path: the task's pinned known_hosts file.
        ssh_path: the ssh client.
        connect_timeout_s: TCP connect and banner timeout.
        alive_interval_s: keepalive probe period; `alive_count_max` missed probes drop the link.
        task_id: tags the ssh processes with the task (`childproc.mover_env`), or None.
    """

    def __init__(
        self,
        host: str,
        port: int,
        private_key_path: Path,
        known_hosts_path: Path,
        ssh_path: str = "ssh",
        *,
        user: str = "root",
        connect_timeout_s: float = 20.0,
        alive_interval_s: int = 15,
        alive_count_max: int = 4,
        task_id: Optional[str] = None,
    ) -> None:
        if not 0 < port < 65536:
            msg = f"target port {port} is outside 1..65535"
            raise ValueError(msg)
        self.host: Final = check_host(host)
        self.port: Final = port
        self.user: Final = user
        self.private_key_path: Final = private_key_path
        self.known_hosts_path: Final = known_hosts_path
        self.ssh_path: Final = ssh_path
        self._connect_timeout_s = max(1, round(connect_timeout_s))
        self._alive_interval_s = alive_interval_s
        self._alive_count_max = alive_count_max
        self._control_path: Optional[str] = None
        self._task_id = task_id

    def ssh_argv(self) -> list[str]:
        """The ssh command and options, without the destination (what rsync's `-e` needs)."""
        options = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "IdentityFile": str(self.private_key_path),
            "UserKnownHostsFile": str(self.known_hosts_path),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "accept-new",
            "HashKnownHosts": "no",
            "UpdateHostKeys": "no",
            "CheckHostIP": "no",
            "ConnectTimeout": str(self._connect_timeout_s),
            "ServerAliveInterval": str(self._alive_interval_s),
            "ServerAliveCountMax": str(self._alive_count_max),
            "Compression": "no",
            # AES-GCM is the fastest where the CPU has AES-NI; the rest keep old targets working.
            "Ciphers": _CIPHERS,
            "ForwardAgent": "no",
            "ClearAllForwardings": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "LogLevel": "ERROR",
            "User": self.user,
            "Port": str(self.port),
        }
        argv = [self.ssh_path, "-F", "none", "-T", "-x"]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        return argv

    def remote_shell(self) -> str:
        """rsync's `-e` value: the ssh argv as one string that rsync splits back on quotes."""
        return shlex.join(self.ssh_argv())

    def rsync_destination(self, remote_path: str) -> str:
        """`host:path` for rsync, with an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{remote_path}"

    async def run(
        self,
        argv_remote: Sequence[str],
        timeout_s: float,
        *,
        grace_s: float = 5.0,
        input: Optional[bytes] = None,
    ) -> CompletedRemote:
        """Run a command on the target; its argv is quoted for the remote shell with shlex.join.

        Args:
            argv_remote: the remote command and its arguments.
            timeout_s: the whole run's limit, stdin, stdout and stderr included.
            grace_s: how long a command past its limit gets after SIGTERM.
            input: bytes for the command's stdin, which is then closed; without it the
                command reads an empty stdin.

        Raises:
            TargetError: ssh itself failed (exit 255), or the command outlived `timeout_s`
                (SMS.3805).
        """
        argv = [*self.ssh_argv(), *self._shared_options(), "--", self.host, shlex.join(argv_remote)]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.child_env(),
            start_new_session=True,
        )
        stderr_tail = LineTail()
        try:
            stdout, _, _ = await within(
                asyncio.gather(
                    _read_all(proc.stdout),
                    drain_into(proc.stderr, stderr_tail),
                    _feed(proc.stdin, input),
                ),
                timeout_s,
            )
            returncode = await proc.wait()
        except asyncio.TimeoutError:
            await stop_process(proc, grace_s)
            msg = f"the remote command {argv_remote[0]!r} did not finish within {timeout_s:g} s"
            raise TargetError(CONNECT_TIMEOUT, msg) from None
        finally:
            kill_group(proc)
            await proc.wait()
        lines = stderr_tail.lines()
        if returncode == SSH_EXIT_FAILED:
            raise classify_ssh_failure(lines)
        return CompletedRemote(tuple(argv_remote), returncode, stdout, tuple(lines))

    def child_env(self) -> dict[str, str]:
        """The environment of this session's ssh clients."""
        # Tagged with the task: a restart after `kill -9` finds the ssh clients (and the shared
        # connection) the killed agent left, as it finds its movers.
        return mover_env(self._task_id) if self._task_id else minimal_env()

    def _shared_options(self) -> list[str]:
        # ControlMaster=no: use the shared connection when its socket answers, else connect as
        # usual; never become a master (that would outlive this command).
        if self._control_path is None:
            return []
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={self._control_path}"]

    @asynccontextmanager
    async def shared_connection(self) -> AsyncIterator[None]:
        """Run this session's commands through one SSH connection while inside.

        A stage that runs many short commands (preparing disks, configuring the copy) would
        otherwise pay a whole SSH handshake for each. The copy's rsync streams never share it:
        each has its own connection, so they do not queue behind one another. Without a shared
        connection (it could not be made, or it broke), each command connects on its own.
        """
        if self._control_path is not None:
            yield
            return
        # A short directory of its own: a socket path is limited to about 100 bytes.
        directory = tempfile.mkdtemp(prefix="smsagent-ssh-")
        path = str(Path(directory) / "c")
        master = await asyncio.create_subprocess_exec(
            *self.ssh_argv(),
            "-M",
            "-N",
            "-o",
            f"ControlPath={path}",
            "-o",
            "ControlPersist=no",
            "--",
            self.host,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=self.child_env(),
            start_new_session=True,
        )
        try:
            if await _socket_appears(path, master, self._connect_timeout_s + 5.0):
                self._control_path = path
            yield
        finally:
            self._control_path = None
            await stop_process(master, 2.0)
            kill_group(master)
            await master.wait()
            shutil.rmtree(directory, ignore_errors=True)

    async def check(self, timeout_s: Optional[float] = None) -> None:
        """Prove the target answers as root with the task key and the pinned host key.

        Raises:
            TargetError: with SMS.3802/3803/3804/3805/3806 as the cause dictates.
        """
        limit_s = timeout_s if timeout_s is not None else self._connect_timeout_s + 10.0
        result = await self.run(["true"], timeout_s=limit_s)
        if not result.ok:
            detail = result.stderr_tail[-1] if result.stderr_tail else f"exit {result.returncode}"
            raise TargetError(SSH_FAILED, f"a command on the target failed: {detail}")


async def _socket_appears(path: str, master: asyncio.subprocess.Process, timeout_s: float) -> bool:
    """Wait until the master's control socket exists; False if the master ended or timed out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    socket = Path(path)
    while loop.time() < deadline:
        # A stat in a private directory on a local disk: it does not block the loop for long.
        if socket.exists():  # noqa: ASYNC240
            return True
        if master.returncode is not None:
            return False
        await asyncio.sleep(0.05)
    return False


async def _read_all(stream: Optional[asyncio.StreamReader]) -> bytes:
    if stream is None:
        return b""
    return await stream.read()


async def _feed(stream: Optional[asyncio.StreamWriter], data: Optional[bytes]) -> None:
    """Write `data` to a child's stdin and close it; a child that exits without reading it all
    is not an error here (its exit status tells)."""
    if stream is None or data is None:
        return
    try:
        stream.write(data)
        await stream.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stream.close()
