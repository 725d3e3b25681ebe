"""Benchmark the block copy against a whole-device copy and the machine's limits, in one run.

    python bench/block_copy.py [--runs 3] [--threads 2]

Needs root. The source is a 2 GiB ext4 on a loop device, about 40 % used (files half random,
half repetitive), its free space full of random garbage as on a disk in use; the target is a
loop device behind a real sshd in its own network namespace. Alternately, each run:

* the agent: the block channel's full pass (the receiver started over SSH, only the used
  blocks read, compressed on `--threads` threads, sent over TLS, written and fsync'd);
* baseline (a): `dd` of the whole device through `zstd -1 -T2 | ssh` into the target device;
* the limits: a direct read of the whole device (b), a direct read of only the used extents,
  and the transport's ceiling (incompressible bytes through `ssh` into the target device).

Then a delta pass after 1 % of the files changed. Prints each figure, the medians and two
ratios: the agent's wall time against (a) (target <= 0.6) and its source data rate against
min(used-extent read rate, transport ceiling) (target >= 0.8). Exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smsagent.migration.block.digests import DigestTable
from smsagent.migration.block.engine import BlockChannel, ChannelOptions
from smsagent.migration.block.extents import used_map
from smsagent.migration.block.sender import PassVolume
from smsagent.migration.block.source import VolumeReader, chunk_spans
from smsagent.migration.block.tls import TlsMaterial
from smsagent.target.session import TargetSession, store_private_key
from tests.support import blockcopy
from tests.support.blocktls import make_cert_key
from tests.support.target import TargetHost, require_root

MIB = 1024 * 1024
SIZE_MIB = 2048
FILE_MIB = 4
WALL_TARGET = 0.6
RATE_TARGET = 0.8


def mb_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6 if seconds > 0 else 0.0


def timed(*argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_used_s(device: str, mount_point: str) -> tuple[float, int]:
    """Seconds to read only the used extents with O_DIRECT, and the bytes read."""
    used = used_map(SIZE_MIB * MIB, mount_point)
    reader = VolumeReader(device, 4 * MIB)
    started = time.perf_counter()
    total = 0
    try:
        for offset, length in chunk_spans(used, 4 * MIB):
            total += len(reader.read(offset, length))
    finally:
        reader.close()
    return time.perf_counter() - started, total


async def agent_pass(
    session: TargetSession,
    certkey_dir: Path,
    source: str,
    mount_point: str,
    target: str,
    table: DigestTable,
    threads: int,
) -> tuple[float, int, int]:
    """One pass of the agent's block channel: seconds, source bytes sent, bytes on the wire."""
    material = TlsMaterial.from_answer(make_cert_key(certkey_dir).answer(), None)
    channel = BlockChannel(
        session,
        material,
        [target],
        ChannelOptions(port=8900, threads=threads, cache_bytes=4 * MIB),
        certkey_dir / "work",
        lambda: None,
        structlog.get_logger(),
    )
    started = time.perf_counter()
    try:
        volume = PassVolume(0, source, target, used_map(SIZE_MIB * MIB, mount_point), table)
        report = await channel.run_pass([volume])
    finally:
        await channel.close()
    return time.perf_counter() - started, report.sent_bytes, report.wire_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    reason = require_root()
    if reason:
        print(f"block_copy: {reason}", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="smsagent-bench-") as work_dir:
        return run(Path(work_dir), args.runs, args.threads)


def run(work: Path, runs: int, threads: int) -> int:
    with ExitStack() as stack:
        host = TargetHost.create(work / "target")
        stack.callback(host.close)
        lab = stack.enter_context(blockcopy.lab(work / "lab"))
        source = lab.device("source", SIZE_MIB)
        blockcopy.make_ext4_with_garbage(source, SIZE_MIB)
        root = lab.mount(source, "source-root")
        count = int(SIZE_MIB * 0.4) // FILE_MIB
        blockcopy.write_files(root, count, FILE_MIB * MIB)
        os.sync()
        target = lab.device("target", SIZE_MIB + 64)
        paths = store_private_key(work / "keys", "bench", host.client_private_key_pem)
        session = TargetSession(host.ip, host.port, paths.private_key, paths.known_hosts)
        ssh = [*session.ssh_argv(), "--", host.ip]
        random_file = work / "random.bin"
        used_bytes = used_map(SIZE_MIB * MIB, str(root)).used_bytes
        with random_file.open("wb") as handle:
            for _ in range(used_bytes // (16 * MIB) + 1):
                handle.write(os.urandom(16 * MIB))
        ceiling_bytes = random_file.stat().st_size
        print(
            f"block copy of a {SIZE_MIB} MiB ext4 with {used_bytes / MIB:.0f} MiB used "
            f"({100 * used_bytes / (SIZE_MIB * MIB):.0f} %), {threads} compression threads, "
            f"load {os.getloadavg()[0]:.2f}:"
        )
        figures: dict[str, list[float]] = {k: [] for k in ("agent", "a", "b", "used", "ceiling")}
        wire: list[float] = []
        for index in range(runs):
            order = ("agent", "a") if index % 2 == 0 else ("a", "agent")
            for who in order:
                drop_caches()
                if who == "agent":
                    table = DigestTable(work / f"table-{index}", SIZE_MIB * MIB)
                    seconds, sent, on_wire = asyncio.run(
                        agent_pass(
                            session,
                            work / f"tls-{index}",
                            source,
                            str(root),
                            target,
                            table,
                            threads,
                        )
                    )
                    table.close()
                    figures["agent"].append(seconds)
                    wire.append(on_wire / max(sent, 1))
                else:
                    pipeline = (
                        f"dd if={source} bs=4M iflag=direct status=none | zstd -1 -T2 -q | "
                        + " ".join(ssh)
                        + f" 'zstd -d -q | dd of={target} bs=4M oflag=direct status=none'"
                    )
                    figures["a"].append(timed("sh", "-c", pipeline))
            drop_caches()
            figures["b"].append(
                timed("dd", f"if={source}", "of=/dev/null", "bs=4M", "iflag=direct", "status=none")
            )
            drop_caches()
            used_s, _ = read_used_s(source, str(root))
            figures["used"].append(used_s)
            ceiling = (
                f"dd if={random_file} bs=4M status=none | "
                + " ".join(ssh)
                + f" 'dd of={target} bs=4M oflag=direct status=none'"
            )
            figures["ceiling"].append(timed("sh", "-c", ceiling))
            print(
                f"  run {index + 1}: agent {figures['agent'][-1]:.2f} s, "
                f"(a) dd|zstd|ssh {figures['a'][-1]:.2f} s, "
                f"(b) device read {mb_s(SIZE_MIB * MIB, figures['b'][-1]):.0f} MB/s, "
                f"used-extent read {mb_s(used_bytes, used_s):.0f} MB/s, "
                f"ssh ceiling {mb_s(ceiling_bytes, figures['ceiling'][-1]):.0f} MB/s"
            )
        # The delta pass: after the last agent run's copy, 1 % of the files change.
        table = DigestTable(work / "table-delta", SIZE_MIB * MIB)
        asyncio.run(agent_pass(session, work / "tls-d0", source, str(root), target, table, threads))
        files = sorted((root / "data").iterdir())
        changed = files[::100]
        for path in changed:
            with path.open("r+b") as handle:
                handle.write(os.urandom(path.stat().st_size))
        os.sync()
        delta_s, delta_sent, delta_wire = asyncio.run(
            agent_pass(session, work / "tls-d1", source, str(root), target, table, threads)
        )
        table.close()
        changed_bytes = sum(p.stat().st_size for p in changed)
    agent = statistics.median(figures["agent"])
    baseline = statistics.median(figures["a"])
    used_rate = mb_s(used_bytes, statistics.median(figures["used"]))
    ceiling_rate = mb_s(ceiling_bytes, statistics.median(figures["ceiling"]))
    agent_rate = mb_s(used_bytes, agent)
    wall_ratio = agent / baseline
    rate_ratio = agent_rate / min(used_rate, ceiling_rate)
    wall_ok = wall_ratio <= WALL_TARGET
    rate_ok = rate_ratio >= RATE_TARGET
    print(
        f"agent: median {agent:.2f} s, {agent_rate:.0f} MB/s of source data, "
        f"{100 * statistics.median(wire):.0f} % of it on the wire"
    )
    print(
        f"(a) dd | zstd -1 -T2 | ssh: median {baseline:.2f} s; "
        f"(b) device read {mb_s(SIZE_MIB * MIB, statistics.median(figures['b'])):.0f} MB/s"
    )
    print(
        f"wall time agent/(a): {wall_ratio:.3f} (target <= {WALL_TARGET}) "
        f"{'PASS' if wall_ok else 'FAIL'}"
    )
    print(
        f"source rate agent/min(used-extent read {used_rate:.0f}, transport {ceiling_rate:.0f} "
        f"MB/s): {rate_ratio:.3f} (target >= {RATE_TARGET}) {'PASS' if rate_ok else 'FAIL'}"
    )
    print(
        f"delta pass after {len(changed)} of {len(files)} files changed "
        f"({changed_bytes / MIB:.1f} MiB): {delta_s:.2f} s, sent {delta_sent / MIB:.1f} MiB, "
        f"{delta_wire / MIB:.1f} MiB on the wire ({delta_wire / max(changed_bytes, 1):.2f} x the "
        "changed bytes)"
    )
    return 0 if wall_ok and rate_ok else 1


if __name__ == "__main__":
    sys.exit(main())
