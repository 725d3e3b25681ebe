"""The registration body, the disk-info body and the layout fingerprint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from structlog.testing import capture_logs

from smsagent.api.enums import BootLoader, Firmware, Platform
from smsagent.api.models import PhysicalVolume, PostSourceServerBody
from smsagent.inventory.builder import (
    InventoryOptions,
    assemble_body,
    build_registration_body,
    disk_info_from_layout,
    layout_fingerprint,
)
from smsagent.inventory.facts import HostFacts
from smsagent.inventory.layout import StorageLayout, build_layout
from smsagent.inventory.net import Nic
from smsagent.inventory.probe import SystemProbe
from tests.unit.inventory.samples import GIB, lvm_server

HOST = HostFacts(
    hostname="web01",
    kernel_version="6.1.0-18-amd64",
    machine="x86_64",
    os_release={"ID": "debian", "VERSION_ID": "12"},
    cpu_count=4,
    memory_mb=7936,
    firmware=Firmware.UEFI,
    boot_loader=BootLoader.GRUB,
    paravirtualization=False,
    raw_devices="",
    platform=Platform.vmware,
    has_rsync=True,
    has_tc=False,
    nics=(
        Nic("eth1", "10.1.0.5", "255.255.0.0", None, "10.1.0.1", 9000, "aa:00:00:00:00:02"),
        Nic("eth0", None, None, "2001:db8::5", None, 1500, "aa:00:00:00:00:01"),
    ),
)


def _layout() -> StorageLayout:
    return build_layout(lvm_server())


class TestAssembleBody:
    def test_host_facts_become_the_body(self) -> None:
        """Every host fact lands in its wire field; the default-route NIC gives ip."""
        wire = assemble_body(HOST, _layout(), server_name="db-7", agent_version="1.2.3").to_wire()
        assert {k: wire[k] for k in ("name", "hostname", "ip", "os_type", "os_version")} == {
            "name": "db-7",
            "hostname": "web01",
            "ip": "10.1.0.5",
            "os_type": "LINUX",
            "os_version": "Debian 12 server 64bit",
        }
        assert (wire["firmware"], wire["boot_loader"], wire["platform"]) == (
            "UEFI",
            "GRUB",
            "vmware",
        )
        assert (wire["cpu_quantity"], wire["memory"], wire["agent_version"]) == (4, 7936, "1.2.3")
        assert (wire["has_rsync"], wire["has_tc"], wire["paravirtualization"]) == (
            True,
            False,
            False,
        )
        assert wire["raw_devices"] == ""
        assert [n["name"] for n in wire["networks"]] == ["eth1", "eth0"]
        assert wire["networks"][0] == {
            "name": "eth1",
            "ip": "10.1.0.5",
            "netmask": "255.255.0.0",
            "gateway": "10.1.0.1",
            "mtu": 9000,
            "mac": "aa:00:00:00:00:02",
        }

    def test_name_defaults_to_the_host_name_and_fits_64_characters(self) -> None:
        """No name given: the host name; a long one is cut to SMS's 64-character limit."""
        host = dataclasses.replace(HOST, hostname="h" * 80)
        body = assemble_body(host, _layout(), server_name=None, agent_version="1")
        assert body.name == "h" * 64 and body.hostname == "h" * 64

    def test_absent_facts_are_left_out_not_invented(self) -> None:
        """Without NICs, boot loader, platform or memory the body omits them and is still valid."""
        host = dataclasses.replace(
            HOST, nics=(), boot_loader=None, platform=None, memory_mb=None, cpu_count=None
        )
        wire = assemble_body(host, _layout(), server_name=None, agent_version="1").to_wire()
        for field in ("ip", "ipv6", "boot_loader", "platform", "memory", "cpu_quantity"):
            assert field not in wire
        assert wire["networks"] == []
        assert PostSourceServerBody.model_validate(wire).to_wire() == wire


class TestFingerprint:
    def test_used_sizes_do_not_change_it(self) -> None:
        """Writing data changes used and free sizes, never the fingerprint."""
        facts = lvm_server()
        full = {
            point: dataclasses.replace(u, free_bytes=0, used_bytes=u.total_bytes, inode_count=9)
            for point, u in facts.usage.items()
        }
        busier = dataclasses.replace(facts, usage=full)
        before, after = build_layout(facts), build_layout(busier)
        assert before.disks != after.disks
        assert layout_fingerprint(disk_info_from_layout(before)) == layout_fingerprint(
            disk_info_from_layout(after)
        )

    def test_a_new_partition_changes_it(self) -> None:
        """One more partition on a disk is a different layout."""
        layout = _layout()
        grown = layout.disks[1].model_copy(
            update={
                "physical_volumes": [
                    *layout.disks[1].physical_volumes,
                    PhysicalVolume(name="/dev/sdb2", size=GIB),
                ]
            }
        )
        changed = StorageLayout([layout.disks[0], grown], layout.volume_groups, layout.btrfs_list)
        assert layout_fingerprint(disk_info_from_layout(changed)) != layout_fingerprint(
            disk_info_from_layout(layout)
        )

    def test_a_resized_logical_volume_changes_it(self) -> None:
        """lvextend shows up as a layout change."""
        layout = _layout()
        vg = layout.volume_groups[0]
        root = vg.logical_volumes[0].model_copy(update={"size": 60 * GIB})
        resized_vg = vg.model_copy(update={"logical_volumes": [root, *vg.logical_volumes[1:]]})
        changed = StorageLayout(layout.disks, [resized_vg], layout.btrfs_list)
        assert layout_fingerprint(disk_info_from_layout(changed)) != layout_fingerprint(
            disk_info_from_layout(layout)
        )

    def test_registration_and_disk_info_bodies_agree(self) -> None:
        """The two bodies of one layout have one fingerprint."""
        layout = _layout()
        body = assemble_body(HOST, layout, server_name=None, agent_version="1")
        assert layout_fingerprint(body) == layout_fingerprint(disk_info_from_layout(layout))


class TestMissingTools:
    def test_no_tools_at_all_still_gives_a_valid_body(self, tmp_path: Path) -> None:
        """With an empty PATH every command is missing: facts are absent and logged, no crash."""
        probe = SystemProbe(search_path=str(tmp_path))
        with capture_logs() as logs:
            body = build_registration_body("bare", probe=probe, options=InventoryOptions())
        assert (body.name, body.disks, body.networks, body.volume_groups) == ("bare", [], [], [])
        assert (body.has_rsync, body.has_tc) == (False, False)
        missing = {e["tool"] for e in logs if e["event"] == "inventory_tool_missing"}
        assert {"lsblk", "vgs", "lvs", "btrfs", "ip"} <= missing
        assert {e["fact"] for e in logs if e["event"] == "inventory_fact_absent"} >= {
            "disks",
            "networks",
        }
        assert PostSourceServerBody.model_validate(body.to_wire()).os_version.endswith("64bit")
