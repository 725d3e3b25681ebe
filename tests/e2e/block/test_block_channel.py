"""The block copy over a real sshd target in a network namespace, onto loop devices.

The source is an ext4 whose free space holds random garbage (as a disk in use); the copy must
carry every allocated block (checked against `dumpe2fs`'s bitmaps, not the agent's own map),
none of the garbage, and leave a target that `e2fsck` finds clean with the same file tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from smsagent.migration.block import receiver as wire
from smsagent.migration.block import remote
from smsagent.migration.block.digests import DigestTable
from smsagent.migration.block.engine import BlockChannel, ChannelError, ChannelOptions, PassReport
from smsagent.migration.block.extents import used_map
from smsagent.migration.block.sender import PassCounters, PassVolume, Tamper
from smsagent.migration.block.tls import TlsMaterial
from smsagent.target.session import TargetError, TargetSession
from tests.support import blockcopy
from tests.support.blocktls import CertKey, issue, make_ca, make_cert_key
from tests.support.target import TargetHost

pytestmark = [pytest.mark.timeout(600)]
MIB = 1024 * 1024
SIZE_MIB = 256


@dataclass
class Rig:
    lab: blockcopy.Lab
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
    with blockcopy.lab(tmp_path / "lab") as made:
        source = made.device("source", SIZE_MIB)
        blockcopy.make_ext4_with_garbage(source, SIZE_MIB)
        root = made.mount(source, "source-root")
        blockcopy.write_files(root, 120, 600 * 1024)
        target = made.device("target", SIZE_MIB + 64)
        blockcopy.fill_random(target, 32)
        yield Rig(made, source, root, target, make_cert_key(tmp_path / "tls"), tmp_path)


def channel(
    rig: Rig,
    session: TargetSession,
    *,
    threads: int = 2,
    tamper: Tamper | None = None,
    material: TlsMaterial | None = None,
    devices: list[str] | None = None,
    read_bytes_s: int | None = None,
) -> BlockChannel:
    material = material or TlsMaterial.from_answer(rig.certkey.answer(), None)
    return BlockChannel(
        session,
        material,
        devices or [rig.target],
        ChannelOptions(
            port=8900,
            threads=threads,
            cache_bytes=4 * MIB,
            retry_delay_s=0.2,
            read_bytes_s=read_bytes_s,
        ),
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
    blockcopy.run("fsfreeze", "--freeze", str(rig.source_root))
    try:
        yield
    finally:
        blockcopy.run("fsfreeze", "--unfreeze", str(rig.source_root))


def assert_allocated_identical(rig: Rig) -> None:
    """The target holds the source's bytes in every block the source's bitmaps (read by
    dumpe2fs, not by the agent's map) call allocated."""
    used = blockcopy.ext_used_ranges(rig.source)
    assert blockcopy.ranges_digest(rig.source, used) == blockcopy.ranges_digest(rig.target, used)


def copy_frozen(rig: Rig, chan: BlockChannel, table: DigestTable) -> PassReport:
    """A pass with the source frozen, and its allocated blocks compared before it thaws."""
    with frozen(rig):
        report = asyncio.run(copy(chan, rig.volume(table)))
        assert_allocated_identical(rig)
    return report


def assert_identical(rig: Rig) -> None:
    blockcopy.run("e2fsck", "-fn", rig.target)
    seen = rig.lab.mount(rig.target, "target-view", "-o", "ro,noload")
    try:
        assert blockcopy.tree_digest(seen) == blockcopy.tree_digest(rig.source_root)
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
    changed = blockcopy.write_files(rig.source_root, 2, 600 * 1024, seed="changed")[:2]
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
    before = blockcopy.ranges_digest(rig.target, whole)

    with pytest.raises(ChannelError, match="certificates were refused"):
        asyncio.run(copy(chan, rig.volume(rig.table())))

    assert blockcopy.ranges_digest(rig.target, whole) == before
    assert any("refused" in line for line in chan.receiver_lines), chan.receiver_lines


class Proxy:
    """A TCP forwarder between the source and the receiver: records what the source sends and
    can cut the connection after `cut_after` bytes (once)."""

    def __init__(self, upstream: tuple[str, int], cut_after: int | None = None) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.sent = bytearray()
        self.cuts = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await src.read(65536):
                    if record:
                        self.sent += data
                        if self.cut_after is not None and len(self.sent) > self.cut_after:
                            self.cut_after = None
                            self.cuts += 1
                            raise ConnectionResetError("cut by the test")
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                for end in (dst, writer, up_writer):
                    end.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))


def through(rig: Rig, session: TargetSession, proxy: Proxy, threads: int = 2) -> BlockChannel:
    material = TlsMaterial.from_answer(rig.certkey.answer(), None)
    return BlockChannel(
        session,
        material,
        [rig.target],
        ChannelOptions(
            port=8900,
            connect_address="127.0.0.1",
            connect_port=proxy.port,
            threads=threads,
            cache_bytes=4 * MIB,
            retry_delay_s=0.2,
        ),
        rig.workdir / "state" / "tls",
        lambda: None,
        structlog.get_logger(),
    )


def test_the_data_channel_never_runs_in_clear_text(
    rig: Rig, target_session: TargetSession, target_host: TargetHost
) -> None:
    marker = b"SMSAGENT-CLEAR-TEXT-MARKER-" * 1000
    (rig.source_root / "marker.txt").write_bytes(marker)
    proxy = Proxy((target_host.ip, 8900))

    async def scenario() -> PassReport:
        await proxy.start()
        try:
            # No compression: were the channel plain, the marker would be on the wire as is.
            return await copy(
                through(rig, target_session, proxy, threads=0), rig.volume(rig.table())
            )
        finally:
            await proxy.close()

    with frozen(rig):
        report = asyncio.run(scenario())
    assert report.sent_bytes > 0
    assert bytes(proxy.sent[:2]) == b"\x16\x03"  # a TLS handshake record
    assert b"SMSAGENT-CLEAR-TEXT-MARKER" not in proxy.sent


def test_a_plain_text_peer_is_refused(rig: Rig, target_session: TargetSession) -> None:
    chan = channel(rig, target_session)

    async def scenario() -> bytes:
        try:
            await chan.run_pass([])  # starts the receiver
            assert chan.receiver is not None
            reader, writer = await asyncio.open_connection(target_session.host, chan.receiver.port)
            writer.write(wire.pack_message(wire.HELLO, {"version": 1, "volumes": []}))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(), 30)
            except ConnectionResetError:
                answer = b""
            writer.close()
            return answer
        finally:
            await chan.close()

    assert asyncio.run(scenario()) == b""  # no READY: the connection is closed or reset
    assert any("refused" in line for line in chan.receiver_lines)


def test_a_cut_connection_resumes_without_resending(
    rig: Rig, target_session: TargetSession, target_host: TargetHost
) -> None:
    # Half of the files' 70 MiB is random, so more than 35 MiB cross the wire whatever else
    # is compressed away (how much of the metadata holds garbage depends on ext4's lazy init).
    proxy = Proxy((target_host.ip, 8900), cut_after=20 * MIB)
    table = rig.table()

    async def scenario() -> PassReport:
        await proxy.start()
        try:
            return await copy(through(rig, target_session, proxy), rig.volume(table))
        finally:
            await proxy.close()

    with frozen(rig):
        report = asyncio.run(scenario())
        used = blockcopy.ext_used_ranges(rig.source)
        assert blockcopy.ranges_digest(rig.source, used) == blockcopy.ranges_digest(
            rig.target, used
        )
    assert proxy.cuts == 1 and report.reconnects == 1
    # What was acknowledged before the cut was not sent again: at most the window in flight.
    assert report.sent_bytes <= rig.volume(table).used.used_bytes + 6 * 4 * MIB + MIB
    assert_identical(rig)


def test_a_killed_receiver_is_started_again_and_the_copy_goes_on(
    rig: Rig, target_session: TargetSession, target_host: TargetHost
) -> None:
    table = rig.table()
    chan = channel(rig, target_session)
    killed: list[int] = []

    def kill_once(counters: PassCounters) -> None:
        if not killed and counters.acked_bytes >= 30 * MIB and chan.receiver is not None:
            killed.append(receiver_pid(target_host))
            os.kill(killed[0], signal.SIGKILL)

    async def scenario() -> PassReport:
        try:
            return await chan.run_pass([rig.volume(table)], on_progress=kill_once)
        finally:
            await chan.close()

    with frozen(rig):
        report = asyncio.run(scenario())
        used = blockcopy.ext_used_ranges(rig.source)
        assert blockcopy.ranges_digest(rig.source, used) == blockcopy.ranges_digest(
            rig.target, used
        )
    assert killed and report.reconnects >= 1
    assert report.sent_bytes <= rig.volume(table).used.used_bytes + 6 * 4 * MIB + MIB
    assert_identical(rig)


def test_a_stopped_pass_resumes_from_what_was_acknowledged(
    rig: Rig, target_session: TargetSession
) -> None:
    table = rig.table()
    positions: dict[int, int] = {}

    class Stop(Exception):
        pass

    acked: list[int] = []

    def checkpoint() -> None:
        if acked and acked[-1] >= 30 * MIB:
            raise Stop

    def remember(counters: PassCounters) -> None:
        acked.append(counters.acked_bytes)
        positions.update(counters.positions)

    material = TlsMaterial.from_answer(rig.certkey.answer(), None)
    options = ChannelOptions(port=8900, threads=2, cache_bytes=4 * MIB)

    async def first() -> None:
        chan = BlockChannel(
            target_session, material, [rig.target], options, rig.workdir / "tls", checkpoint,
            structlog.get_logger(),
        )  # fmt: skip
        try:
            await chan.run_pass([rig.volume(table)], on_progress=remember)
        finally:
            await chan.close()

    with frozen(rig):
        with pytest.raises(Stop):
            asyncio.run(first())
        start = positions[0]
        assert 0 < start < rig.volume(table).used.size
        volume = dataclasses.replace(rig.volume(table), start=start)
        report = asyncio.run(copy(channel(rig, target_session), volume))
        used = blockcopy.ext_used_ranges(rig.source)
        assert blockcopy.ranges_digest(rig.source, used) == blockcopy.ranges_digest(
            rig.target, used
        )
    assert acked[-1] + report.sent_bytes <= volume.used.used_bytes + 6 * 4 * MIB + MIB
    assert_identical(rig)


def receiver_pid(host: TargetHost) -> int:
    """The receiver's python3 on the target (its command line names it)."""
    for pid in host.processes_inside():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"python3" in cmdline and b"smsagent-block-receiver" in cmdline:
            return pid
    raise AssertionError("no receiver runs on the target")


def test_a_sync_after_the_target_was_written_restores_the_source(
    rig: Rig, target_session: TargetSession, target_host: TargetHost
) -> None:
    """What the target's own tools wrote (configure: new files, files replaced, files edited in
    place) is found by the target's digests and sent again, so the next pass ends with the
    target's allocated blocks those of the source."""
    table = rig.table()
    copy_frozen(rig, channel(rig, target_session), table)
    tree = rig.lab.mount(rig.target, "target-rw")
    blockcopy.write_files(tree, 3, 300 * 1024, seed="configure")  # replaced
    (tree / "data" / "new-file.bin").write_bytes(os.urandom(2 * MIB))  # new
    first = sorted((tree / "data").iterdir())[5]
    with first.open("r+b") as handle:  # edited in place
        handle.write(b"edited by the target")
    rig.lab.unmount(tree)

    async def reconcile() -> int | None:
        chan = channel(rig, target_session)
        try:
            return await chan.reconcile(rig.volume(table))
        finally:
            await chan.close()

    forgotten = asyncio.run(reconcile())
    assert forgotten is not None and forgotten > 0
    blockcopy.write_files(rig.source_root, 2, 100 * 1024, seed="source-changed")
    copy_frozen(rig, channel(rig, target_session), table)
    assert_identical(rig)


def test_a_target_python_that_cannot_load_the_agents_modules_gets_zlib(
    rig: Rig, target_session: TargetSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another interpreter on the target (say the agent runs 3.11 and the target 3.6): the
    compiled `zstandard` and `xxhash` do not travel, the copy compresses with zlib, and the
    target reports no digests, so a reconcile forgets the whole table."""
    monkeypatch.setattr(remote, "_THIS_PYTHON", "cpython-36 x86_64")
    table = rig.table()
    chan = channel(rig, target_session)

    async def copy_then_reconcile() -> tuple[PassReport, int | None]:
        try:
            report = await chan.run_pass([rig.volume(table)])
            return report, await chan.reconcile(rig.volume(table))
        finally:
            await chan.close()

    with frozen(rig):
        report, forgotten = asyncio.run(copy_then_reconcile())
    # Compressed: by zlib, the one codec besides raw that a receiver without modules offers
    # (a zstd frame would have ended the pass with "codec 1 is not available here").
    assert 0 < report.wire_bytes < report.sent_bytes
    assert forgotten is None  # no xxhash on the target
    assert_identical(rig)


def test_a_receiver_that_cannot_start_is_a_clear_error(
    rig: Rig, target_session: TargetSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        remote, "_BOOTSTRAP", "import sys; sys.stderr.write('no such module: ssl\\n'); sys.exit(3)"
    )
    with pytest.raises(TargetError, match="did not start: no such module: ssl"):
        asyncio.run(copy(channel(rig, target_session), rig.volume(rig.table())))


def test_a_target_volume_smaller_than_its_source_is_refused_untouched(
    rig: Rig, target_session: TargetSession
) -> None:
    """Not a network error to retry (SMS.0807): the task fails at once, naming the device and
    both sizes, and nothing is written to it."""
    small = rig.lab.device("small", SIZE_MIB - 16)
    blockcopy.fill_random(small, 8)
    whole = [(0, (SIZE_MIB - 16) * MIB)]
    before = blockcopy.ranges_digest(small, whole)
    chan = channel(rig, target_session, devices=[small])
    volume = dataclasses.replace(rig.volume(rig.table()), target_device=small)

    with pytest.raises(ChannelError) as caught:
        asyncio.run(copy(chan, volume))

    assert caught.value.error_code == "SMSAGENT.TARGET_DISK_TOO_SMALL"
    assert small in caught.value.message
    assert f"{(SIZE_MIB - 16) * MIB} bytes" in caught.value.message
    assert blockcopy.ranges_digest(small, whole) == before


def test_the_io_limit_holds_back_the_reads_of_the_source(
    rig: Rig, target_session: TargetSession
) -> None:
    """`LINUX_IO_LIMIT` 10 MiB/s: the pass cannot read the source faster (less one second's
    burst), and the copy is whole."""
    limit = 10 * MIB
    chan = channel(rig, target_session, read_bytes_s=limit)
    started = time.monotonic()
    report = copy_frozen(rig, chan, rig.table())
    took = time.monotonic() - started

    assert report.read_bytes > 4 * limit  # enough to tell a paced pass from a free one
    assert took >= (report.read_bytes - limit) / limit, (took, report.read_bytes)
    assert_identical(rig)
