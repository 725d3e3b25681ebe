"""The packaged agent installed in a helper VM (`tests.support.helpervm`) and run by its systemd.

The helper image has systemd, sshd, rsync and python3: all the package depends on. Should an
image lack one of them (`AGENT_DEPENDENCIES`), the missing Debian packages are fetched once with
the host's apt, resolved against the image's own dpkg status (so exactly what the image lacks),
and cached beside the image as `<image>.agentdeps-<hash>.tar`; the VM installs them with dpkg,
then the agent's .deb with apt as an operator would. Nothing in the VM reaches a package archive.
"""

from __future__ import annotations

import fcntl
import hashlib
import shlex
import subprocess
import tempfile
from pathlib import Path

from tests.support.helpervm import HelperVM, HelperVMError, image_key
from tests.support.nspawn import DEFAULT_CACHE_DIR, SUITE

# What the .deb depends on that a helper image might lack (rsync and ssh are in it).
AGENT_DEPENDENCIES = ("python3",)
INSTALL_DIR = "/root/smsagent-install"
QEMU_HOST = "10.0.2.2"
"""The host's loopback as a guest on qemu's user network sees it."""


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        msg = f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr}"
        raise HelperVMError(msg)
    return done


def dependency_debs(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The tarball of the .debs the agent's package needs in the helper VM, made on first use.

    Named after the helper image's key, so a new image makes `helper_image()` drop it, and after
    the packages asked for.
    """
    stem = cache_dir / f"helpervm-{SUITE}-{image_key()}"
    wanted = hashlib.sha256(" ".join(AGENT_DEPENDENCIES).encode()).hexdigest()[:8]
    tarball = stem.with_name(f"{stem.name}.agentdeps-{wanted}.tar")
    image_tree = stem.with_suffix(".tar")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".helpervm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(prefix="smsagent-agentdeps-", dir=cache_dir) as work:
            root = Path(work)
            _run(["tar", "-C", work, "-xf", str(image_tree), "./var/lib/dpkg/status"], 300)
            archives = root / "debs"
            (archives / "partial").mkdir(parents=True)
            argv = ["apt-get", "--quiet", "--yes", "--no-install-recommends"]
            argv += ["-o", f"Dir::State::status={root / 'var/lib/dpkg/status'}"]
            argv += ["-o", f"Dir::Cache::archives={archives}"]
            # Only the image's dpkg database is read; the host's is neither changed nor locked.
            argv += ["-o", "Debug::NoLocking=1", "install", "--download-only"]
            _run([*argv, *AGENT_DEPENDENCIES], 600)
            debs = sorted(path.name for path in archives.glob("*.deb"))
            partial = tarball.with_suffix(".partial")
            # Empty when the image has them all (`-T /dev/null`: tar refuses an empty list).
            _run(["tar", "-C", str(archives), "-cf", str(partial), "-T", "/dev/null", *debs], 300)
            partial.rename(tarball)
    return tarball


def install_agent(vm: HelperVM, deb: Path, dependencies: Path) -> None:
    """Install the dependencies with dpkg, then the agent's .deb with apt, in the VM."""
    vm.ssh("mkdir", "-p", f"{INSTALL_DIR}/deps")
    rsh = shlex.join(vm.ssh_argv())
    _run(["rsync", "-e", rsh, str(dependencies), str(deb), f"{vm.ip}:{INSTALL_DIR}/"], 300)
    script = f"""set -e
cd {INSTALL_DIR}
tar -C deps -xf {shlex.quote(dependencies.name)}
export DEBIAN_FRONTEND=noninteractive
set -- deps/*.deb
if [ -e "$1" ]; then dpkg --install "$@"; fi
apt-get install --yes --quiet ./{shlex.quote(deb.name)}
"""
    vm.ssh("sh", "-c", script, timeout=900)
