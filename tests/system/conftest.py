"""Fixtures: the packages built once per run, and Debian 12 roots booted with real systemd."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from tests.support import nspawn

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
BUILD_TIMEOUT_S = 600
_names = itertools.count()


def _load_packaging_script(name: str) -> ModuleType:
    # By path: packaging/ is not a package, the name `packaging` belongs to the library the
    # scripts use.
    path = PACKAGING / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"smsagent_packaging_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(PACKAGING))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(PACKAGING))
    return module


@pytest.fixture(scope="session")
def gen_env_template() -> ModuleType:
    """packaging/gen_env_template.py as a module."""
    return _load_packaging_script("gen_env_template")


@pytest.fixture(scope="session")
def wheelhouse() -> ModuleType:
    """packaging/wheelhouse.py as a module."""
    return _load_packaging_script("wheelhouse")


@dataclass(frozen=True)
class Packages:
    """The .deb and .rpm `packaging/build.py` wrote, and its staging directory."""

    deb: Path
    rpm: Path
    stage: Path


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    """Both packages, built once per test run the way `make package` builds them."""
    work = tmp_path_factory.mktemp("package")
    argv = [sys.executable, str(PACKAGING / "build.py"), "--dist", str(work / "dist")]
    argv += ["--stage", str(work / "stage")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, f"packaging/build.py failed:\n{done.stdout}\n{done.stderr}"
    deb, rpm = (Path(line) for line in done.stdout.split())
    return Packages(deb=deb, rpm=rpm, stage=work / "stage")


def require_root_and_nspawn() -> None:
    """Fail (not skip) with the reason when this machine cannot boot a container."""
    if os.geteuid() != 0:
        pytest.fail("the system tests boot containers and must run as root")
    missing = [
        tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if not shutil.which(tool)
    ]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make system-deps`")


@pytest.fixture(scope="session")
def root_tarball() -> Path:
    """The cached Debian 12 root (built with debootstrap on first use, minutes; then seconds)."""
    require_root_and_nspawn()
    return nspawn.root_tarball()


BootRoot = Callable[[Sequence[Path]], AbstractContextManager[nspawn.Container]]


@pytest.fixture(scope="session")
def boot(root_tarball: Path) -> BootRoot:
    """`with boot(read_only_binds) as container:` boots a fresh root, deleted afterwards."""

    def booted(read_only_binds: Sequence[Path]) -> AbstractContextManager[nspawn.Container]:
        name = f"smsagent-sys-{os.getpid()}-{next(_names)}"
        return nspawn.booted(root_tarball, name, read_only_binds)

    return booted


@pytest.fixture(scope="module")
def container(boot: BootRoot) -> Iterator[nspawn.Container]:
    """A fresh Debian 12 root booted for this module's tests, stopped and deleted after them."""
    with boot(()) as booted:
        yield booted


InstallDeb = Callable[[nspawn.Container, Path], str]


@pytest.fixture(scope="session")
def install_deb() -> InstallDeb:
    """`install_deb(container, deb)` installs a .deb with apt and returns apt's output."""

    def install(container: nspawn.Container, deb: Path) -> str:
        shutil.copy(deb, container.path("/root") / deb.name)
        argv = ["apt-get", "install", "--yes", "--quiet", f"/root/{deb.name}"]
        return container.exec(argv, timeout_s=300).stdout

    return install
