"""Facts about the operating system and the machine: os-release, memory, platform from DMI."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Final, Optional

from smsagent.api.enums import Platform

OS_RELEASE_PATHS: Final = ("/etc/os-release", "/usr/lib/os-release")
MEMINFO_PATH: Final = "/proc/meminfo"
DMI_DIR: Final = "/sys/class/dmi/id"
EFI_DIR: Final = "/sys/firmware/efi"
HYPERVISOR_GUEST_TYPE: Final = "/sys/hypervisor/guest_type"
GRUB_PATHS: Final = (
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/boot/grub",
    "/boot/grub2",
    "/etc/default/grub",
)
LILO_PATHS: Final = ("/etc/lilo.conf",)

# The display names SMS uses for the distributions it supports, keyed by os-release ID.
_DISTRIBUTION_NAMES: Final = {
    "almalinux": "AlmaLinux",
    "alinux": "Alibaba Cloud Linux",
    "amzn": "Amazon Linux",
    "anolis": "Anolis",
    "centos": "CentOS",
    "debian": "Debian",
    "euleros": "EulerOS",
    "fedora": "Fedora",
    "hce": "Huawei Cloud EulerOS",
    "kylin": "Kylin",
    "ol": "Oracle",
    "openeuler": "openEuler",
    "opensuse-leap": "OpenSUSE",
    "rhel": "Red Hat",
    "rocky": "Rocky",
    "sled": "SUSE",
    "sles": "SUSE",
    "tencentos": "TencentOS",
    "ubuntu": "Ubuntu",
    "uos": "UOS",
}
_32_BIT_MACHINES: Final = frozenset({"i386", "i486", "i586", "i686", "armv7l", "armv6l"})
# Azure's Hyper-V guests carry this fixed chassis asset tag; plain Hyper-V ones do not.
_AZURE_ASSET_TAG: Final = "7783-7084-3265-9085-8269-3286-77"
DMI_FIELDS: Final = (
    "sys_vendor",
    "product_name",
    "bios_vendor",
    "bios_version",
    "chassis_asset_tag",
)


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of os-release(5), with shell quoting removed."""
    values = {}
    for line in text.splitlines():
        key, sep, raw = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = " ".join(parts)
    return values


def os_version(os_release: Mapping[str, str], machine: str) -> str:
    """SMS style: `Debian 12 server 64bit`, `CentOS 7.9 server 64bit`."""
    distro_id = os_release.get("ID", "").lower()
    name = _DISTRIBUTION_NAMES.get(distro_id) or os_release.get("NAME") or "Linux"
    version = os_release.get("VERSION_ID", "")
    bits = "32bit" if machine in _32_BIT_MACHINES else "64bit"
    return " ".join(part for part in (name, version, "server", bits) if part)


def parse_memory_mb(meminfo: str) -> Optional[int]:
    """MemTotal in MB (the unit SMS documents), or None when the line is missing."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) // 1024
    return None


def platform_from_dmi(dmi: Mapping[str, str]) -> Platform:
    """The cloud or hypervisor this server runs on, read from SMBIOS strings."""
    vendor = dmi.get("sys_vendor", "").lower()
    product = dmi.get("product_name", "").lower()
    bios = f"{dmi.get('bios_vendor', '')} {dmi.get('bios_version', '')}".lower()
    asset_tag = dmi.get("chassis_asset_tag", "")
    if "huaweicloud" in asset_tag.lower().replace(" ", "") or "huawei cloud" in product:
        return Platform.hw
    if "alibaba" in vendor or "alibaba" in product:
        return Platform.ali
    if "amazon" in vendor or "amazon" in bios:
        return Platform.aws
    if "microsoft" in vendor and "virtual machine" in product:
        return Platform.azure if asset_tag == _AZURE_ASSET_TAG else Platform.hyperv
    if vendor.startswith("google") or "google compute engine" in product:
        return Platform.gcp
    if "tencent" in vendor or "tencent" in product:
        return Platform.tencent
    if "vmware" in vendor or "vmware" in product:
        return Platform.vmware
    return Platform.other
