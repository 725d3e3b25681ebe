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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from smsagent.migration.block import receiver as wire
from smsagent.migration.block.digests import DigestTable
from smsagent.migration.block.extents import UsedMap
from smsagent.migration.block.pacing import ReadPacer
from smsagent.migration.block.source import (
    Chunk,
    Piece,
    VolumeReader,
    changed_chunk,
    chunk_spans,
)


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


Encoded = tuple[int, bytes, int]
"""A piece ready for the wire: its codec, its payload and the CRC32 of its source bytes."""

Tamper = Callable[[int, bytes], bytes]
"""Test hook: given a frame's seq and payload as sent the first time, the payload to send."""


@dataclass(frozen=True)
class _Reading:
    """A chunk being read ahead: its length (counted in the window) and its result."""

    length: int
    chunk: asyncio.Future[Chunk]


@dataclass
class _Frame:
    seq: int
    volume: PassVolume
    piece: Piece
    end: int  # the volume offset the resume point reaches once this frame is acknowledged
    header: bytes = b""
    payload: bytes = b""
    ready: Optional[asyncio.Future[Encoded]] = None


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
        pacer: holds the reads to `LINUX_IO_LIMIT`, or None.
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
        pacer: Optional[ReadPacer] = None,
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
        self._pacer = pacer
        self.counters = PassCounters()
        self._inflight: deque[_Frame] = deque()  # queued, not yet acknowledged
        self._unsent: deque[_Frame] = deque()  # queued, not yet sent
        self._inflight_bytes = 0
        self._reading_bytes = 0  # read, or being read, and not yet queued
        self._window_open = asyncio.Event()
        self._wake_transmitter = asyncio.Event()
        self._flush_wanted = False
        self._rewind: Optional[int] = None
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
        tasks = [
            asyncio.ensure_future(self._read_replies()),
            asyncio.ensure_future(self._transmit()),
        ]
        try:
            for volume in volumes:
                self.counters.positions.setdefault(volume.index, volume.start)
                await self._send_volume(volume)
            self._flush_wanted = True
            self._wake_transmitter.set()
            await self._until_acked()
            for volume in volumes:
                self.counters.positions[volume.index] = volume.used.size
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
        return self.counters

    async def _send_volume(self, volume: PassVolume) -> None:
        """Read the volume's chunks one ahead of the one being queued (a read overlaps the
        compression and sending of the chunk before it), within the window."""
        reader = await asyncio.to_thread(VolumeReader, volume.source_device, self._chunk_bytes)
        spans = chunk_spans(volume.used, self._chunk_bytes, volume.start)
        reads: deque[_Reading] = deque()  # the chunk being queued, then the one read ahead
        try:
            first = await self._read_next(reader, volume, spans)
            if first is not None:
                reads.append(first)
            while reads:
                chunk = await reads[0].chunk
                following = await self._read_next(reader, volume, spans)
                if following is not None:
                    reads.append(following)
                self.counters.read_bytes += chunk.read_bytes
                if not chunk.pieces:
                    self._advance_idle(volume, chunk.end)
                for number, piece in enumerate(chunk.pieces):
                    end = chunk.end if number == len(chunk.pieces) - 1 else piece.end
                    self._queue(volume, piece, end)
                self._reading_bytes -= reads.popleft().length
        finally:
            # A read still running uses the reader's buffer: the reader closes after it.
            await asyncio.gather(*(r.chunk for r in reads), return_exceptions=True)
            await asyncio.to_thread(reader.close)

    async def _read_next(
        self, reader: VolumeReader, volume: PassVolume, spans: Iterator[tuple[int, int]]
    ) -> Optional[_Reading]:
        """Start reading the next chunk once the window has room for it; None after the last."""
        span = next(spans, None)
        if span is None:
            return None
        offset, length = span
        self._checkpoint()
        await self._wait_window(length)
        if self._pacer is not None:
            await self._pacer.take(length)
        self._reading_bytes += length
        chunk = asyncio.ensure_future(
            asyncio.to_thread(
                changed_chunk, reader, volume.table, offset, length, zeros=volume.used.whole
            )
        )
        return _Reading(length, chunk)

    def _advance_idle(self, volume: PassVolume, end: int) -> None:
        """A chunk with nothing to send: the resume point passes it once nothing is in flight
        (before it, an unacknowledged frame must stay where a resume starts)."""
        if not self._inflight:
            self.counters.positions[volume.index] = end

    def _queue(self, volume: PassVolume, piece: Piece, end: int) -> None:
        frame = _Frame(self._seq, volume, piece, end)
        self._seq += 1
        # Invalidate before sending: if this run ends before the acknowledgement, the table
        # does not claim what the target may hold only in part.
        volume.table.clear(piece.first, len(piece.digests))
        frame.ready = self._encode(piece)
        self._inflight.append(frame)
        self._unsent.append(frame)
        self._inflight_bytes += piece.length
        self._wake_transmitter.set()

    def _encode(self, piece: Piece) -> asyncio.Future[Encoded]:
        loop = asyncio.get_running_loop()
        if piece.data is None:
            future: asyncio.Future[Encoded] = loop.create_future()
            future.set_result((wire.CODEC_RAW, b"", 0))
            return future
        data = piece.data
        if self._pool is None:
            future = loop.create_future()
            future.set_result((wire.CODEC_RAW, data, wire.crc(data)))
            return future
        return asyncio.wrap_future(self._pool.submit(_compress, self._codec, data))

    async def _transmit(self) -> None:
        """The one writer of the connection: sends each queued frame, in order, as soon as
        its encoding is ready; goes back after a NACK; flushes once all is sent and the pass
        asks for it. A failure is kept for the pass to raise."""
        flushed_at = -1  # the last seq a FLUSH followed
        try:
            while True:
                if self._rewind is not None:
                    await self._go_back()
                    flushed_at = -1
                    continue
                if self._unsent:
                    frame = self._unsent[0]
                    assert frame.ready is not None
                    codec, payload, digest = await frame.ready
                    await self._write(frame, codec, payload, digest)
                    self._unsent.popleft()
                    continue
                last = self._seq - 1
                if self._flush_wanted and last >= 0 and flushed_at != last:
                    self._writer.write(wire.HEADER.pack(wire.FLUSH, 0, last, 0, 0, 0, 0, 0))
                    await self._writer.drain()
                    flushed_at = last
                    continue
                self._wake_transmitter.clear()
                await self._wake_transmitter.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the pass raises it (a dropped connection, mostly)
            self._failure = exc
            self._window_open.set()

    async def _write(self, frame: _Frame, codec: int, payload: bytes, digest: int) -> None:
        piece = frame.piece
        kind = wire.ZERO if piece.data is None else wire.DATA
        frame.header = wire.HEADER.pack(
            kind, frame.volume.index, frame.seq, piece.offset, piece.length, codec,
            len(payload), digest,
        )  # fmt: skip
        frame.payload = payload
        if self._tamper is not None:
            payload = self._tamper(frame.seq, payload)
        self._writer.write(frame.header)
        if payload:
            self._writer.write(payload)
        await self._writer.drain()
        self.counters.frames += 1
        if piece.data is None:
            self.counters.zero_bytes += piece.length
        else:
            self.counters.sent_bytes += piece.length
            self.counters.wire_bytes += len(payload)

    async def _go_back(self) -> None:
        """Send again every sent frame from the NACKed one on (the receiver dropped them)."""
        rewind, self._rewind = self._rewind, None
        for frame in list(self._inflight):
            if rewind is not None and frame.seq >= rewind and frame.header:
                self._writer.write(frame.header)
                if frame.payload:
                    self._writer.write(frame.payload)
                self.counters.resent_frames += 1
        await self._writer.drain()

    # Both waits clear the event before they wait, with no await in between: a reply that
    # arrives while they wait sets it again and is not lost.

    async def _until_acked(self) -> None:
        while self._inflight:
            self._raise_failure()
            self._checkpoint()
            self._window_open.clear()
            await self._window_open.wait()
        self._raise_failure()

    async def _wait_window(self, length: int) -> None:
        """Wait until `length` more bytes fit in the window with what is in flight and what is
        being read (acknowledgements make room; the transmitter sends meanwhile)."""
        while (
            self._inflight
            and self._inflight_bytes + self._reading_bytes + length > self._window_bytes
        ):
            self._raise_failure()
            self._window_open.clear()
            await self._window_open.wait()
        self._raise_failure()

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
                    self._wake_transmitter.set()
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


def _compress(codec: int, data: bytes) -> Encoded:
    """`data` compressed with `codec`, or raw when that does not make it smaller, and its CRC
    (computed here, on a compression thread, not on the event loop)."""
    digest = wire.crc(data)
    if codec == wire.CODEC_ZSTD:
        packed = _zstd_compressor().compress(data)
    elif codec == wire.CODEC_ZLIB:
        packed = zlib.compress(data, 1)
    else:
        return wire.CODEC_RAW, data, digest
    return (codec, packed, digest) if len(packed) < len(data) else (wire.CODEC_RAW, data, digest)


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
