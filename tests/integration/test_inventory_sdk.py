"""The inventory of this very machine is a valid registration body for us and for the SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smsagent.api.models import PostSourceServerBody, PutDiskInfoReq
from smsagent.inventory.builder import build_disk_info, build_registration_body, layout_fingerprint
from tests.support.inventory_sdk import sdk_round_trip

pytestmark = pytest.mark.timeout(60)


def test_machine_body_fits_our_model_and_the_sdk() -> None:
    """Built here, the body validates with our model and round-trips through the SDK's model."""
    wire = build_registration_body().to_wire()
    assert PostSourceServerBody.model_validate(wire).to_wire() == wire
    assert sdk_round_trip(wire) == wire
    assert wire["os_type"] == "LINUX" and wire["networks"][0]["mac"]
    assert wire["btrfs_list"] == [] or all("uuid" in fs for fs in wire["btrfs_list"])


def test_machine_disk_info_fits_the_sdk() -> None:
    """The disk-info body round-trips through the SDK's PutDiskInfoReq."""
    wire = build_disk_info().to_wire()
    assert PutDiskInfoReq.model_validate(wire).to_wire() == wire
    assert sdk_round_trip(wire, "PutDiskInfoReq") == wire


def test_registration_and_disk_info_share_a_fingerprint() -> None:
    """Both bodies describe the same layout, so the reporter does not re-send after registering."""
    assert layout_fingerprint(build_registration_body()) == layout_fingerprint(build_disk_info())


def test_root_file_system_is_reported_on_the_os_disk() -> None:
    """The volume mounted at / is marked OS and sits on the disk marked as the system disk."""
    body = build_registration_body()
    root_volumes = [
        (disk, volume)
        for disk in body.disks
        for volume in disk.physical_volumes
        if volume.mount_point == "/"
    ]
    lv_roots = [
        lv for vg in body.volume_groups for lv in vg.logical_volumes if lv.mount_point == "/"
    ]
    if not root_volumes and not lv_roots:
        pytest.skip("the root file system is not on a block device here (container)")
    for disk, volume in root_volumes:
        assert volume.device_use == "OS" and disk.os_disk is True
    assert body.disks[0].os_disk is True


def test_cli_prints_the_body_quickly() -> None:
    """`smsagent inventory --pretty` prints valid indented JSON and finishes within 2 s."""
    started = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "smsagent"), "inventory", "--pretty"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    elapsed_s = time.monotonic() - started
    body = PostSourceServerBody.model_validate(json.loads(done.stdout))
    assert done.stdout.startswith("{\n  ")
    assert body.agent_version and body.os_version.endswith("64bit")
    assert elapsed_s < 2.0
