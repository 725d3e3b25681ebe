"""The .deb in a fresh Debian 12 root with systemd as PID 1: install, sandbox, remove, purge."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from packaging.version import Version

from smsagent import __version__
from tests.support import nspawn

if TYPE_CHECKING:
    from tests.system.conftest import BootRoot, InstallDeb, Packages

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(900)]

UNIT = "smsagent.service"
PACKAGE_PATHS = (
    "/usr/bin/smsagent",
    "/usr/lib/smsagent",
    "/usr/lib/systemd/system/smsagent.service",
    "/etc/systemd/system/multi-user.target.wants/smsagent.service",
)
# Runs the unit's own sandbox (every hardening option of the shipped file) around rsync instead
# of the agent: a copy of /home, /root and /var/tmp into the state dir, a write outside it, and a
# temporary file.
# Owners are not kept: this rsync is also the receiving side, which in a migration runs on the
# target, so the sandbox rightly lacks CAP_CHOWN.
SANDBOX_PROBE = """\
[Service]
Type=oneshot
Restart=no
WatchdogSec=0
ExecStart=
ExecStart=/usr/bin/rsync -rlptX --relative /home /root /var/tmp /var/lib/smsagent/copy/
ExecStart=-/bin/sh -c 'touch /usr/smsagent-probe 2> /var/lib/smsagent/write-error'
ExecStart=/bin/sh -c 'mktemp > /var/lib/smsagent/tempfile'
"""


def old_python() -> Path:
    """A pyenv CPython older than 3.9 (the build machines carry 3.6 to 3.8)."""
    prefixes = [
        Path(p).parents[1]
        for p in glob.glob(str(Path.home() / ".pyenv/versions/3.*/bin/python"))
        if Version(Path(p).parents[1].name).release[:2] < (3, 9)
    ]
    if not prefixes:
        pytest.fail("no pyenv CPython older than 3.9 on this machine")
    return max(prefixes, key=lambda p: Version(p.name))


@pytest.fixture(scope="module")
def container(boot: BootRoot) -> Iterator[nspawn.Container]:
    """A booted root that also sees an old Python at the same path as on the host."""
    with boot([old_python()]) as booted:
        yield booted


@pytest.fixture(scope="module")
def apt_output(container: nspawn.Container, packages: Packages, install_deb: InstallDeb) -> str:
    """What apt printed while installing the package."""
    return install_deb(container, packages.deb)


def exists(container: nspawn.Container, path: str) -> bool:
    return container.exec(["test", "-e", path], check=False).returncode == 0


def mode_and_owner(container: nspawn.Container, path: str) -> str:
    return container.exec(["stat", "--format=%a %U:%G", path]).stdout.strip()


class TestInstall:
    def test_enabled_but_not_started_until_configured(
        self, container: nspawn.Container, apt_output: str
    ) -> None:
        """The unit starts at boot once configured; a fresh install waits for the env file."""
        state = container.unit_properties(UNIT, "UnitFileState", "ActiveState")

        assert state == {"UnitFileState": "enabled", "ActiveState": "inactive"}
        assert "fill in /etc/smsagent/smsagent.env" in apt_output

    def test_secrets_and_state_are_root_only(
        self, container: nspawn.Container, apt_output: str
    ) -> None:
        """The env file is 0600 and the config and state directories 0700, all root's."""
        assert mode_and_owner(container, "/etc/smsagent/smsagent.env") == "600 root:root"
        assert mode_and_owner(container, "/etc/smsagent") == "700 root:root"
        assert mode_and_owner(container, "/var/lib/smsagent") == "700 root:root"

    def test_installed_unit_verifies_clean(
        self, container: nspawn.Container, apt_output: str
    ) -> None:
        """The unit as installed passes `systemd-analyze verify` without a message."""
        done = container.exec(["systemd-analyze", "verify", UNIT], check=False)

        assert (done.returncode, done.stdout + done.stderr) == (0, "")

    def test_command_runs_from_the_private_venv(
        self, container: nspawn.Container, apt_output: str
    ) -> None:
        """`smsagent` is on the PATH and runs on the host's python3 in its own venv, made on a
        Debian without python3-venv (ensurepip): pip ran from its wheel, the venv has none."""
        venv_module = container.exec(
            ["dpkg-query", "--show", "--showformat=${Status}", "python3-venv"], check=False
        )
        target = container.exec(["readlink", "-f", "/usr/bin/smsagent"]).stdout.strip()
        version = container.exec(["smsagent", "version"]).stdout.splitlines()[0]
        base = container.exec(
            ["/usr/lib/smsagent/venv/bin/python", "-c", "import sys; print(sys.base_prefix)"]
        ).stdout.strip()

        assert "installed" not in venv_module.stdout.split(), venv_module.stdout
        assert not container.path("/usr/lib/smsagent/venv/bin/pip").exists()
        assert target.startswith("/usr/lib/smsagent/venv/")
        assert version == f"smsagent {__version__}"
        assert base == "/usr"

    def test_too_old_python_is_refused_with_a_clear_error(
        self, container: nspawn.Container, apt_output: str
    ) -> None:
        """setup-venv names the Python it needs and leaves the working venv alone."""
        python = old_python() / "bin" / "python3"
        done = container.exec(
            ["env", f"SMSAGENT_PYTHON={python}", "/usr/lib/smsagent/setup-venv"], check=False
        )

        assert done.returncode == 1
        assert done.stderr.startswith("smsagent: smsagent needs Python 3.9 or newer;")
        assert "Traceback" not in done.stderr
        assert container.exec(["smsagent", "version"]).returncode == 0


class TestSandbox:
    @pytest.fixture
    def probe(self, container: nspawn.Container, apt_output: str) -> Iterator[None]:
        """The sandbox probe as a drop-in, and files only root's capabilities can read."""
        dropin = container.path("/etc/systemd/system/smsagent.service.d/probe.conf")
        dropin.parent.mkdir(parents=True)
        dropin.write_text(SANDBOX_PROBE)
        container.exec(["useradd", "--create-home", "probeuser"])
        private = "/home/probeuser/private"
        container.exec(["sh", "-c", f"echo one > {private} && chmod 0 {private}"])
        container.exec(["sh", "-c", "echo two > /var/tmp/kept && echo three > /root/note"])
        container.exec(["systemctl", "daemon-reload"])
        yield
        dropin.unlink()
        dropin.parent.rmdir()
        container.exec(["userdel", "--remove", "probeuser"])
        probe_output = ["copy", "write-error", "tempfile"]
        container.exec(["rm", "-rf", *(f"/var/lib/smsagent/{name}" for name in probe_output)])
        container.exec(["systemctl", "daemon-reload"])

    def test_reads_every_file_and_writes_only_its_state(
        self, container: nspawn.Container, probe: None
    ) -> None:
        """Under the unit's hardening rsync copies other users' 0000 files, /root and /var/tmp,
        the rest of the system is read-only, and temporary files have a writable home."""
        container.exec(["systemctl", "start", UNIT])
        copy = container.path("/var/lib/smsagent/copy")

        assert (copy / "home" / "probeuser" / "private").read_text() == "one\n"
        assert (copy / "home" / "probeuser" / "private").stat().st_mode & 0o777 == 0
        assert (copy / "var" / "tmp" / "kept").read_text() == "two\n"
        assert (copy / "root" / "note").read_text() == "three\n"
        assert (
            "Read-only file system" in container.path("/var/lib/smsagent/write-error").read_text()
        )
        assert not exists(container, "/usr/smsagent-probe")
        tempfile = container.path("/var/lib/smsagent/tempfile").read_text()
        assert tempfile.startswith("/run/smsagent/")


class TestRemoval:
    def test_remove_keeps_settings_and_state_and_reinstall_enables(
        self,
        container: nspawn.Container,
        packages: Packages,
        install_deb: InstallDeb,
        apt_output: str,
    ) -> None:
        """`apt remove` takes the program and unit away; the env file and state stay for a
        reinstall, which enables the unit again."""
        container.path("/var/lib/smsagent/agent.json").write_text("{}")
        container.exec(["apt-get", "remove", "--yes", "--quiet", "smsagent"])
        left = [p for p in PACKAGE_PATHS if exists(container, p)]
        settings_and_state = ("/etc/smsagent/smsagent.env", "/var/lib/smsagent/agent.json")
        kept = [p for p in settings_and_state if exists(container, p)]

        install_deb(container, packages.deb)

        assert left == []
        assert kept == list(settings_and_state)
        assert container.unit_properties(UNIT, "UnitFileState") == {"UnitFileState": "enabled"}

    def test_purge_leaves_nothing(self, container: nspawn.Container, apt_output: str) -> None:
        """`apt purge` removes the program, the unit, the env file and the agent's state."""
        container.exec(["apt-get", "purge", "--yes", "--quiet", "smsagent"])

        left = [
            p
            for p in (*PACKAGE_PATHS, "/etc/smsagent", "/var/lib/smsagent", "/run/smsagent")
            if exists(container, p)
        ]
        status = container.exec(["dpkg-query", "--show", "smsagent"], check=False)
        unit_files = container.exec(
            ["systemctl", "list-unit-files", "--no-legend", UNIT], check=False
        ).stdout

        assert left == []
        assert status.returncode != 0
        assert unit_files.strip() == ""
