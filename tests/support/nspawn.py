"""A Debian root booted with real systemd under systemd-nspawn, driven from the host with nsenter.

The root is built once with debootstrap and cached as a tarball keyed by its package list, so
reruns only unpack it. The container shares the host's network (an emulator on 127.0.0.1 is
reachable from inside) and is not registered with machined (the host may not run systemd), so
commands enter the namespaces of its PID 1 with nsenter instead of `systemd-run --machine`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

SUITE = "bookworm"
DEFAULT_CACHE_DIR = Path(os.environ.get("SMSAGENT_TEST_CACHE", "/var/cache/smsagent-tests"))
# What a Debian 12 server the agent is installed on has (iproute2 for the network inventory),
# plus procps (ps) for the tests and rpm to run the .rpm's scriptlets in the same root.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "rsync",
    "openssh-client",
    "iproute2",
    "procps",
    "rpm",
)
# Units that would take the dpkg lock or wake up at random while a test installs packages.
MASKED_UNITS = (
    "apt-daily.service",
    "apt-daily.timer",
    "apt-daily-upgrade.service",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
)
# The booted root's host name, which the agent registers under.
HOSTNAME = "smsagent-test"
INNER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "SYSTEMD_COLORS": "0",
    "DEBIAN_FRONTEND": "noninteractive",
}


_SPAN_UNITS_S = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "ms": 0.001}


def timespan_s(span: str) -> float:
    """A systemd time span (`90s`, `1min 30s`, `500ms`, as in unit files and `systemctl show`)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    if not parts:
        raise ValueError(f"not a time span: {span!r}")
    return sum(float(number) * _SPAN_UNITS_S[unit] for number, unit in parts)


class ContainerError(RuntimeError):
    """The container could not be built, booted or driven."""


def wait_until(
    predicate: Callable[[], Optional[T]], timeout_s: float, what: str, interval_s: float = 0.2
) -> T:
    """Poll `predicate` until it returns something truthy and return that value.

    Raises:
        TimeoutError: naming `what` was awaited.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (or $SMSAGENT_TEST_MIRROR)."""
    if os.environ.get("SMSAGENT_TEST_MIRROR"):
        return os.environ["SMSAGENT_TEST_MIRROR"]
    texts = [p.read_text() for p in Path("/etc/apt").glob("sources.list*/*.sources")]
    for text in texts:
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            if uris and re.search(rf"^Suites:.*\b{SUITE}\b(?!-)", stanza, re.MULTILINE):
                return uris.group(1)
    legacy = Path("/etc/apt/sources.list")
    text = legacy.read_text() if legacy.exists() else ""
    match = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", text, re.MULTILINE)
    if match is None:
        raise ContainerError(f"no {SUITE} source in /etc/apt; set SMSAGENT_TEST_MIRROR")
    return match.group(1)


def root_tarball(
    packages: Sequence[str] = BASE_PACKAGES, cache_dir: Path = DEFAULT_CACHE_DIR
) -> Path:
    """The cached tarball of a bootstrapped root with `packages`, built on first use."""
    recipe = [SUITE, sorted(packages), MASKED_UNITS, HOSTNAME]
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()
    tarball = cache_dir / f"debian-{SUITE}-{key[:16]}.tar"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            _bootstrap_into(tarball, packages)
            # Roots of an older recipe are never used again.
            for stale in cache_dir.glob(f"debian-{SUITE}-*.tar"):
                if stale != tarball:
                    stale.unlink()
    return tarball


def _bootstrap_into(tarball: Path, packages: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="smsagent-bootstrap-", dir=tarball.parent) as work:
        root = Path(work) / "root"
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}"]
        argv += [SUITE, str(root), debian_mirror()]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ContainerError(f"debootstrap failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        _prepare_root(root)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)


def _prepare_root(root: Path) -> None:
    (root / "etc" / "hostname").write_text(f"{HOSTNAME}\n")
    for unit in MASKED_UNITS:
        (root / "etc" / "systemd" / "system" / unit).symlink_to("/dev/null")


def unpack_root(tarball: Path, parent: Optional[Path] = None) -> Path:
    """Unpack `tarball` into a new directory and return it; remove it with `remove_root`."""
    base = Path(tempfile.mkdtemp(prefix="smsagent-sys-", dir=parent or Path("/var/tmp")))
    root = base / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], check=True)
    return root


def remove_root(root: Path) -> None:
    """Delete a root made by `unpack_root`."""
    shutil.rmtree(root.parent, ignore_errors=True)


class Container:
    """One booted root: `start()`, `exec(argv)`, `wait_until(pred)`, `stop()`."""

    def __init__(self, root: Path, name: str, read_only_binds: Sequence[Path] = ()) -> None:
        self.root = root
        self.name = name
        self.read_only_binds = tuple(read_only_binds)
        self.console_log = root.parent / "console.log"
        self._nspawn: Optional[subprocess.Popen[bytes]] = None
        self._leader_pid: Optional[int] = None

    @property
    def leader_pid(self) -> int:
        """The host PID of the container's PID 1 (systemd)."""
        if self._leader_pid is None:
            raise ContainerError("the container is not running")
        return self._leader_pid

    def start(self, timeout_s: float = 90.0) -> None:
        """Boot the root and return once systemd reports the boot finished."""
        argv = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet"]
        argv += [f"--directory={self.root}", f"--machine={self.name}", "--console=read-only"]
        argv += [f"--bind-ro={path}" for path in self.read_only_binds]
        with open(self.console_log, "wb") as log:
            self._nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._leader_pid = wait_until(self._find_leader, timeout_s, "the container's systemd")
        self.wait_until(self._boot_finished, timeout_s, "the container to finish booting")

    def _find_leader(self) -> Optional[int]:
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited: {self.console_tail()}")
        children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
        for pid in children.read_text().split():
            if _read(f"/proc/{pid}/comm") == "systemd":
                return int(pid)
        return None

    def _boot_finished(self) -> bool:
        state = self.exec(["systemctl", "is-system-running"], check=False).stdout.strip()
        return state in ("running", "degraded")

    def exec(
        self,
        argv: Sequence[str],
        *,
        input_text: Optional[str] = None,
        timeout_s: float = 120.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container as root with a clean environment.

        Raises:
            ContainerError: `check` is set and the command exited non-zero.
        """
        # --wd without a value takes PID 1's working directory (/) after entering its root.
        enter = ["nsenter", f"--target={self.leader_pid}", "--all", "--root", "--wd", "--"]
        done = subprocess.run(
            [*enter, *argv],
            input=input_text,
            capture_output=True,
            text=True,
            env=INNER_ENV,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def wait_until(self, predicate: Callable[[], Optional[T]], timeout_s: float, what: str) -> T:
        """`wait_until`, failing early with the console's end if the container died."""

        def alive_and(predicate: Callable[[], Optional[T]] = predicate) -> Optional[T]:
            if self._nspawn is not None and self._nspawn.poll() is not None:
                raise ContainerError(f"the container stopped: {self.console_tail()}")
            return predicate()

        return wait_until(alive_and, timeout_s, what)

    def unit_properties(self, unit: str, *names: str) -> dict[str, str]:
        """`systemctl show` properties of a unit, e.g. `ActiveState`, `MainPID`, `NRestarts`."""
        argv = ["systemctl", "show", unit, *(f"--property={name}" for name in names)]
        lines = self.exec(argv).stdout.splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def processes(self) -> list[str]:
        """The command lines of every process in the container but the kernel's threads."""
        listing = self.exec(["ps", "-e", "--no-headers", "-o", "args"]).stdout
        return [line.strip() for line in listing.splitlines() if not line.startswith("[")]

    def journal(self, *selectors: str) -> list[dict[str, Any]]:
        """Journal entries matching `selectors` (journalctl arguments), as journald's JSON."""
        argv = ["journalctl", "--no-pager", "--output=json", "--all", *selectors]
        lines = self.exec(argv).stdout.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def path(self, inner: str) -> Path:
        """The host path of a file inside the root (not of the container's own /tmp or /run)."""
        return self.root / inner.lstrip("/")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Power the container off (SIGTERM to nspawn); kill it if that takes over `timeout_s`."""
        if self._nspawn is None:
            return
        if self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.leader_pid, signal.SIGKILL)
                self._nspawn.kill()
                self._nspawn.wait(timeout=timeout_s)
        self._nspawn = None
        self._leader_pid = None

    def console_tail(self, chars: int = 3000) -> str:
        """The end of the console output, for failure messages."""
        try:
            return self.console_log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextmanager
def booted(tarball: Path, name: str, read_only_binds: Sequence[Path] = ()) -> Iterator[Container]:
    """A fresh root from `tarball`, booted; stopped and deleted on exit."""
    root = unpack_root(tarball)
    container = Container(root, name, read_only_binds)
    try:
        container.start()
        yield container
    finally:
        container.stop()
        remove_root(root)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""
