"""One pass of the block copy over one TLS connection to the receiver.

The frames are streamed without waiting for each other: chunks are read and compressed ahead
(compression on `threads` threads; a chunk that does not shrink goes raw), and sent as they are
ready, while the receiver's acknowledgements come back in batches. At most `window_bytes` of
source data are between being read and being acknowledged (`LINUX_BLOCK_CACHE_SIZE` times 6, as
SMS's six cache nodes). An acknowledged piece is durable on the target: only then is its
digest entered in the table and the volume's resume point moved past it. A NACK (the target's
digest check failed) makes the sender go back to that frame and send it and everything after it
again; nothing unverified is ever written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from smsagent.migration.block import receiver as wire
from smsagent.migration.block.digests import DigestTable
from smsagent.migration.block.extents import UsedMap
from smsagent.migration.block.source import Piece, VolumeReader, changed_chunk, chunk_spans


@dataclass(frozen=True)
class PassVolume:
    """A volume of the pass: where it is read, where it goes, its map and its table."""

    index: int
    source_device: str
    target_device: str
    used: UsedMap
    table: DigestTable
    start: int = 0  # resume: everything before this offset is on the target already


@dataclass
class PassCounters:
    """What a pass did so far; read by progress reports while it runs."""

    read_bytes: int = 0
    sent_bytes: int = 0  # source bytes of the data frames sent (before compression)
    wire_bytes: int = 0  # payload bytes on the wire (after compression)
    zero_bytes: int = 0
    acked_bytes: int = 0
    frames: int = 0
    resent_frames: int = 0
    positions: dict[int, int] = field(default_factory=dict)  # volume -> acknowledged end


Tamper = Callable[[int, bytes], bytes]
"""Test hook: given a frame's seq and payload as sent the first time, the payload to send."""


@dataclass
class _Frame:
    seq: int
    volume: PassVolume
    piece: Piece
    end: int  # the volume offset the resume point reaches once this frame is acknowledged
    header: bytes = b""
    payload: bytes = b""
    ready: Optional[asyncio.Future[tuple[int, bytes]]] = None


class BlockSender:
    """Sends the pieces of `volumes` that differ from their tables.

    Args:
        reader: the stream of the TLS connection.
        writer: its writer.
        codec: `receiver.CODEC_ZSTD`, `CODEC_ZLIB` or `CODEC_RAW`.
        threads: compression threads (0: none).
        chunk_bytes: how much is read at once (`LINUX_BLOCK_CACHE_SIZE`).
        window_bytes: source bytes at most between read and acknowledged.
        checkpoint: raises to stop (STOP, shutdown); called between chunks.
        on_ack: called after each acknowledgement (to save the resume point).
        tamper: test hook on the wire.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        codec: int,
        threads: int,
        chunk_bytes: int,
        window_bytes: int,
        checkpoint: Callable[[], None],
        on_ack: Optional[Callable[[PassCounters], None]] = None,
        tamper: Optional[Tamper] = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._codec = codec
        self._threads = threads
        self._chunk_bytes = chunk_bytes
        self._window_bytes = max(window_bytes, chunk_bytes)
        self._checkpoint = checkpoint
        self._on_ack = on_ack
        self._tamper = tamper
        self.counters = PassCounters()
        self._inflight: deque[_Frame] = deque()
        self._inflight_bytes = 0
        self._window_open = asyncio.Event()
        self._rewind: Optional[int] = None
        self._acked: Optional[int] = None
        self._seq = 0
        self._failure: Optional[BaseException] = None
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None

    async def run(self, volumes: Sequence[PassVolume]) -> PassCounters:
        """Send every volume's differing pieces; return once all are acknowledged.

        Raises:
            ConnectionError: the connection dropped (resume from the counters' positions).
            wire.ProtocolError: the receiver refused (a device, a frame).
        """
        if self._threads > 0 and self._codec != wire.CODEC_RAW:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="smsagent-compress"
            )
        acks = asyncio.ensure_future(self._read_replies())
        try:
            for volume in volumes:
                self.counters.positions.setdefault(volume.index, volume.start)
                await self._send_volume(volume)
            await self._send_flush()
            await self._until_acked()
            for volume in volumes:
                self.counters.positions[volume.index] = volume.used.size
        finally:
            acks.cancel()
            await asyncio.gather(acks, return_exceptions=True)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
        return self.counters

    async def _send_volume(self, volume: PassVolume) -> None:
        reader = await asyncio.to_thread(VolumeReader, volume.source_device, self._chunk_bytes)
        try:
            zeros = volume.used.whole
            for offset, length in chunk_spans(volume.used, self._chunk_bytes, volume.start):
                self._checkpoint()
                self._raise_failure()
                await self._wait_window(length)
                chunk = await asyncio.to_thread(
                    changed_chunk, reader, volume.table, offset, length, zeros=zeros
                )
                self.counters.read_bytes += chunk.read_bytes
                if not chunk.pieces:
                    self._advance_idle(volume, chunk.end)
                    continue
                for number, piece in enumerate(chunk.pieces):
                    end = chunk.end if number == len(chunk.pieces) - 1 else piece.end
                    await self._queue(volume, piece, end)
        finally:
            await asyncio.to_thread(reader.close)

    def _advance_idle(self, volume: PassVolume, end: int) -> None:
        """A chunk with nothing to send: the resume point passes it once nothing is in flight
        (before it, an unacknowledged frame must stay where a resume starts)."""
        if not self._inflight:
            self.counters.positions[volume.index] = end

    async def _queue(self, volume: PassVolume, piece: Piece, end: int) -> None:
        frame = _Frame(self._seq, volume, piece, end)
        self._seq += 1
        # Invalidate before sending: if this run ends before the acknowledgement, the table
        # does not claim what the target may hold only in part.
        volume.table.clear(piece.first, len(piece.digests))
        frame.ready = self._encode(piece)
        self._inflight.append(frame)
        self._inflight_bytes += piece.length
        await self._transmit(frame)

    def _encode(self, piece: Piece) -> asyncio.Future[tuple[int, bytes]]:
        loop = asyncio.get_running_loop()
        if piece.data is None:
            future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            future.set_result((wire.CODEC_RAW, b""))
            return future
        data = piece.data
        if self._pool is None:
            future = loop.create_future()
            future.set_result((wire.CODEC_RAW, data))
            return future
        return asyncio.wrap_future(self._pool.submit(_compress, self._codec, data))

    async def _transmit(self, frame: _Frame) -> None:
        """Send the frames up to `frame` whose encoding is ready, in order; go back after a
        NACK. Sending never waits for an encoding beyond what the window holds."""
        if self._rewind is not None:
            await self._go_back()
        # Keep the compression threads busy: wait for the oldest unsent frame only when the
        # window is full or this is the last.
        await self._send_ready(block=self._inflight_bytes >= self._window_bytes)

    async def _send_ready(self, *, block: bool) -> None:
        while True:
            # Acknowledgements arrive while this waits: look the queue up afresh each time.
            frame = next((f for f in self._inflight if not f.header), None)
            if frame is None:
                return
            assert frame.ready is not None
            if not frame.ready.done() and not block:
                return
            codec, payload = await frame.ready
            await self._write(frame, codec, payload, first=True)

    async def _write(self, frame: _Frame, codec: int, payload: bytes, *, first: bool) -> None:
        piece = frame.piece
        kind = wire.ZERO if piece.data is None else wire.DATA
        digest = wire.crc(piece.data) if piece.data is not None else 0
        frame.header = wire.HEADER.pack(
            kind, frame.volume.index, frame.seq, piece.offset, piece.length, codec,
            len(payload), digest,
        )  # fmt: skip
        frame.payload = payload
        if first and self._tamper is not None:
            payload = self._tamper(frame.seq, payload)
        self._writer.write(frame.header)
        if payload:
            self._writer.write(payload)
        await self._writer.drain()
        if first:
            self.counters.frames += 1
            if piece.data is None:
                self.counters.zero_bytes += piece.length
            else:
                self.counters.sent_bytes += piece.length
                self.counters.wire_bytes += len(payload)

    async def _go_back(self) -> None:
        rewind, self._rewind = self._rewind, None
        for frame in list(self._inflight):
            if rewind is not None and frame.seq >= rewind and frame.header:
                self._writer.write(frame.header)
                if frame.payload:
                    self._writer.write(frame.payload)
                self.counters.resent_frames += 1
        await self._writer.drain()

    async def _send_flush(self) -> None:
        while True:
            if self._rewind is not None:
                await self._go_back()
            await self._send_ready(block=True)
            if self._rewind is None:
                break
        last = self._seq - 1
        if last >= 0:
            self._writer.write(wire.HEADER.pack(wire.FLUSH, 0, last, 0, 0, 0, 0, 0))
            await self._writer.drain()

    # Both waits clear the event before they send: a reply that arrives while they send (the
    # last acknowledgement, say) sets it again and is not lost, or they would wait for a reply
    # that never comes.

    async def _until_acked(self) -> None:
        while self._inflight:
            self._raise_failure()
            self._checkpoint()
            self._window_open.clear()
            if self._rewind is not None:
                await self._send_flush()
            await self._window_open.wait()
        self._raise_failure()

    async def _wait_window(self, length: int) -> None:
        while self._inflight and self._inflight_bytes + length > self._window_bytes:
            self._raise_failure()
            self._window_open.clear()
            if self._rewind is not None:
                await self._go_back()
            await self._send_ready(block=True)
            await self._window_open.wait()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _read_replies(self) -> None:
        try:
            while True:
                raw = await self._reader.readexactly(wire.REPLY.size)
                kind, seq = wire.REPLY.unpack(raw)
                if kind == wire.ACK:
                    self._acknowledged(seq)
                elif kind == wire.NACK:
                    self._rewind = seq if self._rewind is None else min(self._rewind, seq)
                else:
                    raise wire.ProtocolError(f"unexpected reply {kind} from the receiver")
                self._window_open.set()
        except asyncio.IncompleteReadError:
            self._failure = ConnectionError("the receiver closed the connection")
        except (OSError, wire.ProtocolError) as exc:
            self._failure = exc
        self._window_open.set()

    def _acknowledged(self, seq: int) -> None:
        counters = self.counters
        while self._inflight and self._inflight[0].seq <= seq:
            frame = self._inflight.popleft()
            self._inflight_bytes -= frame.piece.length
            table = frame.volume.table
            for number, value in enumerate(frame.piece.digests):
                table.set(frame.piece.first + number, value)
            counters.acked_bytes += frame.piece.length
            counters.positions[frame.volume.index] = frame.end
        if self._on_ack is not None:
            self._on_ack(counters)


def _compress(codec: int, data: bytes) -> tuple[int, bytes]:
    """`data` compressed with `codec`, or raw when that does not make it smaller."""
    if codec == wire.CODEC_ZSTD:
        packed = _zstd_compressor().compress(data)
    elif codec == wire.CODEC_ZLIB:
        packed = zlib.compress(data, 1)
    else:
        return wire.CODEC_RAW, data
    return (codec, packed) if len(packed) < len(data) else (wire.CODEC_RAW, data)


def _zstd_compressor() -> Any:
    import threading

    import zstandard

    local = _LOCAL.get("tls")
    if local is None:
        local = _LOCAL["tls"] = threading.local()
    compressor = getattr(local, "compressor", None)
    if compressor is None:
        compressor = local.compressor = zstandard.ZstdCompressor(level=1)
    return compressor


_LOCAL: dict[str, Any] = {}
