"""The wheel sets: complete under each Python's own markers, and installable by that Python."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if TYPE_CHECKING:
    from tests.system.conftest import Packages

PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


def wheel(wheelhouse: ModuleType, name: str, version: str, *requires: str) -> Any:
    return wheelhouse.Wheel(
        Path(f"{name}-{version}-py3-none-any.whl"),
        name,
        Version(version),
        tuple(Requirement(r) for r in requires),
    )


class TestMissingRequirements:
    def test_marker_for_an_older_python_counts_for_that_python(
        self, wheelhouse: ModuleType
    ) -> None:
        """A dependency only older Pythons need is missing for 3.9 and not for 3.11."""
        wheels = [
            wheel(wheelhouse, "agent", "1.0", "aiohttp>=3.8"),
            wheel(wheelhouse, "aiohttp", "3.13.5", 'async-timeout<6,>=4; python_version < "3.11"'),
        ]
        roots = [Requirement("agent==1.0")]

        assert [str(r) for r in wheelhouse.missing_requirements(wheels, roots, "3.9")] == [
            'async-timeout<6,>=4; python_version < "3.11"'
        ]
        assert wheelhouse.missing_requirements(wheels, roots, "3.11") == []

    def test_a_version_outside_the_specifier_is_missing(self, wheelhouse: ModuleType) -> None:
        """A wheel of the right name but a refused version does not satisfy the requirement."""
        wheels = [
            wheel(wheelhouse, "agent", "1.0", "pydantic<3,>=2.5"),
            wheel(wheelhouse, "pydantic", "1.10.4"),
        ]

        missing = wheelhouse.missing_requirements(wheels, [Requirement("agent==1.0")], "3.11")

        assert [str(r) for r in missing] == ["pydantic<3,>=2.5"]

    def test_extras_asked_by_a_parent_are_followed(self, wheelhouse: ModuleType) -> None:
        """`pkg[extra]` brings in the requirements behind that extra."""
        wheels = [
            wheel(wheelhouse, "agent", "1.0", "pkg[fast]"),
            wheel(wheelhouse, "pkg", "2.0", 'speedups; extra == "fast"', 'docs; extra == "doc"'),
        ]

        missing = wheelhouse.missing_requirements(wheels, [Requirement("agent==1.0")], "3.11")

        assert [r.name for r in missing] == ["speedups"]


def pyenv_python(version: str) -> str:
    """The newest pyenv CPython of a minor version (the build machines carry 3.9 to 3.13)."""
    found = sorted(
        glob.glob(str(Path.home() / f".pyenv/versions/{version}.*/bin/python")),
        key=lambda p: Version(Path(p).parents[1].name),
    )
    if not found:
        pytest.fail(f"no pyenv CPython {version} on this machine to check its wheel set with")
    return found[-1]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("version", PYTHON_VERSIONS)
def test_each_python_installs_its_wheel_set(
    version: str, packages: Packages, tmp_path: Path
) -> None:
    """The listed wheels install offline without resolution, are consistent, and the agent runs."""
    wheels = packages.stage / "wheels"
    listed = (wheels / f"requirements-{version}.txt").read_text().split()
    venv = tmp_path / "venv"
    subprocess.run([pyenv_python(version), "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]

    subprocess.run(
        [*pip, "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
        + [str(wheels / n) for n in listed],
        check=True,
        timeout=300,
    )
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=60)
    version_out = subprocess.run(
        [str(venv / "bin" / "smsagent"), "version"], capture_output=True, text=True, timeout=60
    )
    imports = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import aiohttp, pydantic_settings, smsagent.config"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert check.returncode == 0, check.stdout
    assert version_out.stdout.startswith("smsagent "), version_out.stderr
    assert imports.returncode == 0, imports.stderr
