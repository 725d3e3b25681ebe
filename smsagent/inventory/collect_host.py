"""Collect the host facts (OS, CPU, memory, firmware, boot loader, platform, tools, NICs)."""

from __future__ import annotations

import os
from typing import Optional

import structlog

from smsagent.api.enums import BootLoader, Firmware, Platform
from smsagent.inventory import net, osinfo
from smsagent.inventory.facts import HostFacts
from smsagent.inventory.probe import Probe

log = structlog.get_logger()

RAW_DEVICE_DIR = "/dev/raw"


def collect_host(probe: Probe, timeout_s: float) -> HostFacts:
    """Read every host fact; each missing one is logged and reported as absent."""
    uname = os.uname()
    return HostFacts(
        hostname=uname.nodename,
        kernel_version=uname.release,
        machine=uname.machine,
        os_release=_os_release(probe),
        cpu_count=os.cpu_count(),
        memory_mb=_memory_mb(probe),
        firmware=Firmware.UEFI if probe.exists(osinfo.EFI_DIR) else Firmware.BIOS,
        boot_loader=_boot_loader(probe),
        paravirtualization=_paravirtualized(probe),
        raw_devices=_raw_devices(probe),
        platform=_platform(probe),
        has_rsync=probe.which("rsync") is not None,
        has_tc=probe.which("tc") is not None,
        nics=tuple(_nics(probe, timeout_s)),
    )


def _os_release(probe: Probe) -> dict[str, str]:
    for path in osinfo.OS_RELEASE_PATHS:
        text = probe.read_text(path)
        if text is not None:
            return osinfo.parse_os_release(text)
    log.warning("inventory_fact_absent", fact="os_release", reason="no os-release file")
    return {}


def _memory_mb(probe: Probe) -> Optional[int]:
    memory_mb = osinfo.parse_memory_mb(probe.read_text(osinfo.MEMINFO_PATH) or "")
    if memory_mb is None:
        log.warning("inventory_fact_absent", fact="memory", reason="no MemTotal in /proc/meminfo")
    return memory_mb


def _boot_loader(probe: Probe) -> Optional[BootLoader]:
    if any(probe.exists(path) for path in osinfo.GRUB_PATHS):
        return BootLoader.GRUB
    if any(probe.exists(path) for path in osinfo.LILO_PATHS):
        return BootLoader.LILO
    log.warning("inventory_fact_absent", fact="boot_loader", reason="no GRUB or LILO files")
    return None


def _paravirtualized(probe: Probe) -> bool:
    # Only Xen PV guests report "PV" here; HVM and PVH guests boot like bare metal.
    guest_type = probe.read_text(osinfo.HYPERVISOR_GUEST_TYPE)
    return guest_type is not None and guest_type.strip() == "PV"


def _raw_devices(probe: Probe) -> str:
    # raw(8) bindings appear as /dev/raw/rawN; /dev/raw/rawctl is the control node, not a device.
    names = probe.list_dir(RAW_DEVICE_DIR) or []
    return ",".join(f"{RAW_DEVICE_DIR}/{name}" for name in names if name != "rawctl")


def _platform(probe: Probe) -> Optional[Platform]:
    dmi = {}
    for name in osinfo.DMI_FIELDS:
        text = probe.read_text(f"{osinfo.DMI_DIR}/{name}")
        if text is not None:
            dmi[name] = text.strip()
    if not dmi:
        log.info("inventory_fact_absent", fact="platform", reason=f"{osinfo.DMI_DIR} unreadable")
        return None
    return osinfo.platform_from_dmi(dmi)


def _nics(probe: Probe, timeout_s: float) -> list[net.Nic]:
    addr_text = probe.run(net.ADDR_ARGV, timeout_s)
    if addr_text is None:
        log.warning("inventory_fact_absent", fact="networks", reason="ip address failed")
        return []
    try:
        routes4 = net.parse_routes(probe.run(net.ROUTE4_ARGV, timeout_s) or "")
        routes6 = net.parse_routes(probe.run(net.ROUTE6_ARGV, timeout_s) or "")
        return net.parse_nics(addr_text, routes4, routes6)
    except net.IpFormatError as exc:
        log.warning("inventory_fact_absent", fact="networks", reason=str(exc))
        return []
