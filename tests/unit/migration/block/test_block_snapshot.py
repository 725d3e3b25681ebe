"""The snapshot plan: which logical volumes get a snapshot, and of what size.

What LVM does with them is tested where device-mapper exists: in a VM
(`tests/system/test_system_agent_vm.py`).
"""

from __future__ import annotations

import os

from smsagent.migration.block.snapshot import (
    MIN_COW_BYTES,
    LogicalVolume,
    cow_sizes,
    parse_lvs,
    task_tag,
)

MIB = 2**20
EXTENT = 4 * MIB


def _lv(
    name: str, size_mib: int, free_mib: int, vg: str = "vg0", attr: str = "-wi-ao----"
) -> LogicalVolume:
    return LogicalVolume(vg, name, attr, size_mib * MIB, free_mib * MIB, EXTENT)


def test_lvs_output_is_keyed_by_device_number() -> None:
    """Active volumes by their kernel numbers; an inactive one (-1) and noise are left out."""
    text = (
        "  vg0|root|254|0|-wi-ao----|4294967296|1073741824|4194304\n"
        "  vg0|var|254|1|owi-ao----|1073741824|1073741824|4194304\n"
        "  vg1|old|-1|-1|-wi-------|1073741824|0|4194304\n"
        "  WARNING: something LVM says\n"
    )
    found = parse_lvs(text)
    assert set(found) == {os.makedev(254, 0), os.makedev(254, 1)}
    assert found[os.makedev(254, 1)] == LogicalVolume(
        "vg0", "var", "owi-ao----", 1 << 30, 1 << 30, EXTENT
    )


def test_half_the_free_space_is_shared_among_a_groups_snapshots() -> None:
    """Two LVs of one group share half its free extents; none is larger than its origin."""
    sizes, skipped = cow_sizes([(0, _lv("root", 4096, 1000)), (1, _lv("var", 100, 1000))])
    assert skipped == {}
    assert sizes == {0: 248 * MIB, 1: 100 * MIB}  # 250 MiB each, rounded down to an extent


def test_a_group_without_room_gets_no_snapshot_and_says_why() -> None:
    sizes, skipped = cow_sizes([(0, _lv("root", 4096, 100)), (1, _lv("data", 4096, 4096, "vg1"))])
    assert sizes == {1: 2048 * MIB}
    assert "vg0 has 100 MiB free" in skipped[0]
    assert 50 * MIB < MIN_COW_BYTES


def test_thin_and_snapshot_volumes_are_left_to_the_frozen_pass() -> None:
    sizes, skipped = cow_sizes([(0, _lv("thin", 100, 4096, attr="Vwi-aotz--"))])
    assert sizes == {}
    assert "not a plain logical volume" in skipped[0]


def test_tag_keeps_only_what_lvm_allows() -> None:
    assert task_tag("1f0c-22 ab/x") == "smsagent_task_1f0c-22_ab_x"
