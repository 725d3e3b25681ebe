"""The block copy over a real sshd target in a network namespace, onto loop devices.

The source is an ext4 whose free space holds random garbage (as a disk in use); the copy must
carry every allocated block (checked against `dumpe2fs`'s bitmaps, not the agent's own map),
none of the garbage, and leave a target that `e2fsck` finds clean with the same file tree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from smsagent.migration.block.digests import DigestTable
from smsagent.migration.block.engine import BlockChannel, ChannelError, ChannelOptions, PassReport
from smsagent.migration.block.extents import used_map
from smsagent.migration.block.sender import PassVolume, Tamper
from smsagent.migration.block.tls import TlsMaterial
from smsagent.target.session import TargetSession
from tests.support import blockdev
from tests.support.blocktls import CertKey, issue, make_ca, make_cert_key

pytestmark = [pytest.mark.timeout(600)]
MIB = 1024 * 1024
SIZE_MIB = 256


@dataclass
class Rig:
    lab: blockdev.Lab
    source: str
    source_root: Path
    target: str
    certkey: CertKey
    workdir: Path

    def volume(self, table: DigestTable) -> PassVolume:
        used = used_map(SIZE_MIB * MIB, str(self.source_root))
        return PassVolume(0, self.source, self.target, used, table)

    def table(self) -> DigestTable:
        return DigestTable(self.workdir / "state" / "digests-0", SIZE_MIB * MIB)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with blockdev.lab(tmp_path / "lab") as made:
        source = made.device("source", SIZE_MIB)
        blockdev.make_ext4_with_garbage(source, SIZE_MIB)
        root = made.mount(source, "source-root")
        blockdev.write_files(root, 120, 600 * 1024)
        target = made.device("target", SIZE_MIB + 64)
        blockdev.fill_random(target, 32)
        yield Rig(made, source, root, target, make_cert_key(tmp_path / "tls"), tmp_path)


def channel(
    rig: Rig,
    session: TargetSession,
    *,
    threads: int = 2,
    tamper: Tamper | None = None,
    material: TlsMaterial | None = None,
) -> BlockChannel:
    material = material or TlsMaterial.from_answer(rig.certkey.answer(), None)
    return BlockChannel(
        session,
        material,
        [rig.target],
        ChannelOptions(port=8900, threads=threads, cache_bytes=4 * MIB, retry_delay_s=0.2),
        rig.workdir / "state" / "tls",
        lambda: None,
        structlog.get_logger(),
        tamper=tamper,
    )


async def copy(chan: BlockChannel, volume: PassVolume) -> PassReport:
    try:
        return await chan.run_pass([volume])
    finally:
        await chan.close()


@contextmanager
def frozen(rig: Rig) -> Iterator[None]:
    """The source held still, as the final pass holds it: a live ext4 rewrites its superblock
    (write counters, times) when it thaws, so blocks are compared while it is frozen."""
    blockdev.run("fsfreeze", "--freeze", str(rig.source_root))
    try:
        yield
    finally:
        blockdev.run("fsfreeze", "--unfreeze", str(rig.source_root))


def copy_frozen(rig: Rig, chan: BlockChannel, table: DigestTable) -> PassReport:
    """A pass with the source frozen, and its allocated blocks compared before it thaws."""
    with frozen(rig):
        report = asyncio.run(copy(chan, rig.volume(table)))
        used = blockdev.ext_used_ranges(rig.source)
        source = blockdev.ranges_digest(rig.source, used)
        assert source == blockdev.ranges_digest(rig.target, used)
    return report


def assert_identical(rig: Rig) -> None:
    blockdev.run("e2fsck", "-fn", rig.target)
    seen = rig.lab.mount(rig.target, "target-view", "-o", "ro,noload")
    try:
        assert blockdev.tree_digest(seen) == blockdev.tree_digest(rig.source_root)
    finally:
        rig.lab.unmount(seen)


def test_copy_carries_the_allocated_blocks_only(
    rig: Rig, target_session: TargetSession, tmp_path: Path
) -> None:
    table = rig.table()
    report = copy_frozen(rig, channel(rig, target_session), table)

    assert_identical(rig)
    used_bytes = rig.volume(table).used.used_bytes
    # Only the used blocks were read and sent: far less than the device full of garbage.
    assert report.read_bytes < used_bytes + 16 * MIB
    assert report.read_bytes < SIZE_MIB * MIB // 2
    assert 0 < report.wire_bytes < report.sent_bytes  # compressed
    assert report.resent_frames == 0


def test_a_delta_pass_sends_only_what_changed(
    rig: Rig, target_session: TargetSession, tmp_path: Path
) -> None:
    table = rig.table()
    copy_frozen(rig, channel(rig, target_session), table)
    changed = blockdev.write_files(rig.source_root, 2, 600 * 1024, seed="changed")[:2]
    changed_bytes = sum(p.stat().st_size for p in changed)

    report = copy_frozen(rig, channel(rig, target_session), table)

    assert_identical(rig)
    assert report.wire_bytes <= 5 * changed_bytes, report
    assert report.read_bytes >= rig.volume(table).used.used_bytes // 2  # the source was read


def test_a_corrupted_chunk_is_sent_again(
    rig: Rig, target_session: TargetSession, tmp_path: Path
) -> None:
    corrupted: list[int] = []

    def tamper(seq: int, payload: bytes) -> bytes:
        if seq == 3 and payload:
            corrupted.append(seq)
            return bytes([payload[0] ^ 0xFF]) + payload[1:]
        return payload

    report = copy_frozen(rig, channel(rig, target_session, tamper=tamper), rig.table())

    assert corrupted == [3]
    assert report.resent_frames >= 1
    assert_identical(rig)


def test_a_receiver_refuses_a_certificate_not_from_the_task(
    rig: Rig, target_session: TargetSession, tmp_path: Path
) -> None:
    other_ca, other_key = make_ca(tmp_path / "other", "other-ca")
    cert, key = issue(tmp_path / "other", "intruder", other_ca, other_key)
    task = rig.certkey
    # Same CA and target, but a source certificate the task did not issue.
    foreign = TlsMaterial(
        ca=task.ca, source_cert=cert, source_key=key,
        target_cert=task.target_data_cert, target_key=task.target_data_private_key,
    )  # fmt: skip
    chan = channel(rig, target_session, material=foreign)
    whole = [(0, (SIZE_MIB + 64) * MIB)]
    before = blockdev.ranges_digest(rig.target, whole)

    with pytest.raises(ChannelError, match="certificates were refused"):
        asyncio.run(copy(chan, rig.volume(rig.table())))

    assert blockdev.ranges_digest(rig.target, whole) == before
    assert any("refused" in line for line in chan.receiver_lines), chan.receiver_lines
