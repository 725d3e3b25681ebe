"""Benchmark the file-level migration against plain rsync over the same SSH, in one run.

    python bench/file_copy.py [--runs 5] [--sync-runs 7]

Needs root: the target is a real sshd in its own network namespace (over a veth link). Each data
set sits on its own tmpfs, mounted as a server's file systems are, so the agent sizes it with
statvfs as it would a real server; the target roots are tmpfs too, so that no run waits for the
disk's write-back of the one before.

* Full copy: 1 GiB of mixed data (a few large random files and 20,000 small ones), copied by the
  agent's MIGRATE_FILE handler (a START through the emulator, verification off, production
  timings) and by `rsync -aHAXS --numeric-ids` with the same ssh command, to an emptied target
  root, alternately. Target: median agent/rsync wall-time ratio <= 1.05.
* No-change sync: 50,000 small files already on the target, synced by the agent (START on the
  replicated task: one SYNC_LINUX_FILE pass) and by `rsync -aHAXS --numeric-ids --delete`,
  alternately. Target: median ratio <= 1.05.

The agent's time runs from the START to its settled outcome: reading the task, its settings, the
task key and the speed limit, checking the target, sizing the source, rsync, progress reports.
Prints each run, the medians and ratios, PASS/FAIL per target; exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smsagent.api.enums import CommandResult
from smsagent.migration.file_task import MigrateFileHandler
from smsagent.target.session import TargetSession
from tests.support.emulator import EmulatorProcess
from tests.support.migrate import MigrationRig, migration_rig
from tests.support.target import TargetHost, require_root

MiB = 1024 * 1024
COPY_BYTES = 1024 * MiB
SMALL_FILES = 20_000
LARGE_FILES = 4
SYNC_FILES = 50_000
COPY_TARGET = 1.05
SYNC_TARGET = 1.05


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "smsbench", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def write_random(path: Path, size_bytes: int, rng: random.Random) -> None:
    with path.open("wb") as handle:
        remaining = size_bytes
        while remaining:
            chunk = min(remaining, 4 * MiB)
            handle.write(rng.randbytes(chunk))
            remaining -= chunk


def build_copy_set(root: Path) -> int:
    """1 GiB: 20,000 small files of 0.5..20 KiB in 200 dirs, the rest in a few large files."""
    rng = random.Random(1)
    small_bytes = 0
    for index in range(SMALL_FILES):
        directory = root / "small" / f"d{index % 200:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(512, 20 * 1024)
        (directory / f"f{index:05d}").write_bytes(rng.randbytes(size))
        small_bytes += size
    (root / "large").mkdir()
    share = (COPY_BYTES - small_bytes) // LARGE_FILES
    for index in range(LARGE_FILES):
        write_random(root / "large" / f"file{index}.bin", share, rng)
    return small_bytes + share * LARGE_FILES


def build_sync_set(root: Path) -> None:
    """50,000 files of 0.1..4 KiB in 500 dirs."""
    rng = random.Random(2)
    for index in range(SYNC_FILES):
        directory = root / f"d{index % 500:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"f{index:05d}").write_bytes(rng.randbytes(rng.randint(100, 4096)))


def empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def plain_rsync_s(session: TargetSession, source: Path, destination: Path, *extra: str) -> float:
    """Wall time of plain rsync from `source` to `destination` on the target."""
    argv = ["rsync", "-aHAXS", "--numeric-ids", *extra, "-e", session.remote_shell()]
    argv += [f"{source}/", session.rsync_destination(f"{destination}/")]
    started = time.perf_counter()
    subprocess.run(argv, check=True, env={"PATH": os.environ["PATH"], "LC_ALL": "C"})
    return time.perf_counter() - started


async def agent_s(rig: MigrationRig) -> float:
    """Wall time of one START of the task until its outcome is settled."""
    started = time.perf_counter()
    await rig.start()
    settled = await rig.settled(timeout_s=600)
    elapsed = time.perf_counter() - started
    if settled.result is not CommandResult.success:
        raise RuntimeError(f"the agent's run failed: {settled}")
    return elapsed


async def new_task(rig: MigrationRig) -> None:
    """A fresh task (a source has one at a time): the next START is a full copy."""
    if rig.task_id:
        await rig.client.delete_task(rig.task_id)
    rig.create_task(is_need_consistency_check=False)


async def alternate(
    runs: int, agent: Callable[[], Awaitable[float]], plain: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Run both `runs` times, alternating which goes first, and print each time."""
    agent_times, plain_times = [], []
    for index in range(runs):
        order = ("agent", "rsync") if index % 2 == 0 else ("rsync", "agent")
        for who in order:
            if who == "agent":
                agent_times.append(await agent())
            else:
                plain_times.append(await asyncio.to_thread(plain))
        print(f"  run {index + 1}: agent {agent_times[-1]:.3f} s, rsync {plain_times[-1]:.3f} s")
    return agent_times, plain_times


def verdict(name: str, agent_times: list[float], plain_times: list[float], target: float) -> bool:
    ratio = statistics.median(agent_times) / statistics.median(plain_times)
    passed = ratio <= target
    print(
        f"{name}: median agent {statistics.median(agent_times):.3f} s, "
        f"rsync {statistics.median(plain_times):.3f} s, ratio {ratio:.3f} "
        f"(target <= {target:.2f}) {'PASS' if passed else 'FAIL'}"
    )
    return passed


async def bench_copy(
    work: Path, emulator: EmulatorProcess, host: TargetHost, source: Path, runs: int
) -> bool:
    destination = host.root / "copy"
    async with migration_rig(
        work / "agent-copy",
        emulator,
        host,
        source,
        handler=MigrateFileHandler(),
        target_root=destination,
        progress_interval=5.0,
        stop_grace=20.0,
    ) as rig:
        session = _plain_session(work, host)

        async def agent() -> float:
            await asyncio.to_thread(empty, destination)
            await new_task(rig)
            return await agent_s(rig)

        def plain() -> float:
            empty(destination)
            return plain_rsync_s(session, source, destination)

        print(f"full copy of {source} (1 GiB, {SMALL_FILES} small files):")
        times = await alternate(runs, agent, plain)
        await rig.client.delete_task(rig.task_id)  # the sync bench makes its own
    return verdict("full copy", *times, COPY_TARGET)


async def bench_sync(
    work: Path, emulator: EmulatorProcess, host: TargetHost, source: Path, runs: int
) -> bool:
    destination = host.root / "sync"
    async with migration_rig(
        work / "agent-sync",
        emulator,
        host,
        source,
        handler=MigrateFileHandler(),
        target_root=destination,
        progress_interval=5.0,
        stop_grace=20.0,
    ) as rig:
        session = _plain_session(work, host)
        await new_task(rig)
        await agent_s(rig)  # the full copy the syncs start from

        def plain() -> float:
            return plain_rsync_s(session, source, destination, "--delete")

        print(f"no-change sync of {source} ({SYNC_FILES} files):")
        times = await alternate(runs, lambda: agent_s(rig), plain)
    return verdict("no-change sync", *times, SYNC_TARGET)


def _plain_session(work: Path, host: TargetHost) -> TargetSession:
    known_hosts = work / "plain_known_hosts"
    return TargetSession(host.ip, host.port, host.client_key, known_hosts)


async def bench(work: Path, runs: int, sync_runs: int) -> bool:
    with ExitStack() as stack:
        # The target's disks are memory too, so that no run waits for the write-back of the one
        # before; mounted before sshd starts, whose mount namespace would not see it otherwise.
        stack.enter_context(tmpfs(work / "target", "2g"))
        host = stack.enter_context(_target(work))
        emulator = stack.enter_context(EmulatorProcess(work / "emulator").started())
        copy_source = stack.enter_context(tmpfs(work / "copy-source", "1200m"))
        sync_source = stack.enter_context(tmpfs(work / "sync-source", "600m"))
        for name in ("copy", "sync"):
            (host.root / name).mkdir()
        print(f"building the data sets in {work} ...")
        copied = build_copy_set(copy_source)
        build_sync_set(sync_source)
        print(f"  {copied / MiB:.0f} MiB to copy, {SYNC_FILES} files to sync")
        copy_ok = await bench_copy(work, emulator, host, copy_source, runs)
        sync_ok = await bench_sync(work, emulator, host, sync_source, sync_runs)
    return copy_ok and sync_ok


@contextmanager
def _target(work: Path) -> Iterator[TargetHost]:
    host = TargetHost.create(work / "target")
    try:
        yield host
    finally:
        host.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="full copies per side")
    parser.add_argument("--sync-runs", type=int, default=7, help="no-change syncs per side")
    args = parser.parse_args()
    # The agent's own log lines would only interleave with the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    reason = require_root()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="smsbench-") as work:
        passed = asyncio.run(bench(Path(work), args.runs, args.sync_runs))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
