"""FORMAT_DISK_LINUX_FILE against a real target: sshd in a network namespace, loop disks.

What a user would see: the partition table, the file systems and the tree mounted as the task's
layout says; each refusal names the disk and leaves its first and last MiB as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smsagent.api.models import TaskTargetServer
from smsagent.target.disks import (
    DISK_IN_USE,
    DISK_MISSING,
    DISK_NOT_IN_TASK,
    DISK_TOO_SMALL,
)
from smsagent.target.layout import parse_layout
from smsagent.target.prepare import TARGET_CHANGED, PrepareError, TargetPreparer
from smsagent.target.session import TargetSession
from tests.support.target import TargetHost
from tests.support.targetdisks import (
    MIB,
    TargetDisks,
    edges_digest,
    partition_table,
    probe,
    run,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _mbr_bios(device: str, *, disk_size: int = 2048 * MIB) -> TaskTargetServer:
    """Layout (a): MBR, /boot ext4, / ext4, swap (sizes as a source of 1.5 GiB would have)."""
    return TaskTargetServer.model_validate(
        {
            "disks": [
                {
                    "name": device,
                    "partition_style": "MBR",
                    "device_use": "BOOT",
                    "size": disk_size,
                    "relation_name": "/dev/sda",
                    "physical_volumes": [
                        _pv(0, "ext4", "/boot", 256, "11111111-1111-4111-8111-111111111111"),
                        _pv(1, "ext4", "/", 1024, "22222222-2222-4222-8222-222222222222"),
                        _pv(2, "swap", "", 128, "33333333-3333-4333-8333-333333333333"),
                    ],
                }
            ]
        }
    )


def _pv(index: int, fs: str, mount: str, size_mib: int, uuid: str) -> dict[str, Any]:
    return {
        "index": index,
        "file_system": fs,
        "mount_point": mount,
        "size": size_mib * MIB,
        "uuid": uuid,
        "device_use": "NORMAL",
    }


def _preparer(session: TargetSession, host: TargetHost) -> TargetPreparer:
    return TargetPreparer(session, str(host.root), checkpoint=lambda: None)


async def test_mbr_layout_is_made_and_mounted(
    disks: TargetDisks, target_session: TargetSession, target_host: TargetHost
) -> None:
    """Partitions, file systems and mounts as the layout says; the new UUIDs are recorded."""
    device = disks.add(3072)  # larger than the source's disk
    layout = parse_layout(_mbr_bios(device))
    preparer = _preparer(target_session, target_host)

    prepared = await preparer.prepare(layout)

    table = partition_table(device)
    assert table["label"] == "dos"
    sizes = [p["size"] * 512 for p in table["partitions"]]
    assert sizes == [256 * MIB, 1024 * MIB, 128 * MIB]
    assert [p["type"] for p in table["partitions"]] == ["83", "83", "82"]
    assert table["partitions"][0].get("bootable") is True  # /boot is the active one
    found = {v.device: probe(v.device) for v in prepared.volumes}
    assert {d: f["TYPE"] for d, f in found.items()} == {
        f"{device}p1": "ext4",
        f"{device}p2": "ext4",
        f"{device}p3": "swap",
    }
    assert all(v.uuid == found[v.device]["UUID"] for v in prepared.volumes)
    assert all(v.uuid != v.source_uuid for v in prepared.volumes)
    root = str(target_host.root)
    assert sorted(target_host.mounts_below(target_host.root)) == [root, f"{root}/boot"]

    await preparer.unmount()
    assert target_host.mounts_below(target_host.root) == []


async def test_resume_mounts_again_without_formatting(
    disks: TargetDisks, target_session: TargetSession, target_host: TargetHost
) -> None:
    """A prepared target is mounted again as it was: a file written before is still there."""
    device = disks.add(2048)
    preparer = _preparer(target_session, target_host)
    prepared = await preparer.prepare(parse_layout(_mbr_bios(device)))
    (target_host.seen_by_target(target_host.root) / "boot" / "kept").write_text(
        "before the restart\n"
    )
    await preparer.unmount()

    await preparer.remount(prepared)

    assert (
        target_host.seen_by_target(target_host.root) / "boot" / "kept"
    ).read_text() == "before the restart\n"
    await preparer.unmount()


async def test_resume_refuses_a_changed_target(
    disks: TargetDisks, target_session: TargetSession, target_host: TargetHost
) -> None:
    """A volume formatted again behind the agent's back is not mounted as if it were ours."""
    device = disks.add(2048)
    preparer = _preparer(target_session, target_host)
    prepared = await preparer.prepare(parse_layout(_mbr_bios(device)))
    await preparer.unmount()
    run("mkfs.ext4", "-F", "-q", f"{device}p2")

    with pytest.raises(PrepareError) as caught:
        await preparer.remount(prepared)

    assert caught.value.error_code == TARGET_CHANGED
    assert f"{device}p2" in caught.value.message
    assert target_host.mounts_below(target_host.root) == []


async def test_prepare_twice_reuses_nothing_stale(
    disks: TargetDisks, target_session: TargetSession, target_host: TargetHost
) -> None:
    """A prepare cut short and run again (its own mounts still up) lays the disk out afresh."""
    device = disks.add(2048)
    preparer = _preparer(target_session, target_host)
    first = await preparer.prepare(parse_layout(_mbr_bios(device)))

    second = await preparer.prepare(parse_layout(_mbr_bios(device)))

    assert {v.uuid for v in second.volumes}.isdisjoint(v.uuid for v in first.volumes)
    assert len(target_host.mounts_below(target_host.root)) == 2
    await preparer.unmount()


class TestRefusals:
    """Each refusal names the disk and writes nothing to any disk of the task."""

    async def _refused(
        self,
        session: TargetSession,
        host: TargetHost,
        target: TaskTargetServer,
        watched: list[str],
    ) -> PrepareError:
        before = {path: edges_digest(path) for path in watched}
        with pytest.raises(PrepareError) as caught:
            await _preparer(session, host).prepare(parse_layout(target))
        assert {path: edges_digest(path) for path in watched} == before
        assert "nothing was written" in caught.value.message
        return caught.value

    async def test_missing_disk(
        self, disks: TargetDisks, target_session: TargetSession, target_host: TargetHost
    ) -> None:
        present = disks.add(2048)
        target = _mbr_bios(present)
        data_disk = {
            "name": "/dev/loop-nonexistent9",
            "partition_style": "GPT",
            "size": 1024 * MIB,
            "physical_volumes": [
                _pv(0, "xfs", "/data", 512, "44444444-4444-4444-8444-444444444444")
            ],
        }
        target = TaskTargetServer.model_validate(
            {"disks": [target.disks[0].model_dump(), data_disk]}  # type: ignore[index]
        )
        error = await self._refused(target_session, target_host, target, [present])
        assert error.error_code == DISK_MISSING
        assert "/dev/loop-nonexistent9" in error.message

    async def test_disk_smaller_than_its_layout(
        self, disks: TargetDisks, target_session: TargetSession, target_host: TargetHost
    ) -> None:
        device = disks.add(1024)  # the layout needs about 1.4 GiB
        error = await self._refused(target_session, target_host, _mbr_bios(device), [device])
        assert error.error_code == DISK_TOO_SMALL
        assert device in error.message and "1024 MiB" in error.message

    async def test_mounted_disk(
        self,
        disks: TargetDisks,
        target_session: TargetSession,
        target_host: TargetHost,
        tmp_path: Path,
    ) -> None:
        device = disks.add(2048)
        run("sfdisk", "--quiet", device, stdin="label: dos\nsize=512MiB, type=83\n")
        run("partx", "--add", device, check=False)
        run("mkfs.ext4", "-F", "-q", f"{device}p1")
        elsewhere = tmp_path / "someone-elses-mount"
        elsewhere.mkdir()
        # Mounted on the target: in the mount namespace its commands run in.
        target_host.in_mount_namespace("mount", f"{device}p1", str(elsewhere))
        try:
            error = await self._refused(target_session, target_host, _mbr_bios(device), [device])
        finally:
            target_host.in_mount_namespace("umount", str(elsewhere))
        assert error.error_code == DISK_IN_USE
        assert f"{device}p1 is mounted at {elsewhere}" in error.message

    async def test_volume_group_reaching_a_disk_not_in_the_task(
        self, disks: TargetDisks, target_session: TargetSession, target_host: TargetHost
    ) -> None:
        device = disks.add(2048)
        other = disks.add(256)
        group = f"{disks.tag}vg"
        no_activation = ("--config", "global { activation = 0 }")
        run("pvcreate", "--quiet", "--yes", *no_activation, device, other)
        run("vgcreate", "--quiet", "--yes", *no_activation, group, device, other)
        error = await self._refused(target_session, target_host, _mbr_bios(device), [device, other])
        assert error.error_code == DISK_NOT_IN_TASK
        assert group in error.message and other in error.message
