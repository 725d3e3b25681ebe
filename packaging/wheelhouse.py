"""Collects the wheels smsagent needs on each supported CPython, and one manifest per version.

`pip download --python-version` picks wheels for the target version but evaluates environment
markers (`async-timeout; python_version < "3.11"`) against the interpreter running pip, so a
set downloaded on 3.11 for 3.9 misses packages. After each download the set is checked against
the markers of the target version, and what is missing is fetched in another round.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

PLATFORM = "manylinux2014_x86_64"
MAX_ROUNDS = 5


@dataclass(frozen=True)
class Wheel:
    """One downloaded wheel: its file, project name, version and declared requirements."""

    path: Path
    name: str
    version: Version
    requires: tuple[Requirement, ...]


def read_wheel(path: Path) -> Wheel:
    """Read the name, version and Requires-Dist of a wheel file."""
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(archive.read(metadata_name).decode("utf-8"))
    requires = tuple(Requirement(line) for line in headers.get_all("Requires-Dist") or [])
    return Wheel(path, canonicalize_name(name), version, requires)


def target_environment(python_version: str) -> dict[str, str]:
    """The marker environment of CPython `python_version` on x86_64 Linux."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "os_name": "posix",
    }


def _applies(requirement: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in extras | {""})


def missing_requirements(
    wheels: Sequence[Wheel], roots: Sequence[Requirement], python_version: str
) -> list[Requirement]:
    """Requirements of the set (under the target's markers) that no wheel in it satisfies."""
    env = target_environment(python_version)
    by_name = {w.name: w for w in wheels}
    extras: dict[str, set[str]] = {}
    pending = list(roots)
    seen: set[str] = set()
    missing: list[Requirement] = []
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        extras.setdefault(name, set()).update(requirement.extras)
        wheel = by_name.get(name)
        if wheel is None or not requirement.specifier.contains(wheel.version, prereleases=True):
            missing.append(requirement)
            continue
        key = f"{name}[{','.join(sorted(extras[name]))}]"
        if key in seen:
            continue
        seen.add(key)
        pending += [r for r in wheel.requires if _applies(r, env, extras[name])]
    return missing


def _without_marker(requirement: Requirement) -> str:
    # The marker was already evaluated for the target; pip would evaluate it for itself.
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def pip_download(requirements: Iterable[str], python_version: str, dest: Path) -> None:
    """Download binary wheels for `python_version` on manylinux2014 x86_64 into `dest`."""
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    argv += ["--only-binary=:all:", "--implementation", "cp", "--platform", PLATFORM]
    argv += ["--python-version", python_version, "--dest", str(dest), *requirements]
    subprocess.run(argv, check=True)


def resolve(root_wheel: Path, python_version: str, dest: Path) -> list[Wheel]:
    """Download `root_wheel`'s dependency closure for one version into `dest` and return it."""
    pip_download([str(root_wheel)], python_version, dest)
    root = read_wheel(root_wheel)
    roots = [Requirement(f"{root.name}=={root.version}")]
    for _ in range(MAX_ROUNDS):
        wheels = [read_wheel(p) for p in sorted(dest.glob("*.whl"))]
        missing = missing_requirements(wheels, roots, python_version)
        if not missing:
            return wheels
        wanted = {canonicalize_name(r.name) for r in missing}
        pins = [f"{w.name}=={w.version}" for w in wheels if w.name not in wanted | {root.name}]
        pip_download([*pins, *(_without_marker(r) for r in missing)], python_version, dest)
    raise RuntimeError(f"the wheels for Python {python_version} do not close: {missing}")


def collect(root_wheel: Path, python_versions: Sequence[str], wheel_dir: Path) -> None:
    """Fill `wheel_dir` with every version's wheels and write `requirements-<version>.txt` lists."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for python_version in python_versions:
        with tempfile.TemporaryDirectory(prefix="smsagent-wheels-") as scratch:
            wheels = resolve(root_wheel, python_version, Path(scratch))
            for wheel in wheels:
                if not (wheel_dir / wheel.path.name).exists():
                    shutil.copy2(wheel.path, wheel_dir / wheel.path.name)
            names = sorted(w.path.name for w in wheels)
        manifest = wheel_dir / f"requirements-{python_version}.txt"
        manifest.write_text("".join(f"{name}\n" for name in names))
    add_installer(python_versions[0], wheel_dir)


def add_installer(oldest_python: str, wheel_dir: Path) -> None:
    """Put pip's wheel in `wheel_dir`: `setup-venv` runs pip from it (`python pip-*.whl/pip`),
    so the venv is made without one. A pure-Python wheel for the oldest version runs on all."""
    with tempfile.TemporaryDirectory(prefix="smsagent-pip-") as scratch:
        pip_download(["pip"], oldest_python, Path(scratch))
        found = sorted(Path(scratch).glob("pip-*-py3-none-any.whl"))
        if len(found) != 1:
            raise RuntimeError(f"expected one pip wheel for Python {oldest_python}, got {found}")
        for stale in wheel_dir.glob("pip-*.whl"):
            stale.unlink()
        shutil.copy2(found[0], wheel_dir / found[0].name)
