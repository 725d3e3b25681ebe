"""Benchmark a whole-server migration against plain rsync of the same trees, in one run.

    python bench/whole_server.py [--runs 3]

Needs root. The source is layout (a) of the boot tests (a Debian 12 system with kernel and GRUB
on a loop disk: MBR, /boot ext4, / ext4, swap); the target is a real sshd in its own network
namespace with a blank loop disk. Alternately:

* the agent: a new task, START through the emulator, until its outcome is settled: the target
  disk laid out and formatted (FORMAT_DISK_LINUX_FILE), the copy (MIGRATE_LINUX_FILE), its
  verification (VERIFY_LINUX_FILE) and the configuration (CONFIGURE_LINUX_FILE);
* the baseline: the same disk partitioned and formatted beforehand (not timed) and mounted as
  the layout says, then `rsync -aHAXS --numeric-ids` of the source tree over the same SSH.

Prints each run with each stage's seconds, the medians, and two ratios: the copy stage against
rsync (target <= 1.15: the copy costs no more than rsync does) and the whole START against rsync
(for information: it adds a format, a verification and an initramfs). Exits 1 if the copy
target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.file_copy import plain_rsync_s
from smsagent.api.enums import CommandResult
from smsagent.migration.file_task import MigrateFileHandler
from smsagent.target.session import TargetSession, store_private_key
from tests.support import sourcesys
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, migration_rig
from tests.support.target import TargetHost, require_root
from tests.support.targetdisks import MIB, target_disks
from tests.support.wholeserver import target_server

STAGES = (
    "FORMAT_DISK_LINUX_FILE",
    "MIGRATE_LINUX_FILE",
    "VERIFY_LINUX_FILE",
    "CONFIGURE_LINUX_FILE",
)
COPY_TARGET = 1.15


async def agent_run(rig: MigrationRig, layout: dict[str, object]) -> tuple[float, dict[str, float]]:
    """One whole migration: the START's wall time and each stage's seconds."""
    if rig.task_id:
        await rig.client.delete_task(rig.task_id)
    rig.create_task(target_server=layout)
    started = time.perf_counter()
    await rig.start()
    settled = await rig.settled(timeout_s=900)
    elapsed = time.perf_counter() - started
    if settled.result is not CommandResult.success:
        raise RuntimeError(f"the agent's run failed: {settled}")
    record = rig.record()
    stages = {}
    for stage in STAGES:
        progress = record.progress_of(stage)
        if progress.started_at is not None and progress.finished_at is not None:
            stages[stage] = progress.finished_at - progress.started_at
    return elapsed, stages


def premade(host: TargetHost, source: sourcesys.SourceSystem, device: str) -> None:
    """The baseline's target: the disk laid out like the source, formatted and mounted."""
    ns = host.in_mount_namespace
    ns("sh", "-c", f"umount -R {host.root} 2>/dev/null; true", check=False)
    ns("wipefs", "--all", "--force", device)
    script = "label: dos\n" + "".join(
        f"size={v.size_bytes // MIB}MiB, type={v.type_code}\n"
        for v in sorted(source.volumes, key=lambda v: v.number or 0)
        if v.kind == "partition"
    )
    ns("sh", "-c", f"printf '{script}' | sfdisk --quiet {device}")
    ns("partx", "--add", device, check=False)
    mounts = []
    for volume in source.volumes:
        part = f"{device}p{volume.number}"
        if volume.fstype == "swap":
            ns("mkswap", part)
        elif volume.fstype:
            ns(f"mkfs.{volume.fstype}", "-F", "-q", part)
            if volume.mount_point and volume.mount_point.startswith("/"):
                mounts.append((volume.mount_point, part))
    for mount_point, part in sorted(mounts, key=lambda m: m[0].count("/") if m[0] != "/" else 0):
        where = f"{host.root}{'' if mount_point == '/' else mount_point}"
        ns("mkdir", "-p", where)
        ns("mount", part, where)


def unmount(host: TargetHost) -> None:
    host.in_mount_namespace("umount", "-R", str(host.root), check=False)


async def main_async(work: Path, runs: int) -> bool:
    with ExitStack() as stack:
        emulator = EmulatorProcess(work / "emulator").start()
        stack.callback(emulator.stop)
        host = TargetHost.create(work / "target")
        stack.callback(host.close)
        source = stack.enter_context(sourcesys.source_system("mbr-bios", work / "source"))
        disks = stack.enter_context(target_disks(work))
        size_mib = source.disk_size_bytes // MIB + 512
        device = disks.add(size_mib)
        layout = target_server(source, [device], size_mib * MIB, host.ip)
        paths = store_private_key(work / "plain", "bench", host.client_private_key_pem)
        session = TargetSession(host.ip, host.port, paths.private_key, paths.known_hosts)
        print(f"whole-server migration of {source.root} ({source.layout}) onto {device}:")
        async with migration_rig(
            work / "agent",
            emulator,
            host,
            source.root,
            handler=MigrateFileHandler(),
            target_layout="task",
            progress_interval=5.0,
            stop_grace=20.0,
        ) as rig:
            agent_times: list[float] = []
            copy_times: list[float] = []
            plain_times: list[float] = []
            for index in range(runs):
                order = ("agent", "rsync") if index % 2 == 0 else ("rsync", "agent")
                for who in order:
                    if who == "agent":
                        elapsed, stages = await agent_run(rig, layout)
                        agent_times.append(elapsed)
                        copy_times.append(stages.get("MIGRATE_LINUX_FILE", elapsed))
                        shown = ", ".join(f"{k.split('_')[0]} {v:.1f} s" for k, v in stages.items())
                    else:
                        await asyncio.to_thread(premade, host, source, device)
                        plain_times.append(
                            await asyncio.to_thread(plain_rsync_s, session, source.root, host.root)
                        )
                        await asyncio.to_thread(unmount, host)
                print(
                    f"  run {index + 1}: agent {agent_times[-1]:.1f} s ({shown}), "
                    f"rsync {plain_times[-1]:.1f} s"
                )
    plain = statistics.median(plain_times)
    copy_ratio = statistics.median(copy_times) / plain
    whole_ratio = statistics.median(agent_times) / plain
    passed = copy_ratio <= COPY_TARGET
    print(
        f"copy stage: median {statistics.median(copy_times):.1f} s, rsync {plain:.1f} s, "
        f"ratio {copy_ratio:.3f} (target <= {COPY_TARGET:.2f}) {'PASS' if passed else 'FAIL'}"
    )
    print(
        f"whole START: median {statistics.median(agent_times):.1f} s, ratio {whole_ratio:.2f} "
        "(format, copy, verification and configuration against the copy alone)"
    )
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = require_root() or sourcesys.missing_requirements()
    if reason:
        print(f"whole_server: {reason}", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="smsagent-bench-") as work:
        passed = asyncio.run(main_async(Path(work), args.runs))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
