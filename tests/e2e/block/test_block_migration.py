"""A whole server migrated at block level boots: layout (a), a real Debian 12 system on loop
disks, copied by the agent's MIGRATE_BLOCK work onto target disks of another size behind a real
sshd in a network namespace, and booted in qemu (TCG) with the same console checks as the
file-level migration. Then 1 % of its data files change and a sync pass sends those blocks and
the blocks the configuration changed on the target, nothing else, and the target boots again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from smsagent.target.prepared import PreparedTarget
from tests.support import blockcopy, helpervm, qemuboot, sourcesys
from tests.support.blocktls import make_cert_key, ssh_public_key
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import migration_rig
from tests.support.target import TargetHost
from tests.support.targetdisks import MIB, TargetDisks, target_disks
from tests.support.wholeserver import (
    EXTRA_MIB,
    Migration,
    boot_target,
    target_server,
    whole_server_migration,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1200)]

FORMAT = "FORMAT_DISK_LINUX_BLOCK"
MIGRATE = "MIGRATE_LINUX_BLOCK"
CONFIGURE = "CONFIGURE_LINUX_BLOCK"


@pytest.fixture
async def migration(
    tmp_path: Path,
    emulator: EmulatorProcess,
    target_host: TargetHost,
    mbr_bios_source: sourcesys.SourceSystem,
    disks: TargetDisks,
) -> AsyncIterator[Migration]:
    certkey = make_cert_key(tmp_path / "tls")
    async with whole_server_migration(
        tmp_path / "agent", emulator, target_host, mbr_bios_source, disks, block=certkey
    ) as made:
        yield made


DATA_FILES = 200
DATA_FILE_BYTES = 256 * 1024


def add_data(root: Path) -> list[Path]:
    """The server's data: files under /srv/data (system files are left as they are: the target
    must boot)."""
    return blockcopy.write_files(root / "srv", DATA_FILES, DATA_FILE_BYTES)


def change_files(files: list[Path], share: float) -> int:
    """Rewrite `share` of `files` in place with new bytes; returns the bytes changed."""
    changed = 0
    for path in files[:: max(1, round(1 / share))]:
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(os.urandom(size))
        changed += size
    return changed


async def test_block_migrated_server_boots_and_a_sync_pass_sends_only_what_changed(
    migration: Migration, tmp_path: Path
) -> None:
    rig = migration.rig
    data = add_data(migration.source.root)

    await rig.start()
    settled = await rig.settled(timeout_s=900)

    assert settled.result is CommandResult.success, settled.message
    assert settled.state is State.replicated
    reports = rig.progress_reports()
    stages = [r["subtask_name"] for r in reports]
    assert stages.index(FORMAT) < stages.index(MIGRATE) < stages.index(CONFIGURE)
    # SMS's figures for block tasks: the total is the volumes' size (not the used space), the
    # copy rises to it, and the compression is reported.
    copying = [r for r in reports if r["subtask_name"] == MIGRATE]
    volumes = [v for v in migration.source.volumes if v.mount_point in ("/", "/boot")]
    assert {r["totalsize"] for r in copying} == {sum(v.size_bytes for v in volumes)}
    done = [r["replicatesize"] for r in copying]
    assert done == sorted(done) and done[-1] == copying[-1]["totalsize"]
    assert copying[-1]["progress"] == 100
    assert 0 < copying[-1]["compress_rate"] < 100
    assert rig.record().progress_of(MIGRATE).resume.get("consistency") == "frozen"
    # A test boot between syncs runs on a snapshot, as SMS's test launch does: a block sync
    # sends what changed on the source and trusts the target to hold what it was sent.
    migration.boot(tmp_path / "full.console", snapshot=True)

    marker = migration.source.root / "srv" / "changed-after-the-copy.txt"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("written on the source after the full copy\n")
    (migration.source.root / "etc" / "smsagent-bootcheck.markers").write_text(
        "/srv/changed-after-the-copy.txt\n"
    )
    changed = change_files(data, 0.01)
    await rig.start()
    synced = await rig.settled(timeout_s=900)

    assert synced.result is CommandResult.success, synced.message
    # The pass sends what changed on the source, and restores what configuring the target
    # changed there (its initramfs, GRUB, fstab: reported apart), nothing else.
    restored = synced.detail["bytes_configured_on_target"]
    assert 0 < restored < 64 * MIB, synced.detail
    assert synced.detail["bytes_sent"] <= 5 * changed + restored + 4 * MIB, (synced.detail, changed)
    result = migration.boot(tmp_path / "sync.console")
    want = hashlib.sha256(marker.read_bytes()).hexdigest()
    assert result.checks.markers == {"/srv/changed-after-the-copy.txt": want}


@pytest.mark.parametrize("layout", ["gpt-bios-lvm", "gpt-uefi"])
async def test_block_migrated_lvm_and_uefi_servers_boot_through_a_helper_vm_target(
    layout: str, tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """Layouts (b) and (c) at block level: the target is a VM booted from a helper image (as in
    SMS; this host's kernel has neither device-mapper nor vfat) with the target disks attached
    and the data port forwarded. The LVs are copied by their used blocks; the ESP (vfat, which
    this host cannot mount) is read whole, its zeros sent as zero frames."""
    firmware = "uefi" if layout == "gpt-uefi" else "bios"
    reason = (
        sourcesys.missing_requirements()
        or qemuboot.missing_requirements(firmware)
        or helpervm.missing_requirements()
    )
    if reason:
        pytest.skip(reason)
    certkey = make_cert_key(tmp_path / "tls")
    with (
        # MODULES=dep: the target's initramfs is built under qemu TCG (see the file-level test).
        sourcesys.source_system(layout, tmp_path / "source", initramfs_modules="dep") as source,
        target_disks(tmp_path) as disks,
    ):
        size_mib = source.disk_size_bytes // MIB + EXTRA_MIB
        devices = [disks.add(size_mib) for _ in source.disks]
        with helpervm.helper_vm(tmp_path / "vm", devices, data_port=True) as vm:
            public = ssh_public_key(certkey.private_key, tmp_path)
            # A line of its own: the file the VM wrote at boot has no newline at its end.
            keys = "/root/.ssh/authorized_keys"
            vm.ssh("sh", "-c", f"echo >> {keys}; cat >> {keys}", input_text=public + "\n")
            guest = [vm.guest_device(i) for i in range(len(devices))]
            async with migration_rig(
                tmp_path / "agent",
                emulator,
                vm,  # type: ignore[arg-type]
                source.root,
                target_layout="task",
                ssh_port=vm.port,
                block_data_port=vm.data_port,
                stop_grace=5.0,
            ) as rig:
                server = target_server(source, guest, size_mib * MIB, vm.ip)
                rig.create_block_task(certkey, authorize=False, target_server=server)
                await rig.start()
                settled = await rig.settled(timeout_s=1500)
                assert settled.result is CommandResult.success, settled.message
                resume = rig.record().progress_of(FORMAT).resume["prepared"]
                assert isinstance(resume, dict)
                prepared = PreparedTarget.from_json(resume)
                detail = settled.detail
            vm.shutdown()
        if layout == "gpt-uefi":
            assert detail["bytes_zero"] > 0, detail  # the ESP's zeros did not travel as data
        boot_target(devices, firmware, prepared, tmp_path / "boot.console")
