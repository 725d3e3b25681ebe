"""Build the registration body, the disk-info body and the layout fingerprint of this server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Optional, Union

import structlog

from smsagent import __version__
from smsagent.api.enums import OsType
from smsagent.api.models import NetWork, PostSourceServerBody, PutDiskInfoReq
from smsagent.inventory import osinfo
from smsagent.inventory.collect_host import collect_host
from smsagent.inventory.collect_storage import collect_storage
from smsagent.inventory.facts import HostFacts
from smsagent.inventory.layout import StorageLayout, build_layout
from smsagent.inventory.probe import DEFAULT_TIMEOUT_S, Probe, SystemProbe

log = structlog.get_logger()

# Enough threads for every independent probe to run at once; they mostly wait on children.
_WORKERS: Final = 8
# Sizes that change while the server runs; they must not make the layout look changed.
_VOLATILE_KEYS: Final = frozenset(
    {"used_size", "free_size", "inode_nums", "g_vol_used_size", "global_reserve1"}
)
_NAME_LIMIT: Final = 64


@dataclass(frozen=True)
class InventoryOptions:
    """How to look at this server.

    Args:
        extra_disks: knames reported as disks although they are not (loop devices standing in
            for disks).
        root_mount_point: the mount point of the source server's root file system.
        command_timeout_s: the limit for each probing command.
    """

    extra_disks: Collection[str] = ()
    root_mount_point: str = "/"
    command_timeout_s: float = DEFAULT_TIMEOUT_S


def build_registration_body(
    server_name: Optional[str] = None,
    *,
    agent_version: str = __version__,
    options: InventoryOptions = InventoryOptions(),
    probe: Optional[Probe] = None,
) -> PostSourceServerBody:
    """Collect this server's facts and shape them as the `POST /v3/sources` body (spec §3.3).

    Blocking (subprocesses and file reads); from asyncio call it through `asyncio.to_thread`.

    Args:
        server_name: the display name; the host name when None or empty.
    """
    probe = probe or SystemProbe()
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="inventory") as pool:
        host_future = pool.submit(collect_host, probe, options.command_timeout_s)
        layout = _layout(probe, pool, options)
        host = host_future.result()
    return assemble_body(host, layout, server_name=server_name, agent_version=agent_version)


def build_disk_info(
    *, options: InventoryOptions = InventoryOptions(), probe: Optional[Probe] = None
) -> PutDiskInfoReq:
    """Collect the storage facts only and shape them as the `PUT .../diskinfo` body (spec §3.4)."""
    probe = probe or SystemProbe()
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="inventory") as pool:
        layout = _layout(probe, pool, options)
    return disk_info_from_layout(layout)


def assemble_body(
    host: HostFacts, layout: StorageLayout, *, server_name: Optional[str], agent_version: str
) -> PostSourceServerBody:
    """The registration body from collected facts (pure)."""
    networks = [
        NetWork(
            name=n.name,
            ip=n.ip,
            ipv6=n.ipv6,
            netmask=n.netmask,
            gateway=n.gateway,
            mtu=n.mtu,
            mac=n.mac,
        )
        for n in host.nics
    ]
    first = host.nics[0] if host.nics else None
    if first is None:
        log.warning("inventory_fact_absent", fact="ip", reason="no interface with an address")
    return PostSourceServerBody(
        name=(server_name or host.hostname)[:_NAME_LIMIT] or "localhost",
        hostname=host.hostname[:_NAME_LIMIT] or None,
        ip=first.ip if first else None,
        ipv6=first.ipv6 if first else None,
        os_type=OsType.LINUX,
        os_version=osinfo.os_version(host.os_release, host.machine),
        kernel_version=host.kernel_version,
        firmware=host.firmware.value,
        boot_loader=host.boot_loader.value if host.boot_loader else None,
        cpu_quantity=host.cpu_count,
        memory=host.memory_mb,
        disks=layout.disks,
        volume_groups=layout.volume_groups,
        btrfs_list=layout.btrfs_list,
        networks=networks,
        has_rsync=host.has_rsync,
        has_tc=host.has_tc,
        paravirtualization=host.paravirtualization,
        raw_devices=host.raw_devices,
        platform=host.platform.value if host.platform else None,
        agent_version=agent_version,
    )


def disk_info_from_layout(layout: StorageLayout) -> PutDiskInfoReq:
    """The disk-info body; SMS replaces its stored disks with it, so every list is sent."""
    return PutDiskInfoReq(
        disks=layout.disks, volumegroups=layout.volume_groups, btrfs_list=layout.btrfs_list
    )


def layout_fingerprint(body: Union[PostSourceServerBody, PutDiskInfoReq]) -> str:
    """A stable hash of disks, volume groups and btrfs, blind to used and free sizes.

    A registration body and a disk-info body of the same layout have the same fingerprint.
    """
    if isinstance(body, PostSourceServerBody):
        volume_groups = body.volume_groups
        disks, btrfs_list = body.disks, body.btrfs_list
    else:
        volume_groups = body.volumegroups or []
        disks, btrfs_list = body.disks or [], body.btrfs_list or []
    document = {
        "disks": [d.to_wire() for d in disks],
        "volume_groups": [vg.to_wire() for vg in volume_groups],
        "btrfs": [b.to_wire() for b in btrfs_list],
    }
    canonical = json.dumps(_without_volatile(document), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _layout(probe: Probe, pool: ThreadPoolExecutor, options: InventoryOptions) -> StorageLayout:
    facts = collect_storage(probe, pool, options.command_timeout_s)
    return build_layout(facts, options.extra_disks, options.root_mount_point)


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(item) for item in value]
    return value
