"""Fixture trees of migrated systems (Debian 12, Ubuntu, RHEL 9) and their prepared targets,
and a chroot runner that records commands instead of running them (fixture trees have no
binaries)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from smsagent.target.layout import BootMode
from smsagent.target.prepared import PreparedTarget, PreparedVolume
from smsagent.target.session import CompletedRemote

SRC_ROOT = "11111111-1111-4111-8111-111111111111"
SRC_BOOT = "22222222-2222-4222-8222-222222222222"
SRC_SWAP = "33333333-3333-4333-8333-333333333333"
SRC_DATA = "44444444-4444-4444-8444-444444444444"
SRC_ESP = "ABCD-1234"
NEW_ROOT = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
NEW_BOOT = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
NEW_SWAP = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
NEW_DATA = "dddddddd-dddd-4ddd-8ddd-dddddddddddd"
NEW_ESP = "EF00-0001"
KERNEL_DEBIAN = "6.1.0-18-amd64"
KERNEL_DEBIAN_OLD = "6.1.0-9-amd64"
KERNEL_RHEL = "5.14.0-362.8.1.el9_3.x86_64"


@dataclass
class RecordingRunner:
    """Records each chroot command; `failures` maps a command name to (status, stderr)."""

    calls: list[tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=list)
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)

    async def __call__(
        self, argv: Sequence[str], env: Mapping[str, str], stdin: Optional[bytes]
    ) -> CompletedRemote:
        self.calls.append((tuple(argv), dict(env)))
        status, stderr = self.failures.get(argv[0], (0, ""))
        tail = tuple(stderr.splitlines())
        return CompletedRemote(tuple(argv), status, b"", tail)

    @property
    def argvs(self) -> list[tuple[str, ...]]:
        return [argv for argv, _ in self.calls]


def put(root: Path, path: str, text: str = "", mode: int = 0o644) -> Path:
    """Write a file of the tree (parents made)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
    return target


def link(root: Path, path: str, target: str) -> None:
    where = root / path.lstrip("/")
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(target)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file and link of the tree (links as their target), to compare two runs."""
    found: dict[str, bytes] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            path = Path(directory) / name
            rel = "/" + str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = b"-> " + str(path.readlink()).encode()
            elif path.is_file():
                found[rel] = path.read_bytes()
    return found


DEBIAN_FSTAB = f"""\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
# / was on /dev/sda1 during installation
UUID={SRC_ROOT} /               ext4    errors=remount-ro 0       1
# /boot was on /dev/sda2 during installation
UUID="{SRC_BOOT}" /boot ext4 defaults 0 2
# swap was on /dev/sda5 during installation
UUID={SRC_SWAP} none            swap    sw              0       0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
/dev/sdb1\t/data\text4\tdefaults,nofail\t0\t2
tmpfs /tmp tmpfs defaults,size=1G 0 0
nas:/export /mnt/nas nfs4 defaults,_netdev 0 0
"""

DEBIAN_INTERFACES = """\
# This file describes the network interfaces available on your system
source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug ens192
iface ens192 inet static
\taddress 192.168.10.20/24
\tgateway 192.168.10.1
\thwaddress ether 00:50:56:aa:bb:cc
\tdns-nameservers 192.168.10.1
"""


def debian_tree(root: Path, *, uefi: bool = False) -> None:
    """A Debian 12 system with ifupdown, swap, a separate /boot and cloud-init."""
    put(
        root,
        "/usr/lib/os-release",
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nID=debian\n',
    )
    link(root, "/etc/os-release", "../usr/lib/os-release")
    link(root, "/lib", "usr/lib")
    for version in (KERNEL_DEBIAN_OLD, KERNEL_DEBIAN):
        put(root, f"/usr/lib/modules/{version}/modules.dep")
        put(root, f"/boot/vmlinuz-{version}", "kernel")
    put(root, f"/boot/initrd.img-{KERNEL_DEBIAN}", "initrd")
    put(root, "/etc/fstab", DEBIAN_FSTAB)
    put(root, "/etc/network/interfaces", DEBIAN_INTERFACES)
    put(
        root,
        "/etc/network/interfaces.d/ens224",
        "auto ens224\niface ens224 inet static\n    address 10.0.0.5\n    netmask 255.255.255.0\n",
    )
    put(root, "/etc/udev/rules.d/70-persistent-net.rules", 'SUBSYSTEM=="net", NAME="ens192"\n')
    put(
        root,
        "/etc/default/grub",
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n"
        "GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n"
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        f'GRUB_CMDLINE_LINUX="root=UUID={SRC_ROOT} resume=UUID={SRC_SWAP} console=ttyS0"\n',
    )
    put(root, "/etc/initramfs-tools/modules", "# List of modules\n#virtio_blk\nvirtio_net\n")
    put(root, "/etc/initramfs-tools/conf.d/resume", f"RESUME=UUID={SRC_SWAP}\n")
    put(root, "/etc/cloud/cloud.cfg", "users: [default]\n")
    put(root, "/etc/smsagent/smsagent.env", "SMSAGENT_SK=secret\n", mode=0o600)
    put(root, "/var/lib/smsagent/task.json", "{}\n", mode=0o600)
    put(
        root, "/lib/systemd/system/smsagent.service", "[Service]\nExecStart=/usr/bin/smsagent run\n"
    )
    link(
        root,
        "/etc/systemd/system/multi-user.target.wants/smsagent.service",
        "/lib/systemd/system/smsagent.service",
    )
    link(
        root,
        "/etc/systemd/system/multi-user.target.wants/ssh.service",
        "/lib/systemd/system/ssh.service",
    )
    for name in ("dev", "proc", "sys", "run"):
        (root / name).mkdir(exist_ok=True)
    if uefi:
        put(root, "/boot/efi/EFI/debian/grubx64.efi", "grub")


def debian_prepared(root: Path, *, uefi: bool = False, with_data: bool = False) -> PreparedTarget:
    volumes = [
        PreparedVolume("/dev/vdb2" if uefi else "/dev/vdb1", "ext4", "/", NEW_ROOT, SRC_ROOT),
        PreparedVolume("/dev/vdb3" if uefi else "/dev/vdb2", "ext4", "/boot", NEW_BOOT, SRC_BOOT),
        PreparedVolume("/dev/vdb5", "swap", None, NEW_SWAP, SRC_SWAP),
    ]
    if uefi:
        volumes.insert(2, PreparedVolume("/dev/vdb1", "vfat", "/boot/efi", NEW_ESP, SRC_ESP))
    if with_data:
        volumes.append(PreparedVolume("/dev/vdc1", "ext4", "/data", NEW_DATA, SRC_DATA))
    return PreparedTarget(
        root=str(root),
        boot_mode=BootMode.UEFI if uefi else BootMode.BIOS,
        boot_disk="/dev/vdb",
        volumes=tuple(volumes),
    )


UBUNTU_NETPLAN = """\
# This file is generated from information provided by the datasource.
network:
    ethernets:
        ens160:
            addresses:
            - 172.16.5.10/24
            gateway4: 172.16.5.1
            match:
                macaddress: 00:50:56:11:22:33
            set-name: ens160
    version: 2
"""


def ubuntu_tree(root: Path) -> None:
    """Ubuntu 22.04 with netplan, a root-only layout and GRUB_FORCE_PARTUUID."""
    put(root, "/etc/os-release", 'NAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n')
    put(root, "/lib/modules/5.15.0-91-generic/modules.dep")
    put(root, "/boot/vmlinuz-5.15.0-91-generic", "kernel")
    put(root, "/boot/initrd.img-5.15.0-91-generic", "initrd")
    put(
        root,
        "/etc/fstab",
        "LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,errors=remount-ro\t0 1\n"
        "/swap.img\tnone\tswap\tsw\t0\t0\n",
    )
    put(root, "/etc/netplan/50-cloud-init.yaml", UBUNTU_NETPLAN, mode=0o600)
    put(
        root,
        "/etc/default/grub",
        'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=""\nGRUB_CMDLINE_LINUX=""\n',
    )
    put(root, "/etc/default/grub.d/40-force-partuuid.cfg", "GRUB_FORCE_PARTUUID=0b3c5a9e-01\n")
    put(root, "/etc/initramfs-tools/modules", "# List of modules\n")
    for name in ("dev", "proc", "sys", "run"):
        (root / name).mkdir(exist_ok=True)


def ubuntu_prepared(root: Path) -> PreparedTarget:
    return PreparedTarget(
        root=str(root),
        boot_mode=BootMode.BIOS,
        boot_disk="/dev/vdb",
        volumes=(PreparedVolume("/dev/vdb1", "ext4", "/", NEW_ROOT, SRC_ROOT),),
    )


RHEL_IFCFG = """\
TYPE=Ethernet
PROXY_METHOD=none
BOOTPROTO="none"
DEFROUTE=yes
NAME=eth0
UUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03
DEVICE=eth0
ONBOOT=yes
IPADDR=10.20.0.15
PREFIX=24
GATEWAY=10.20.0.1
DNS1=10.20.0.2
HWADDR=52:54:00:12:34:56
"""

RHEL_NMCONNECTION = """\
[connection]
id=ens3
uuid=0d8bbd32-8c1d-4b0a-9d56-9a2fa6b7a2c1
type=ethernet
interface-name=ens3

[ethernet]
mac-address=52:54:00:AB:CD:EF

[ipv4]
address1=10.30.0.7/24,10.30.0.1
dns=10.30.0.2;
method=manual

[ipv6]
addr-gen-mode=eui64
method=auto

[proxy]
"""

RHEL_BLS = f"""\
title Rocky Linux (5.14.0-362.8.1.el9_3.x86_64) 9.3 (Blue Onyx)
version 5.14.0-362.8.1.el9_3.x86_64
linux /vmlinuz-5.14.0-362.8.1.el9_3.x86_64
initrd /initramfs-5.14.0-362.8.1.el9_3.x86_64.img $tuned_initrd
options root=/dev/mapper/rl-root ro resume=UUID={SRC_SWAP} rd.lvm.lv=rl/root \
rd.lvm.lv=rl/swap crashkernel=1G-4G:192M
grub_users $grub_users
grub_arg --unrestricted
grub_class rocky
"""


def rhel_tree(root: Path, *, uefi: bool = False) -> None:
    """Rocky Linux 9 on LVM (`rl/root`, `rl/swap`), ifcfg + NetworkManager, BLS, SELinux."""
    put(
        root,
        "/etc/os-release",
        'NAME="Rocky Linux"\nVERSION_ID="9.3"\nID="rocky"\nID_LIKE="rhel centos fedora"\n',
    )
    put(root, f"/lib/modules/{KERNEL_RHEL}/modules.dep")
    put(root, f"/boot/vmlinuz-{KERNEL_RHEL}", "kernel")
    put(root, "/boot/vmlinuz-0-rescue-0123456789abcdef", "rescue kernel")
    put(
        root,
        "/etc/fstab",
        f"/dev/mapper/rl-root     /                       xfs     defaults        0 0\n"
        f"UUID={SRC_BOOT} /boot                   xfs     defaults        0 0\n"
        + (f"UUID={SRC_ESP}  /boot/efi  vfat    umask=0077,shortname=winnt 0 2\n" if uefi else "")
        + "/dev/mapper/rl-swap     none                    swap    defaults        0 0\n",
    )
    put(root, "/etc/sysconfig/network-scripts/ifcfg-eth0", RHEL_IFCFG)
    put(root, "/etc/sysconfig/network-scripts/ifcfg-lo", "DEVICE=lo\nIPADDR=127.0.0.1\n")
    put(
        root,
        "/etc/NetworkManager/system-connections/ens3.nmconnection",
        RHEL_NMCONNECTION,
        mode=0o600,
    )
    put(
        root,
        "/etc/default/grub",
        'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="crashkernel=1G-4G:192M resume=UUID='
        + SRC_SWAP
        + ' rd.lvm.lv=rl/root rd.lvm.lv=rl/swap"\n'
        'GRUB_DISABLE_RECOVERY="true"\nGRUB_ENABLE_BLSCFG=true\n',
    )
    put(root, f"/boot/loader/entries/0123456789abcdef-{KERNEL_RHEL}.conf", RHEL_BLS)
    grubenv = "# GRUB Environment Block\nsaved_entry=0123456789abcdef-" + KERNEL_RHEL + "\n"
    put(root, "/boot/grub2/grubenv", grubenv + "#" * (1024 - len(grubenv)))
    put(root, "/etc/selinux/config", "SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    put(
        root,
        "/etc/lvm/devices/system.devices",
        "VERSION=1.1.2\nIDTYPE=sys_wwid IDNAME=naa.6000 DEVNAME=/dev/sda2 PVID=abc\n",
    )
    put(root, "/etc/systemd/system/smsagent.service", "[Service]\nExecStart=/opt/smsagent run\n")
    for name in ("dev", "proc", "sys", "run"):
        (root / name).mkdir(exist_ok=True)
    if uefi:
        put(root, "/boot/efi/EFI/rocky/shimx64.efi", "shim")
        put(root, "/boot/efi/EFI/rocky/grubx64.efi", "grub")
        put(
            root,
            "/boot/efi/EFI/rocky/grub.cfg",
            f"search --no-floppy --root-dev-only --fs-uuid --set=dev {SRC_BOOT}\n"
            "set prefix=($dev)/grub2\nexport $prefix\nconfigfile $prefix/grub.cfg\n",
        )


def rhel_prepared(root: Path, *, uefi: bool = False) -> PreparedTarget:
    volumes = [
        PreparedVolume("/dev/rl/root", "xfs", "/", NEW_ROOT, SRC_ROOT),
        PreparedVolume("/dev/vdb2" if uefi else "/dev/vdb1", "xfs", "/boot", NEW_BOOT, SRC_BOOT),
        PreparedVolume("/dev/rl/swap", "swap", None, NEW_SWAP, SRC_SWAP),
    ]
    if uefi:
        volumes.insert(1, PreparedVolume("/dev/vdb1", "vfat", "/boot/efi", NEW_ESP, SRC_ESP))
    return PreparedTarget(
        root=str(root),
        boot_mode=BootMode.UEFI if uefi else BootMode.BIOS,
        boot_disk="/dev/vdb",
        volumes=tuple(volumes),
        volume_groups=("rl",),
    )
