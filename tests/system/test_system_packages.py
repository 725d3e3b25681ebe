"""The built .deb and .rpm: metadata, the same files with the same modes, scripts and wheels."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from packaging.utils import parse_wheel_filename

from smsagent.config import Settings

if TYPE_CHECKING:
    from tests.system.conftest import Packages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
# Platform tags of wheels that run on glibc 2.17 (RHEL 7) and newer.
GLIBC_2_17_TAGS = {
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux_2_12_x86_64",
    "manylinux_2_17_x86_64",
}
OWN_DIRS = {"/etc/smsagent", "/usr/lib/smsagent", "/usr/lib/smsagent/wheels"}


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def deb_entries(deb: Path) -> dict[str, str]:
    """Path -> mode string (`-rw-------`, `lrwxrwxrwx`...) of the .deb's files and own dirs."""
    entries = {}
    for line in run("dpkg-deb", "--contents", str(deb)).splitlines():
        mode, _, _, _, _, name = line.split(maxsplit=5)
        path = name.split(" -> ")[0].lstrip(".").rstrip("/")
        if not mode.startswith("d") or path in OWN_DIRS:
            entries[path] = mode
    return entries


def rpm_entries(rpm: Path) -> dict[str, str]:
    """Path -> mode string of every entry the .rpm owns."""
    entries = {}
    for line in run("rpm", "-qlpv", str(rpm)).splitlines():
        fields = line.split()
        path = fields[fields.index("->") - 1] if "->" in fields else fields[-1]
        entries[path] = fields[0]
    return entries


class TestDeb:
    def test_depends_on_python_rsync_and_ssh(self, packages: Packages) -> None:
        """apt pulls in everything the agent needs on the host (not python3-venv: the venv is
        made without pip, and pip runs from its wheel in the package)."""
        depends = run("dpkg-deb", "--field", str(packages.deb), "Depends").strip()

        assert depends.split(", ") == [
            "python3 (>= 3.9)",
            "rsync",
            "openssh-client",
        ]

    def test_env_file_is_a_conffile(self, packages: Packages, tmp_path: Path) -> None:
        """dpkg keeps an operator's edited env file across upgrades."""
        subprocess.run(["dpkg-deb", "--control", str(packages.deb), str(tmp_path)], check=True)

        assert (tmp_path / "conffiles").read_text().split() == ["/etc/smsagent/smsagent.env"]

    def test_layout_and_modes(self, packages: Packages) -> None:
        """Secrets are root-only, the command is a link into the private venv."""
        entries = deb_entries(packages.deb)

        assert entries["/etc/smsagent"] == "drwx------"
        assert entries["/etc/smsagent/smsagent.env"] == "-rw-------"
        assert entries["/usr/lib/systemd/system/smsagent.service"] == "-rw-r--r--"
        assert entries["/usr/lib/smsagent/setup-venv"] == "-rwxr-xr-x"
        assert entries["/usr/bin/smsagent"].startswith("l")
        assert "/usr/bin/smsagent -> /usr/lib/smsagent/venv/bin/smsagent" in run(
            "dpkg-deb", "--contents", str(packages.deb)
        )


class TestRpm:
    def test_same_files_and_modes_as_the_deb(self, packages: Packages) -> None:
        """Both formats install the same layout."""
        assert rpm_entries(packages.rpm) == deb_entries(packages.deb)

    def test_requires_python_rsync_and_ssh(self, packages: Packages) -> None:
        """The RPM names the RHEL packages of the same dependencies."""
        requires = run("rpm", "-qp", "--requires", str(packages.rpm)).splitlines()

        assert [r for r in requires if not r.startswith("rpmlib(")] == [
            "python3 >= 3.9",
            "rsync",
            "openssh-clients",
        ]

    def test_env_file_is_config_noreplace(self, packages: Packages) -> None:
        """rpm keeps an operator's edited env file on upgrade (`%config(noreplace)`)."""
        flags = run("rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", str(packages.rpm))

        assert "cn /etc/smsagent/smsagent.env" in flags.splitlines()

    def test_scriptlets_are_the_shared_scripts(self, packages: Packages) -> None:
        """%post, %preun and %postun run the same scripts as the .deb's maintainer scripts."""
        scripts = run("rpm", "-qp", "--scripts", str(packages.rpm))
        bodies = re.split(r"^\S+ scriptlet \(using /bin/sh\):\n", scripts, flags=re.MULTILINE)
        names = re.findall(r"^(\S+) scriptlet", scripts, flags=re.MULTILINE)
        by_name = {name: body.rstrip("\n") for name, body in zip(names, bodies[1:])}

        for name, script in [
            ("postinstall", "postinstall.sh"),
            ("preuninstall", "preremove.sh"),
            ("postuninstall", "postremove.sh"),
        ]:
            assert by_name[name] == (PACKAGING / "scripts" / script).read_text().rstrip("\n")


class TestPayload:
    def test_a_wheel_set_for_each_python(self, packages: Packages) -> None:
        """Each supported Python has a list, and every listed wheel is shipped."""
        wheels = packages.stage / "wheels"
        shipped = {p.name for p in wheels.glob("*.whl")}
        for version in PYTHON_VERSIONS:
            listed = (wheels / f"requirements-{version}.txt").read_text().split()
            assert set(listed) <= shipped
            assert [n for n in listed if n.startswith("smsagent-")] != []

    def test_compiled_wheels_run_on_glibc_2_17(self, packages: Packages) -> None:
        """No wheel needs a newer glibc than RHEL 7's, so the package runs on old servers."""
        for path in (packages.stage / "wheels").glob("*.whl"):
            _, _, _, tags = parse_wheel_filename(path.name)
            platforms = {tag.platform for tag in tags}
            assert platforms == {"any"} or platforms & GLIBC_2_17_TAGS, path.name

    def test_env_file_is_the_template_of_the_settings(
        self, packages: Packages, gen_env_template: ModuleType
    ) -> None:
        """The packaged env file lists the settings of the code it ships with."""
        packaged = (packages.stage / "smsagent.env").read_text()

        assert packaged == gen_env_template.render(Settings)
