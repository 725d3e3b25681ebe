"""The sender's waits against a scripted receiver: replies that arrive while it sends.

The real receiver answers asynchronously, so a reply may come in while the sender is in the
middle of writing; the e2e tests meet that only by chance. Here a fake connection delivers the
replies from inside the sender's `drain()`, at the one moment that matters.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from smsagent.migration.block import receiver as wire
from smsagent.migration.block.digests import DigestTable
from smsagent.migration.block.extents import UsedMap
from smsagent.migration.block.sender import BlockSender, PassVolume

pytestmark = pytest.mark.timeout(30)

MIB = 2**20


class ScriptedPeer:
    """The writer of the sender's connection: reads the frames it is sent, and answers the
    first FLUSH with a NACK of frame 1 (its digest did not match) and the second with the
    acknowledgement of everything, each delivered while the sender waits in `drain()`."""

    def __init__(self, replies: asyncio.StreamReader) -> None:
        self.replies = replies
        self.buffer = bytearray()
        self.seqs: list[int] = []
        self.flushes = 0

    def write(self, data: bytes) -> None:
        self.buffer += data

    async def drain(self) -> None:
        while len(self.buffer) >= wire.HEADER.size:
            kind, _, seq, _, _, _, size, _ = wire.HEADER.unpack_from(self.buffer)
            if len(self.buffer) < wire.HEADER.size + size:
                break
            del self.buffer[: wire.HEADER.size + size]
            if kind != wire.FLUSH:
                self.seqs.append(seq)
                continue
            self.flushes += 1
            reply = (wire.NACK, 1) if self.flushes == 1 else (wire.ACK, seq)
            self.replies.feed_data(wire.REPLY.pack(*reply))
        for _ in range(10):  # the sender's reply reader runs now, inside this drain
            await asyncio.sleep(0)


async def test_the_last_acknowledgement_arriving_during_a_resend_ends_the_pass(
    tmp_path: Path,
) -> None:
    """Frame 1 is NACKed after the first FLUSH: the sender sends 1 and 2 again and flushes,
    and the acknowledgement of all comes while it still writes. The pass ends (it used to wait
    for a reply that never came)."""
    source = tmp_path / "source"
    source.write_bytes(os.urandom(3 * MIB))
    volume = PassVolume(
        0,
        str(source),
        "/dev/target",
        UsedMap(3 * MIB, ((0, 3 * MIB),), whole=False, source="test"),
        DigestTable(tmp_path / "table", 3 * MIB),
    )
    replies = asyncio.StreamReader()
    peer = ScriptedPeer(replies)
    sender = BlockSender(
        replies,
        peer,  # type: ignore[arg-type]
        codec=wire.CODEC_RAW,
        threads=0,
        chunk_bytes=MIB,
        window_bytes=6 * MIB,
        checkpoint=lambda: None,
    )

    counters = await asyncio.wait_for(sender.run([volume]), 10)

    assert peer.seqs == [0, 1, 2, 1, 2]
    assert counters.resent_frames == 2
    assert counters.acked_bytes == 3 * MIB
