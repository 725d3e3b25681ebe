"""A migrated server boots: a real Debian 12 system on loop disks, migrated by the agent into the
target's disks (of another size), and the target disks booted in qemu (TCG).

The boot check in the source system reports on the serial console after `multi-user.target`:
the system state, failed units, `findmnt --verify`, where `/` and every fstab entry are mounted
from, whether smsagent runs, and the digests of marker files. The target must say: running,
nothing failed, everything mounted from the target's new UUIDs, smsagent masked.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smsagent.agent.machine import State
from smsagent.api.enums import CommandResult
from smsagent.api.models import TaskTargetServer
from smsagent.target.disks import DISK_HOLDS_ROOT, DISK_TOO_SMALL
from smsagent.target.layout import parse_layout
from smsagent.target.prepare import PrepareError, TargetPreparer
from smsagent.target.prepared import PreparedTarget
from smsagent.target.session import TargetSession, store_private_key
from tests.support import helpervm, qemuboot, sourcesys
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

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]

FORMAT = "FORMAT_DISK_LINUX_FILE"
CONFIGURE = "CONFIGURE_LINUX_FILE"


@pytest.fixture
async def migration(
    tmp_path: Path,
    emulator: EmulatorProcess,
    target_host: TargetHost,
    mbr_bios_source: sourcesys.SourceSystem,
    disks: TargetDisks,
) -> AsyncIterator[Migration]:
    async with whole_server_migration(
        tmp_path / "agent", emulator, target_host, mbr_bios_source, disks
    ) as made:
        yield made


async def test_migrated_mbr_bios_server_boots_and_a_sync_pass_keeps_it_booting(
    migration: Migration, tmp_path: Path
) -> None:
    rig = migration.rig

    await rig.start()
    settled = await rig.settled(timeout_s=600)

    assert settled.result is CommandResult.success, settled.message
    assert settled.state is State.replicated
    stages = [r["subtask_name"] for r in rig.progress_reports()]
    assert stages.index(FORMAT) < stages.index("MIGRATE_LINUX_FILE") < stages.index(CONFIGURE)
    migration.boot(tmp_path / "full.console")

    # The source changes; a sync pass brings the change and configures the copy again.
    marker = migration.source.root / "srv" / "changed-after-the-copy.txt"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("written on the source after the full copy\n")
    markers = migration.source.root / "etc" / "smsagent-bootcheck.markers"
    markers.write_text("/srv/changed-after-the-copy.txt\n")
    await rig.start()
    synced = await rig.settled(timeout_s=600)

    assert synced.result is CommandResult.success, synced.message
    assert synced.detail.get("files_transferred", 0) >= 2, synced.detail
    result = migration.boot(tmp_path / "sync.console")
    want = hashlib.sha256(marker.read_bytes()).hexdigest()
    assert result.checks.markers == {"/srv/changed-after-the-copy.txt": want}


@pytest.mark.parametrize("layout", ["gpt-bios-lvm", "gpt-uefi"])
async def test_migrated_server_boots_lvm_and_uefi_through_a_helper_vm_target(
    layout: str, tmp_path: Path, emulator: EmulatorProcess
) -> None:
    """The target is a VM booted from a helper image (as in SMS), with the target disks
    attached: this host's kernel has neither device-mapper nor vfat, the VM's has both."""
    firmware = "uefi" if layout == "gpt-uefi" else "bios"
    reason = (
        sourcesys.missing_requirements()
        or qemuboot.missing_requirements(firmware)
        or helpervm.missing_requirements()
    )
    if reason:
        pytest.skip(reason)
    with (
        # MODULES=dep: the target helper runs under qemu TCG, where every process costs a
        # translation; Debian's default (`most`, thousands of files) is layout (a)'s.
        sourcesys.source_system(layout, tmp_path / "source", initramfs_modules="dep") as source,
        target_disks(tmp_path) as disks,
    ):
        size_mib = source.disk_size_bytes // MIB + EXTRA_MIB
        devices = [disks.add(size_mib) for _ in source.disks]
        with helpervm.helper_vm(tmp_path / "vm", devices) as vm:
            guest = [vm.guest_device(i) for i in range(len(devices))]
            await _refuses_the_running_system(vm, tmp_path / "refusal", source, size_mib)
            async with migration_rig(
                tmp_path / "agent",
                emulator,
                vm,  # type: ignore[arg-type]
                source.root,
                target_layout="task",
                ssh_port=vm.port,
                stop_grace=5.0,
            ) as rig:
                rig.create_task(target_server=target_server(source, guest, size_mib * MIB, vm.ip))
                await rig.start()
                settled = await rig.settled(timeout_s=1500)
                assert settled.result is CommandResult.success, settled.message
                resume = rig.record().progress_of(FORMAT).resume["prepared"]
                assert isinstance(resume, dict)
                prepared = PreparedTarget.from_json(resume)
            vm.shutdown()
        boot_target(devices, firmware, prepared, tmp_path / "boot.console")


async def _refuses_the_running_system(
    vm: helpervm.HelperVM, workdir: Path, source: sourcesys.SourceSystem, size_mib: int
) -> None:
    """A layout naming the target's own system disk (the helper's /dev/vda) is refused, with
    the disk named, before anything is written to it."""
    paths = store_private_key(workdir, "task-refusal", vm.client_private_key_pem)
    session = TargetSession(vm.ip, vm.port, paths.private_key, paths.known_hosts)
    layout = parse_layout(
        TaskTargetServer.model_validate(target_server(source, ["/dev/vda"], size_mib * MIB, vm.ip))
    )
    # What a prepare would change first: the signatures wipefs finds and the partition table.
    # (Not the bytes: the running system writes its own superblock all the time.)
    edges = "wipefs --no-act --json /dev/vda; sfdisk --dump /dev/vda 2>&1 || true"
    before = vm.ssh("sh", "-c", edges).stdout
    with pytest.raises(PrepareError) as refused:
        await TargetPreparer(session, vm.root, checkpoint=lambda: None).prepare(layout)
    message = refused.value.message
    assert refused.value.error_code in (DISK_HOLDS_ROOT, DISK_TOO_SMALL), message
    assert "target disk /dev/vda: /dev/vda is the target's running root" in message
    assert vm.ssh("sh", "-c", edges).stdout == before
