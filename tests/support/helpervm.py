"""A migration target that is a real VM: qemu (TCG) booted from a small helper image, as in SMS.

In Huawei SMS the target is a VM booted from an agent image with the target's disks attached;
the source agent reaches it over SSH and partitions, formats (LVM, a vfat ESP), mounts and fills
those disks. The host kernel of our tests has neither device-mapper nor vfat, so layouts with LVM
or an ESP can only be exercised in a guest with its own kernel: this one.

The helper image is a debootstrapped Debian 12 with a kernel, sshd and the disk tools, cached by
content as a tarball (and a raw ext4 image made from it with `mke2fs -d`, no mount needed) in the
cache directory of `tests.support.nspawn`. Each VM boots that image's kernel directly, its root
disk a throw-away snapshot of the cached image (`snapshot=on`), the given target disks after it
as /dev/vdb, /dev/vdc... written through (`cache=none`), SSH forwarded to a loopback port, and the
test's public key carried on the kernel command line to a oneshot unit that authorizes it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from tests.support.nspawn import DEFAULT_CACHE_DIR, SUITE, debian_mirror

QEMU = "qemu-system-x86_64"
# In every name a VM or an image build leaves on the host: `<prefix><pid>x<hex>`, so that
# `sweep_stale()` can tell a killed run's leftovers (its pid is gone) from a live run's.
PREFIX = "smshelpervm"
# Bump when the build or the customisation below changes in a way the package list does not show.
SCRIPT_VERSION = 2
IMAGE_SIZE = "2G"  # the root image is sparse; the tree is a few hundred MB
HOSTNAME = "smshelper"
TARGET_ROOT = "/mnt/smsroot"
PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    "systemd",
    "systemd-sysv",
    "udev",
    "openssh-server",
    "rsync",
    "util-linux",
    "fdisk",
    "e2fsprogs",
    "xfsprogs",
    "dosfstools",
    "btrfs-progs",
    "lvm2",
    "kmod",
    "iproute2",
    "python3-minimal",
    "procps",
)
# Documentation, manuals and translations nobody reads in a helper VM (also kept out of any
# package installed in it later).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
# Kernel modules for hardware a virtio VM does not have: half of the image's size.
DROPPED_MODULE_DIRS = (
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/bluetooth",
    "kernel/drivers/iio",
    "kernel/drivers/usb",
    "kernel/drivers/isdn",
    "kernel/drivers/hwmon",
    "kernel/sound",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
)
# What the initramfs needs to find and mount /dev/vda; the rest loads from the root later.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic")
MASKED_UNITS = (
    "apt-daily.service",
    "apt-daily.timer",
    "apt-daily-upgrade.service",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-firstboot.service",
    "systemd-networkd-wait-online.service",
    "getty@tty1.service",
)
_SSHD_CONFIG = """\
# The helper VM: root by key only, no passwords, no DNS lookups of clients.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 64
MaxSessions 64
"""
_NETWORK = """\
[Match]
Type=ether

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""
# Writes the key from the kernel command line (`smsagent.authkey=<base64>`) for root, and makes
# the directory that stands for the target root.
_AUTHKEY_SCRIPT = f"""\
#!/bin/sh
set -eu
mkdir -p {TARGET_ROOT}
install -d -m 0700 /root/.ssh
for word in $(cat /proc/cmdline); do
    case "$word" in
        smsagent.authkey=*)
            echo "${{word#smsagent.authkey=}}" | base64 -d >/root/.ssh/authorized_keys ;;
    esac
done
chmod 0600 /root/.ssh/authorized_keys
"""
_AUTHKEY_UNIT = """\
[Unit]
Description=Authorize the test's SSH key from the kernel command line
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/smsagent-authkey
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""
_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
}


class HelperVMError(RuntimeError):
    """The helper image could not be built, or the VM not booted or driven."""


def _run(
    argv: Sequence[str], *, timeout: float = 120.0, stdin: Optional[str] = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        msg = (
            f"{' '.join(argv)} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
        raise HelperVMError(msg)
    return done


def missing_requirements() -> Optional[str]:
    """Why a helper VM cannot be run here, or None when it can."""
    if os.geteuid() != 0:
        return "the helper VM needs root (debootstrap, loop devices)"
    for tool in (QEMU, "debootstrap", "mke2fs", "ssh", "ssh-keygen", "losetup"):
        if shutil.which(tool, path=_ENV["PATH"]) is None:
            return f"{tool} is missing (qemu-system-x86, debootstrap, e2fsprogs, openssh-client)"
    return None


# -- the image --


@dataclass(frozen=True)
class HelperImage:
    """The cached helper image: its root disk (raw ext4), kernel and initramfs."""

    disk: Path
    kernel: Path
    initrd: Path


def image_key() -> str:
    """The content key of the image: the package list, the script version, the customisation."""
    recipe = [
        SUITE,
        sorted(PACKAGES),
        SCRIPT_VERSION,
        DPKG_EXCLUDES,
        DROPPED_MODULE_DIRS,
        INITRAMFS_MODULES,
        MASKED_UNITS,
        _SSHD_CONFIG,
        _NETWORK,
        _AUTHKEY_SCRIPT,
        _AUTHKEY_UNIT,
        HOSTNAME,
        IMAGE_SIZE,
    ]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]


def helper_image(cache_dir: Path = DEFAULT_CACHE_DIR) -> HelperImage:
    """The cached helper image, built on first use (once, under a lock, for concurrent workers).

    Cached: `helpervm-bookworm-<key>.tar` (the tree), and beside it `.img` (the root disk, made
    from the tree with `mke2fs -d`), `.vmlinuz` and `.initrd`. Files of another key are stale.
    """
    key = image_key()
    stem = cache_dir / f"helpervm-{SUITE}-{key}"
    image = HelperImage(
        disk=stem.with_suffix(".img"),
        kernel=stem.with_suffix(".vmlinuz"),
        initrd=stem.with_suffix(".initrd"),
    )
    tarball = stem.with_suffix(".tar")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".helpervm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            _bootstrap_into(tarball)
        if not all(path.exists() for path in (image.disk, image.kernel, image.initrd)):
            _disk_from_tarball(tarball, image)
        for stale in cache_dir.glob(f"helpervm-{SUITE}-*"):
            if not stale.name.startswith(stem.name):
                stale.unlink(missing_ok=True)
    return image


def _bootstrap_into(tarball: Path) -> None:
    with tempfile.TemporaryDirectory(
        prefix=f"{PREFIX}{os.getpid()}x-build-", dir=tarball.parent
    ) as work:
        root = Path(work) / "root"
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        argv += [SUITE, str(root), debian_mirror()]
        _run(argv, timeout=1800)
        _customise(root)
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)


def _customise(root: Path) -> None:
    """Make the tree a helper image: small, sshd by key only, DHCP, the key unit."""
    etc = root / "etc"
    (etc / "dpkg" / "dpkg.cfg.d" / "smsagent-nodoc").write_text("\n".join(DPKG_EXCLUDES) + "\n")
    for pattern in ("usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*"):
        for path in root.glob(pattern):
            if path.name in ("locale.alias",):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # debootstrap leaves the .debs it installed (a quarter of the tree).
    for cached in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        cached.unlink()
    for cached in (root / "var" / "cache" / "apt").glob("*.bin"):
        cached.unlink()
    for lists in (root / "var" / "lib" / "apt" / "lists").glob("*_*"):
        lists.unlink()
    (etc / "hostname").write_text(f"{HOSTNAME}\n")
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    (etc / "fstab").write_text("# the root is /dev/vda, mounted rw by the kernel\n")
    (etc / "ssh" / "sshd_config.d" / "smsagent.conf").write_text(_SSHD_CONFIG)
    (etc / "systemd" / "network" / "50-dhcp.network").write_text(_NETWORK)
    script = root / "usr" / "local" / "sbin" / "smsagent-authkey"
    script.write_text(_AUTHKEY_SCRIPT)
    script.chmod(0o755)
    units = etc / "systemd" / "system"
    (units / "smsagent-authkey.service").write_text(_AUTHKEY_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    for unit, target in (
        ("smsagent-authkey.service", "/etc/systemd/system/smsagent-authkey.service"),
        ("ssh.service", "/lib/systemd/system/ssh.service"),
        ("systemd-networkd.service", "/lib/systemd/system/systemd-networkd.service"),
    ):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(target)
    for unit in MASKED_UNITS:
        masked = units / unit
        if masked.is_symlink() or masked.exists():
            masked.unlink()
        masked.symlink_to("/dev/null")
    _trim_kernel(root)


def _trim_kernel(root: Path) -> None:
    """Drop modules for absent hardware, and make a small initramfs that mounts /dev/vda."""
    for modules in (root / "lib" / "modules").iterdir():
        for relative in DROPPED_MODULE_DIRS:
            shutil.rmtree(modules / relative, ignore_errors=True)
        _run(["chroot", str(root), "depmod", "-a", modules.name], timeout=300)
    conf = root / "etc" / "initramfs-tools"
    (conf / "conf.d" / "smsagent").write_text("MODULES=list\n")
    with open(conf / "modules", "a") as handle:
        handle.write("".join(f"{module}\n" for module in INITRAMFS_MODULES))
    _run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"], timeout=600)


def _disk_from_tarball(tarball: Path, image: HelperImage) -> None:
    """The root disk, kernel and initramfs, from the tree without mounting anything."""
    with tempfile.TemporaryDirectory(
        prefix=f"{PREFIX}{os.getpid()}x-disk-", dir=tarball.parent
    ) as work:
        tree = Path(work) / "root"
        tree.mkdir()
        _run(["tar", "-C", str(tree), "--numeric-owner", "-xpf", str(tarball)], timeout=600)
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        initrds = sorted((tree / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise HelperVMError(f"expected one kernel and initrd in the image: {kernels} {initrds}")
        partial = Path(work) / "disk.img"
        _run(
            [
                "mke2fs",
                "-q",
                "-t",
                "ext4",
                "-L",
                "smshelper",
                "-d",
                str(tree),
                str(partial),
                IMAGE_SIZE,
            ],
            timeout=600,
        )
        shutil.copyfile(kernels[0], Path(work) / "vmlinuz")
        shutil.copyfile(initrds[0], Path(work) / "initrd")
        # The disk last: its presence says the set is complete.
        for name, final in (("vmlinuz", image.kernel), ("initrd", image.initrd)):
            os.replace(Path(work) / name, final)
        os.replace(partial, image.disk)


# -- the VM --


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _qemu_quote(value: str) -> str:
    """A value inside a qemu option list (`file=...,format=...`): commas doubled."""
    return value.replace(",", ",,")


def _keygen(path: Path) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "smsagent-task", "-f", str(path)])


@dataclass
class HelperVM:
    """One booted helper VM; made by `helper_vm()`.

    Attributes:
        ip: where its sshd is reached (a loopback port forwarded by qemu).
        port: that port.
        root: the directory inside the VM that stands for the target root.
        client_key: the task key's private half (ed25519, OpenSSH format, mode 0600).
        disks: the host devices or images attached after the VM's own root disk, in order.
    """

    name: str
    workdir: Path
    disks: tuple[str, ...]
    client_key: Path
    image: HelperImage
    memory_mib: int = 1024
    cpu: str = "qemu64"
    """The emulated CPU. qemu64 (SSE2 only) beats `max`: TCG emulates AVX2 slowly, and the
    guest's ssh, rsync and checksums then pick AVX2 code (rsync over ssh: 9 MB/s against 6)."""
    ip: str = "127.0.0.1"
    port: int = 0
    data_port: int = 0
    """A second loopback port forwarded to the same port in the VM (a block receiver's data
    port); 0 for none."""
    root: str = TARGET_ROOT
    boot_seconds: float = 0.0
    """How long from starting qemu until the first SSH command succeeded."""
    _qemu: Optional[subprocess.Popen[bytes]] = field(default=None, repr=False)

    @property
    def console_log(self) -> Path:
        """The serial console's output."""
        return self.workdir / "console.log"

    @property
    def client_private_key_pem(self) -> str:
        """The task key as text, as `GET /v3/tasks/{id}/certkey` would return it."""
        return self.client_key.read_text()

    @property
    def client_public_key(self) -> str:
        """The public key line authorized for root in the VM."""
        return Path(f"{self.client_key}.pub").read_text().strip()

    @property
    def qemu_pid(self) -> Optional[int]:
        """qemu's pid while it runs, else None."""
        if self._qemu is None or self._qemu.poll() is not None:
            return None
        return self._qemu.pid

    @staticmethod
    def guest_device(index: int) -> str:
        """The guest's name of the `index`-th target disk (0 -> /dev/vdb; vda is its root)."""
        if not 0 <= index < 25:
            raise ValueError(f"no virtio disk name for target disk {index}")
        return f"/dev/vd{string.ascii_lowercase[index + 1]}"

    # -- lifecycle --

    def start(self, boot_timeout_s: float) -> None:
        """Start qemu and return once an SSH command succeeds in the VM."""
        started = time.monotonic()
        for attempt in range(3):
            self.port = _free_port()
            self._spawn()
            try:
                self._wait_ssh(started + boot_timeout_s)
            except _PortTaken:
                # Another process took the port between our probe and qemu's bind.
                if attempt == 2:
                    raise
                continue
            self.boot_seconds = time.monotonic() - started
            return

    def _argv(self) -> list[str]:
        key = base64.b64encode(self.client_public_key.encode()).decode()
        cmdline = [
            "root=/dev/vda",
            "rootfstype=ext4",
            "rw",
            "console=ttyS0,115200",
            "panic=-1",
            "mitigations=off",
            "systemd.show_status=auto",
            f"smsagent.authkey={key}",
        ]
        argv = [QEMU, "-name", self.name, "-nodefaults", "-no-user-config", "-no-reboot"]
        argv += [
            "-machine",
            "q35,accel=tcg",
            "-cpu",
            self.cpu,
            "-smp",
            "2",
            "-m",
            str(self.memory_mib),
        ]
        argv += ["-display", "none", "-serial", f"file:{self.console_log}", "-monitor", "none"]
        argv += ["-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd)]
        argv += ["-append", " ".join(cmdline)]
        # The root: the cached image read-only, the VM's writes to a temporary file qemu deletes.
        # Disks are PCI devices in command-line order, which is the guest's vda, vdb... order.
        argv += [
            "-drive",
            f"file={_qemu_quote(str(self.image.disk))},format=raw,if=none,id=root,snapshot=on",
        ]
        argv += ["-device", "virtio-blk-pci,drive=root,serial=smshelperroot"]
        for index, disk in enumerate(self.disks):
            # cache=none: O_DIRECT, the VM's writes reach the device as they are issued.
            argv += [
                "-drive",
                f"file={_qemu_quote(disk)},format=raw,if=none,id=target{index},cache=none",
            ]
            argv += ["-device", f"virtio-blk-pci,drive=target{index},serial=smstarget{index}"]
        forwards = f"hostfwd=tcp:127.0.0.1:{self.port}-:22"
        if self.data_port:
            forwards += f",hostfwd=tcp:127.0.0.1:{self.data_port}-:{self.data_port}"
        argv += ["-netdev", f"user,id=net0,{forwards}"]
        argv += ["-device", "virtio-net-pci,netdev=net0", "-device", "virtio-rng-pci"]
        return argv

    def _spawn(self) -> None:
        self.console_log.write_bytes(b"")
        with open(self.workdir / "qemu.log", "ab") as log:
            self._qemu = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # snapshot=on's temporary overlay goes to $TMPDIR: the VM's own directory.
                env={**_ENV, "TMPDIR": str(self.workdir)},
                start_new_session=True,
            )

    def _qemu_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "qemu.log").read_text(errors="replace")[-2000:]
        return ""

    def _wait_ssh(self, deadline: float) -> None:
        while True:
            assert self._qemu is not None
            if self._qemu.poll() is not None:
                log = self._qemu_log()
                if "hostfwd" in log or "Could not set up host forwarding" in log:
                    raise _PortTaken(log)
                msg = f"qemu exited {self._qemu.returncode}: {log}\n{self.console_tail(40)}"
                raise HelperVMError(msg)
            # Until sshd answers, qemu accepts and then drops or stalls the connection.
            attempt_s = min(20.0, max(5.0, deadline - time.monotonic()))
            with contextlib.suppress(subprocess.TimeoutExpired):
                probe = self.ssh("true", check=False, timeout=attempt_s, connect_timeout=5)
                if probe.returncode == 0:
                    return
            if time.monotonic() >= deadline:
                msg = f"no SSH into the helper VM in time; console:\n{self.console_tail(40)}"
                raise HelperVMError(msg)
            time.sleep(1.0)

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Power the VM off cleanly and wait for qemu to exit; kill it past `timeout_s`.

        A clean poweroff has the guest flush its disks; qemu then closes them, so what the VM
        wrote is on the target disks when this returns.
        """
        if self.qemu_pid is None:
            self._qemu = None
            return
        assert self._qemu is not None
        # The session is cut by the poweroff itself; its exit status means nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ssh("systemctl", "poweroff", "--no-block", check=False, timeout=30)
        try:
            self._qemu.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise HelperVMError(
                f"the VM did not power off in {timeout_s:.0f} s; console:\n{self.console_tail(40)}"
            ) from None
        self._qemu = None

    def kill(self) -> None:
        """Stop qemu now (SIGTERM, which still closes the disks, then SIGKILL); idempotent."""
        if self._qemu is None:
            return
        if self._qemu.poll() is None:
            self._qemu.terminate()
            try:
                self._qemu.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._qemu.kill()
                self._qemu.wait(timeout=15)
        self._qemu = None

    # -- commands --

    def ssh_argv(self, *, connect_timeout: float = 10) -> list[str]:
        """`ssh` with the task key as root to the VM's port, without the host (which rsync's
        `-e` adds itself: `rsync -e "$(shlex.join(vm.ssh_argv()))" src/ 127.0.0.1:/dst/`)."""
        options = {
            "IdentitiesOnly": "yes",
            "BatchMode": "yes",
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": "/dev/null",
            "LogLevel": "ERROR",
            "ConnectTimeout": f"{connect_timeout:.0f}",
            "ServerAliveInterval": "10",
            "ServerAliveCountMax": "3",
            "User": "root",
        }
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.client_key), "-p", str(self.port)]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        return argv

    def ssh(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120.0,
        input_text: Optional[str] = None,
        connect_timeout: float = 10,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the VM as root (each argument quoted for the remote shell).

        Raises:
            HelperVMError: `check` is set and the command exited non-zero.
            subprocess.TimeoutExpired: it took over `timeout` seconds.
        """
        command = shlex.join(argv)
        done = subprocess.run(
            [*self.ssh_argv(connect_timeout=connect_timeout), self.ip, "--", command],
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_ENV,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise HelperVMError(
                f"{command} exited {done.returncode} in the VM:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def console_tail(self, n: int = 40) -> str:
        """The last `n` lines of the serial console, for failure messages."""
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])


class _PortTaken(HelperVMError):
    """qemu could not bind the forwarded port."""


@contextlib.contextmanager
def helper_vm(
    workdir: Path,
    disks: Sequence[Union[str, Path]],
    *,
    memory_mib: int = 1024,
    cpu: str = "qemu64",
    boot_timeout_s: float = 240.0,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    data_port: bool = False,
) -> Iterator[HelperVM]:
    """A booted helper VM with `disks` attached as /dev/vdb, /dev/vdc...; killed on exit.

    With `data_port`, a second loopback port is forwarded to the same port in the VM
    (`vm.data_port`), where a block receiver can listen.

    Leaving the block normally does not power the VM off: call `shutdown()` first when what it
    wrote to the disks matters (the exit's SIGTERM still has qemu close them, but the guest
    may not have flushed its own caches).
    """
    image = helper_image(cache_dir)
    name = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
    vmdir = workdir / name
    vmdir.mkdir(parents=True)
    client_key = vmdir / "task_key"
    _keygen(client_key)
    vm = HelperVM(
        name=name,
        workdir=vmdir,
        disks=tuple(str(disk) for disk in disks),
        client_key=client_key,
        image=image,
        memory_mib=memory_mib,
        cpu=cpu,
        data_port=_free_port() if data_port else 0,
    )
    try:
        vm.start(boot_timeout_s)
        yield vm
    finally:
        vm.kill()
        shutil.rmtree(vmdir, ignore_errors=True)


def running_vms() -> dict[int, str]:
    """Every helper VM's qemu on this host: pid -> VM name (`smshelpervm<pid>x<hex>`)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(QEMU.encode()) or b"-name" not in argv[:-1]:
            continue
        name = argv[argv.index(b"-name") + 1].decode(errors="replace")
        if name.startswith(PREFIX):
            found[int(entry)] = name
    return found


def sweep_stale(cache_dir: Path = DEFAULT_CACHE_DIR) -> None:
    """Kill the qemu of VMs and remove the image builds whose creating process is gone.

    Only leftovers whose pid (in their name) is dead are touched, so concurrent runs are safe.
    """
    for pid, name in running_vms().items():
        if _is_stale(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if cache_dir.exists():
        for leftover in cache_dir.glob(f"{PREFIX}*"):
            if _is_stale(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)


def _is_stale(name: str) -> bool:
    match = re.match(PREFIX + r"(\d+)x", name)
    return match is not None and not Path(f"/proc/{match.group(1)}").exists()
