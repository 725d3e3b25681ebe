"""A real target server for tests: its own network namespace, a real sshd on port 22, a root dir.

The namespace shares the file system with the test, so the target's root directory (what stands for
`/mnt/smsroot` on a real target) is a local path the test can inspect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

NETNS_PREFIX = "smstgt-"
SSHD = "/usr/sbin/sshd"
SSH_PORT = 22
START_TIMEOUT_S = 15.0

_SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 64
MaxSessions 64
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def _keygen(path: Path, comment: str) -> None:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, found through /proc (parents before children)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; the ppid follows the last ')'.
        parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found.extend(kids)
        frontier.extend(kids)
    return found


def wait_none_left(find: Callable[[], list[int]], what: str, timeout_s: float) -> None:
    """Poll `find` until it finds no process; fail naming `what` and the pids after the timeout."""
    deadline = time.monotonic() + timeout_s
    while find():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} {find()} still alive after {timeout_s} s")
        time.sleep(0.05)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _allocate_netns() -> tuple[int, str]:
    """Create a free `smstgt-<n>` namespace (atomic: `ip netns add` fails if it exists)."""
    for index in range(1, 255):
        name = f"{NETNS_PREFIX}{index}"
        if _run("ip", "netns", "add", name, check=False).returncode == 0:
            return index, name
    msg = "no free smstgt-<n> network namespace (1..254 all exist)"
    raise RuntimeError(msg)


@dataclass
class TargetHost:
    """A target host in its own network namespace, reached over a veth pair.

    Attributes:
        index: the <n> of `smstgt-<n>`, also the third octet of the addresses.
        netns: the network namespace's name.
        host_ip: the test's (source's) side of the link.
        ip: the target's address; sshd listens here on `port`.
        root: the target root directory (stands for `/mnt/smsroot`).
        client_key: the task key's private half (ed25519, OpenSSH format, mode 0600).
        client_public_key: the line authorized for root.
        host_public_key: sshd's current host key line (`ssh-ed25519 AAAA... comment`).
    """

    index: int
    netns: str
    workdir: Path
    host_ip: str
    ip: str
    root: Path
    client_key: Path
    port: int = SSH_PORT
    sshd_extra_config: str = ""
    """Lines added to sshd's configuration at its next (re)start, e.g. `SetEnv PATH=...`."""
    _sshd: Optional[subprocess.Popen[bytes]] = field(default=None, repr=False)
    _host_key_generation: int = 0

    # -- creation and cleanup --

    @classmethod
    def create(cls, workdir: Path) -> TargetHost:
        """Create the namespace, the link, the keys and the root dir, and start sshd."""
        workdir.mkdir(parents=True, exist_ok=True)
        index, netns = _allocate_netns()
        host = cls(
            index=index,
            netns=netns,
            workdir=workdir,
            host_ip=f"10.231.{index}.1",
            ip=f"10.231.{index}.2",
            root=workdir / "smsroot",
            client_key=workdir / "task_key",
        )
        try:
            host._setup()
        except BaseException:
            host.close()
            raise
        return host

    def _setup(self) -> None:
        self._link_up()
        self.root.mkdir(mode=0o755)
        _keygen(self.client_key, "smsagent-task")
        self.authorized_keys.write_text(self.client_public_key + "\n")
        self._new_host_key()
        # sshd refuses to start as root without its privilege-separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.start_sshd()

    def _link_up(self) -> None:
        host_if, target_if = self.host_if, f"smstgt{self.index}t"
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", target_if)
        _run("ip", "link", "set", target_if, "netns", self.netns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        self.netns_exec("ip", "addr", "add", f"{self.ip}/30", "dev", target_if)
        self.netns_exec("ip", "link", "set", target_if, "up")
        self.netns_exec("ip", "link", "set", "lo", "up")

    def close(self) -> None:
        """Stop sshd and its sessions, remove the link and the namespace (idempotent)."""
        self.stop_sshd()
        # Deleting the namespace removes the veth pair only asynchronously; delete it now.
        _run("ip", "link", "del", self.host_if, check=False)
        _run("ip", "netns", "del", self.netns, check=False)

    # -- paths --

    @property
    def host_if(self) -> str:
        """The host side of the veth pair."""
        return f"smstgt{self.index}h"

    @property
    def authorized_keys(self) -> Path:
        """root's authorized_keys file on the target."""
        return self.workdir / "authorized_keys"

    @property
    def sshd_config(self) -> Path:
        """sshd's configuration file."""
        return self.workdir / "sshd_config"

    @property
    def sshd_log(self) -> Path:
        """sshd's log (`-e`), appended across restarts."""
        return self.workdir / "sshd.log"

    @property
    def host_key(self) -> Path:
        """sshd's current private host key."""
        return self.workdir / f"host_key.{self._host_key_generation}"

    @property
    def client_private_key_pem(self) -> str:
        """The task key as text, as `GET /v3/tasks/{id}/certkey` would return it."""
        return self.client_key.read_text()

    @property
    def client_public_key(self) -> str:
        """The authorized public key line."""
        return Path(f"{self.client_key}.pub").read_text().strip()

    @property
    def host_public_key(self) -> str:
        """sshd's current public host key line."""
        return Path(f"{self.host_key}.pub").read_text().strip()

    # -- commands --

    def netns_exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the target's namespace."""
        return _run("ip", "netns", "exec", self.netns, *argv, check=check)

    def seen_by_target(self, path: Path) -> Path:
        """`path` as the target's commands see it.

        `ip netns exec` gives sshd a mount namespace of its own, so what the agent mounts on the
        target over SSH is visible only there: through sshd's `/proc/<pid>/root`.
        """
        pid = self.sshd_pid
        if pid is None:
            raise RuntimeError("the target's sshd is not running")
        return Path(f"/proc/{pid}/root") / path.relative_to("/")

    def in_mount_namespace(
        self, *argv: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the target's mount namespace (where its sessions mount things)."""
        pid = self.sshd_pid
        if pid is None:
            raise RuntimeError("the target's sshd is not running")
        return _run("nsenter", f"--target={pid}", "--mount", "--", *argv, check=check)

    def mounts_below(self, directory: Path) -> list[str]:
        """The mount points at or below `directory` in the target's mount namespace."""
        pid = self.sshd_pid
        if pid is None:
            return []
        found = []
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == str(directory) or mount_point.startswith(f"{directory}/"):
                found.append(mount_point)
        return found

    # -- sshd lifecycle --

    @property
    def sshd_pid(self) -> Optional[int]:
        """The listening sshd's pid, or None when it is not running."""
        if self._sshd is None or self._sshd.poll() is not None:
            return None
        return self._sshd.pid

    def start_sshd(self) -> None:
        """Start sshd in the namespace and wait until it accepts connections."""
        if self.sshd_pid is not None:
            return
        self._write_config()
        log = self.sshd_log.open("ab")
        try:
            # `ip netns exec` execs sshd, so the child's pid is sshd's.
            argv = ["ip", "netns", "exec", self.netns, SSHD, "-D", "-e"]
            argv += ["-f", str(self.sshd_config)]
            self._sshd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        self._wait_listening()

    def stop_sshd(self) -> None:
        """Stop sshd and every session it serves; the port then refuses connections."""
        if self._sshd is None:
            return
        self.kill_sessions(include_commands=True)
        if self._sshd.poll() is None:
            self._sshd.send_signal(signal.SIGCONT)
            self._sshd.terminate()
            try:
                self._sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait(timeout=10)
        self._sshd = None

    def restart_sshd(self) -> None:
        """Stop sshd (dropping sessions) and start it again with the current configuration."""
        self.stop_sshd()
        self.start_sshd()

    def pause_sshd(self) -> None:
        """SIGSTOP sshd: the kernel still completes TCP handshakes but no banner ever comes."""
        if self._sshd is not None:
            self._sshd.send_signal(signal.SIGSTOP)

    def resume_sshd(self) -> None:
        """SIGCONT a paused sshd."""
        if self._sshd is not None:
            self._sshd.send_signal(signal.SIGCONT)

    def session_pids(self) -> list[int]:
        """The sshd processes serving established connections (not the listener)."""
        pid = self.sshd_pid
        if pid is None:
            return []
        return [child for child in _children(pid) if _comm(child) == "sshd"]

    def wait_no_sessions(self, timeout_s: float = 10.0) -> None:
        """Wait until no connection is served any more (every session ended or was dropped)."""
        wait_none_left(self.session_pids, "sshd sessions", timeout_s)

    def processes_inside(self) -> list[int]:
        """Every process in the target's network namespace but the sshd listener: sessions and
        the commands they ran, also those that outlive their session (reparented away)."""
        namespace = os.stat(f"/run/netns/{self.netns}")
        inside = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.sshd_pid:
                continue
            try:
                net = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (net.st_dev, net.st_ino) == (namespace.st_dev, namespace.st_ino):
                inside.append(int(entry))
        return inside

    def wait_quiet(self, timeout_s: float = 10.0) -> None:
        """Wait until the target runs nothing for us any more: no session and no remote command
        (rsync's server side still saves its partial file after its session has closed)."""
        wait_none_left(self.processes_inside, "processes on the target", timeout_s)

    def kill_sessions(self, *, include_commands: bool = False) -> int:
        """Drop every established connection at once, as a target that goes away would.

        Only the session's sshd processes are killed unless `include_commands`: the remote
        commands (rsync's server side) then see their connection close and wind down themselves.

        Returns:
            how many processes were killed.
        """
        pid = self.sshd_pid
        if pid is None:
            return 0
        victims = _children(pid)
        if not include_commands:
            victims = [child for child in victims if _comm(child) == "sshd"]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        return len(victims)

    # -- keys --

    def replace_host_key(self) -> None:
        """Give sshd a new host key (as a reinstalled target would) and restart it."""
        self._new_host_key()
        self.restart_sshd()

    def revoke_client_key(self) -> None:
        """Stop authorizing the task key: logins are then refused."""
        self.authorized_keys.write_text("")

    def authorize_client_key(self) -> None:
        """Authorize the task key for root again."""
        self.authorized_keys.write_text(self.client_public_key + "\n")

    def _new_host_key(self) -> None:
        self._host_key_generation += 1
        _keygen(self.host_key, f"smstgt-{self.index}")

    def _write_config(self) -> None:
        self.sshd_config.write_text(
            _SSHD_CONFIG.format(
                port=self.port,
                address=self.ip,
                host_key=self.host_key,
                pid_file=self.workdir / "sshd.pid",
                authorized_keys=self.authorized_keys,
            )
            + self.sshd_extra_config
        )

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._sshd is None or self._sshd.poll() is not None:
                msg = f"sshd exited at start; see {self.sshd_log}:\n{self.sshd_log.read_text()}"
                raise RuntimeError(msg)
            with contextlib.suppress(OSError), socket.create_connection((self.ip, self.port), 1):
                return
            time.sleep(0.05)
        msg = f"sshd did not listen on {self.ip}:{self.port} within {START_TIMEOUT_S} s"
        raise RuntimeError(msg)


@contextlib.contextmanager
def target_host(workdir: Path) -> Iterator[TargetHost]:
    """A running target host for the duration of the block."""
    host = TargetHost.create(workdir)
    try:
        yield host
    finally:
        host.close()


def require_root() -> Optional[str]:
    """Why a target host cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "a target host needs root (network namespaces, sshd on port 22)"
    for tool in (SSHD, "/usr/bin/ssh", "/usr/bin/rsync"):
        if not Path(tool).exists():
            return f"{tool} is missing (install the Makefile's SYSTEM_PACKAGES)"
    return None
