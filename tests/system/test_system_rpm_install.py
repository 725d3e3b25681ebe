"""The .rpm's scriptlets, run by rpm itself in a fresh Debian 12 root with systemd as PID 1.

Debian's rpm installs into its own database, so this exercises the RPM payload and the
%post/%preun/%postun scriptlets with rpm's arguments (1 = install, 0 = erase) under real systemd,
though not a RHEL userland.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from smsagent import __version__
from tests.support import nspawn

if TYPE_CHECKING:
    from tests.system.conftest import Packages

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(900)]

UNIT = "smsagent.service"
PACKAGE_PATHS = (
    "/usr/bin/smsagent",
    "/usr/lib/smsagent",
    "/usr/lib/systemd/system/smsagent.service",
    "/etc/systemd/system/multi-user.target.wants/smsagent.service",
    "/etc/smsagent",
)


@pytest.fixture(scope="module")
def rpm_output(container: nspawn.Container, packages: Packages) -> str:
    """What rpm and the %post scriptlet printed while installing."""
    shutil.copy(packages.rpm, container.path("/root") / packages.rpm.name)
    # dpkg, not rpm, installed python3, rsync and ssh here, so rpm cannot see them (--nodeps);
    # Debian's rpm installs packages only when told it is meant (--force-debian).
    argv = ["rpm", "--install", "--nodeps", "--force-debian", f"/root/{packages.rpm.name}"]
    done = container.exec(argv, timeout_s=300)
    return done.stdout + done.stderr


def exists(container: nspawn.Container, path: str) -> bool:
    return container.exec(["test", "-e", path], check=False).returncode == 0


class TestRpmInstall:
    def test_post_builds_the_venv_and_enables_without_starting(
        self, container: nspawn.Container, rpm_output: str
    ) -> None:
        """%post (argument 1) builds the venv and enables the unit; the agent waits for config."""
        state = container.unit_properties(UNIT, "UnitFileState", "ActiveState")
        version = container.exec(["smsagent", "version"]).stdout.splitlines()[0]

        assert state == {"UnitFileState": "enabled", "ActiveState": "inactive"}
        assert version == f"smsagent {__version__}"
        assert "fill in /etc/smsagent/smsagent.env" in rpm_output

    def test_secrets_and_state_are_root_only(
        self, container: nspawn.Container, rpm_output: str
    ) -> None:
        """The same modes as from the .deb: env file 0600, config and state directories 0700."""
        paths = ["/etc/smsagent/smsagent.env", "/etc/smsagent", "/var/lib/smsagent"]
        stat = container.exec(["stat", "--format=%n %a %U", *paths]).stdout.splitlines()

        assert stat == [
            "/etc/smsagent/smsagent.env 600 root",
            "/etc/smsagent 700 root",
            "/var/lib/smsagent 700 root",
        ]

    def test_erase_removes_the_package_and_keeps_the_state(
        self, container: nspawn.Container, rpm_output: str
    ) -> None:
        """`rpm -e` (%preun/%postun with 0) disables the unit and removes program, venv and
        unchanged settings; the agent's state stays, as rpm has no purge."""
        container.path("/var/lib/smsagent/agent.json").write_text("{}")

        container.exec(["rpm", "--erase", "smsagent"])

        assert [p for p in PACKAGE_PATHS if exists(container, p)] == []
        assert container.exec(["rpm", "--query", "smsagent"], check=False).returncode != 0
        assert exists(container, "/var/lib/smsagent/agent.json")
