"""The block copy of a set of volumes: the receiver, the TLS connection, passes and resumes.

A pass sends, for each volume, the used sub-blocks whose digest differs from the volume's table
(all of them, the first time). A dropped connection, a killed receiver or a refused frame do not
lose what was acknowledged: the pass connects again (starting the receiver again if it is gone)
and goes on from each volume's acknowledged position, up to `retries` times in a row without
progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Optional

from smsagent.migration.block import receiver as wire
from smsagent.migration.block.digests import UNKNOWN
from smsagent.migration.block.pacing import ReadPacer
from smsagent.migration.block.remote import Receiver, start_receiver
from smsagent.migration.block.sender import BlockSender, PassCounters, PassVolume, Tamper
from smsagent.migration.block.tls import TlsMaterial, client_context, is_target
from smsagent.migration.block.volumes import ERROR_TOO_SMALL
from smsagent.target.session import TargetSession

ERROR_CHANNEL: Final = "SMS.0807"
ERROR_TLS_PEER: Final = "SMS.0211"
HANDSHAKE_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True)
class ChannelOptions:
    """How the data channel runs (`LINUX_BLOCK_*` settings and the agent's own).

    Attributes:
        port: the target's data port (8900 in SMS), where the receiver listens.
        connect_address: where the source connects instead of the target's address (a transit
            address, `MIGRATE_DST_IP`), or None.
        connect_port: the port there, when a forward maps the data port to another, or None.
        threads: compression threads; 0 sends raw.
        cache_bytes: one cache node (`LINUX_BLOCK_CACHE_SIZE`): the read size.
        nodes: cache nodes in flight (six, as SMS's agent).
        retries: reconnections in a row without progress before the pass fails.
        retry_delay_s: the wait before the first reconnection, doubled up to 30 s.
        read_bytes_s: the source is read at this rate at most (`LINUX_IO_LIMIT`), or None.
    """

    port: int = 8900
    connect_address: Optional[str] = None
    connect_port: Optional[int] = None
    threads: int = 2
    cache_bytes: int = 4 * 1024 * 1024
    nodes: int = 6
    retries: int = 5
    retry_delay_s: float = 1.0
    read_bytes_s: Optional[int] = None

    @property
    def window_bytes(self) -> int:
        return self.cache_bytes * self.nodes


@dataclass
class PassReport:
    """What one pass did, over all its connections."""

    read_bytes: int = 0
    sent_bytes: int = 0
    wire_bytes: int = 0
    zero_bytes: int = 0
    frames: int = 0
    resent_frames: int = 0
    reconnects: int = 0
    positions: dict[int, int] = field(default_factory=dict)

    def add(self, counters: PassCounters) -> None:
        self.read_bytes += counters.read_bytes
        self.sent_bytes += counters.sent_bytes
        self.wire_bytes += counters.wire_bytes
        self.zero_bytes += counters.zero_bytes
        self.frames += counters.frames
        self.resent_frames += counters.resent_frames
        self.positions.update(counters.positions)


class ChannelError(Exception):
    """The data channel failed for good; `error_code` is what SMS is told."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message


class BlockChannel:
    """The receiver on the target and the TLS connections to it, for one task's work.

    Args:
        session: SSH to the target (starts the receiver).
        material: the task's TLS material.
        devices: the target devices the receiver may write (the task's prepared volumes).
        options: the channel's settings.
        workdir: a private directory of the agent's (key files live there for a moment).
        checkpoint: raises to stop.
        log: a structlog logger.
        tamper: test hook on the wire (see `sender.Tamper`).
    """

    def __init__(
        self,
        session: TargetSession,
        material: TlsMaterial,
        devices: Sequence[str],
        options: ChannelOptions,
        workdir: Path,
        checkpoint: Callable[[], None],
        log: Any,
        *,
        tamper: Optional[Tamper] = None,
    ) -> None:
        self._session = session
        self._material = material
        self._devices = list(devices)
        self._options = options
        self._workdir = workdir
        self._checkpoint = checkpoint
        self._log = log
        self._tamper = tamper
        self._receiver: Optional[Receiver] = None
        self._context: Optional[ssl.SSLContext] = None
        self.receiver_lines: list[str] = []  # the last receiver's output, kept after close
        self._target_has_digests = False

    async def close(self) -> None:
        if self._receiver is not None:
            receiver, self._receiver = self._receiver, None
            await receiver.stop()

    @property
    def receiver(self) -> Optional[Receiver]:
        return self._receiver

    async def run_pass(
        self,
        volumes: Sequence[PassVolume],
        on_progress: Optional[Callable[[PassCounters], None]] = None,
        *,
        paced: bool = True,
    ) -> PassReport:
        """One pass over `volumes`, reconnecting after a failure until it is done.

        With `paced` (all but a frozen pass), the source is read within `read_bytes_s`.

        Raises:
            ChannelError: the channel failed `retries` times in a row without progress, or the
                target's certificate is not the task's.
            TargetError: the receiver cannot be started.
        """
        report = PassReport()
        pending = list(volumes)
        failures = 0
        delay_s = self._options.retry_delay_s
        rate = self._options.read_bytes_s
        pacer = ReadPacer(rate) if paced and rate else None
        while True:
            self._checkpoint()
            acked_before = sum(report.positions.values())
            try:
                counters = await self._one_connection(pending, on_progress, pacer)
            except _Dropped as dropped:
                report.add(dropped.counters)
                report.reconnects += 1
                pending = [_resumed(v, report.positions) for v in pending]
                pending = [v for v in pending if v.start < v.used.size]
                progressed = sum(report.positions.values()) > acked_before
                failures = 0 if progressed else failures + 1
                self._log.warning(
                    "block_channel_dropped", error=str(dropped.cause), attempt=failures
                )
                if failures > self._options.retries:
                    raise ChannelError(
                        ERROR_CHANNEL, f"the data channel failed {failures} times: {dropped.cause}"
                    ) from dropped.cause
                await asyncio.sleep(0 if progressed else delay_s)
                delay_s = self._options.retry_delay_s if progressed else min(delay_s * 2, 30.0)
                continue
            report.add(counters)
            return report

    async def reconcile(self, volume: PassVolume) -> Optional[int]:
        """Forget the table entries the target no longer holds, after the target's own tools
        wrote to `volume` (growing its file system, configuring the copy).

        The target digests the sub-blocks the source's file system uses (it reads its own disk,
        not the network); where it cannot (no `xxhash` there), the whole table is forgotten and
        the next pass sends every used block. Returns how many entries were forgotten, or None
        for the whole table.
        """
        runs = list(volume.used.runs())
        digests = await self._target_digests(volume, runs)
        table = volume.table
        if digests is None:
            table.reset()
            return None
        forgotten = 0
        values = iter(digests)
        for first, count in runs:
            for block in range(first, first + count):
                if table.get(block) != next(values):
                    table.set(block, UNKNOWN)
                    forgotten += 1
        table.flush()
        return forgotten

    async def _target_digests(
        self, volume: PassVolume, runs: Sequence[tuple[int, int]]
    ) -> Optional[list[int]]:
        attempts = 0
        while True:
            self._checkpoint()
            try:
                reader, writer, _ = await self._connect([volume])
            except _Dropped as dropped:
                attempts += 1
                if attempts > self._options.retries:
                    raise ChannelError(ERROR_CHANNEL, str(dropped.cause)) from dropped.cause
                await asyncio.sleep(self._options.retry_delay_s)
                continue
            try:
                if not self._target_has_digests:
                    return None
                request = json.dumps({"runs": runs, "limit": volume.used.size}).encode()
                writer.write(wire.HEADER.pack(wire.HASH, volume.index, 0, 0, 0, 0, len(request), 0))
                writer.write(request)
                await writer.drain()
                kind, size = wire.MESSAGE.unpack(await reader.readexactly(wire.MESSAGE.size))
                body = await reader.readexactly(size)
                if kind != wire.DIGESTS or size != 8 * sum(count for _, count in runs):
                    raise ChannelError(ERROR_CHANNEL, "the receiver answered no digests")
                return list(struct.unpack(f"<{size // 8}Q", body))
            except (OSError, EOFError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
                attempts += 1
                if attempts > self._options.retries:
                    raise ChannelError(ERROR_CHANNEL, str(exc)) from exc
            finally:
                writer.close()

    async def _one_connection(
        self,
        volumes: Sequence[PassVolume],
        on_progress: Optional[Callable[[PassCounters], None]],
        pacer: Optional[ReadPacer],
    ) -> PassCounters:
        reader, writer, codec = await self._connect(volumes)
        sender = BlockSender(
            reader,
            writer,
            codec=codec,
            threads=self._options.threads,
            chunk_bytes=self._options.cache_bytes,
            window_bytes=self._options.window_bytes,
            checkpoint=self._checkpoint,
            on_ack=on_progress,
            tamper=self._tamper,
            pacer=pacer,
        )
        try:
            return await sender.run(volumes)
        except ssl.SSLError as exc:
            refused = _refused(exc)
            if isinstance(refused, _Dropped):
                refused.counters = sender.counters
            raise refused from exc
        except (OSError, EOFError, wire.ProtocolError) as exc:
            raise _Dropped(exc, sender.counters) from exc
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 5.0)

    async def _connect(
        self, volumes: Sequence[PassVolume]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
        if self._receiver is None or not self._receiver.alive:
            if self._receiver is not None:
                self._log.warning("block_receiver_gone", lines=self._receiver.lines[-5:])
                await self._receiver.stop()
            self._receiver = await start_receiver(
                self._session,
                self._material.receiver_config(),
                self._devices,
                port=self._options.port,
            )
            self.receiver_lines = self._receiver.lines
            self._log.info("block_receiver_started", port=self._receiver.port)
        if self._context is None:
            self._context = await asyncio.to_thread(client_context, self._material, self._workdir)
        options = self._options
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    options.connect_address or self._session.host,
                    options.connect_port or self._receiver.port,
                    ssl=self._context,
                    server_hostname="",
                    limit=1 << 20,
                ),
                HANDSHAKE_TIMEOUT_S,
            )
        except ssl.SSLError as exc:
            raise _refused(exc) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            raise _Dropped(exc, PassCounters()) from exc
        ssl_object = writer.get_extra_info("ssl_object")
        try:
            peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        except ValueError as exc:  # the handshake did not complete
            writer.close()
            raise _Dropped(exc, PassCounters()) from exc
        if not is_target(peer, self._material):
            writer.close()
            raise ChannelError(ERROR_TLS_PEER, "the target's data certificate is not the task's")
        hello = {
            # Batches of a third of the window: the target flushes one while the next arrives.
            "ack_bytes": self._options.window_bytes // 3,
            "version": wire.PROTOCOL_VERSION,
            "volumes": [
                {"index": v.index, "path": v.target_device, "size": v.used.size} for v in volumes
            ],
        }
        try:
            writer.write(wire.pack_message(wire.HELLO, hello))
            await writer.drain()
            ready = await asyncio.wait_for(_read_message(reader, wire.READY), HANDSHAKE_TIMEOUT_S)
        except wire.TargetTooSmall as exc:
            writer.close()
            raise ChannelError(ERROR_TOO_SMALL, str(exc)) from exc
        except wire.ProtocolError as exc:
            writer.close()
            raise ChannelError(ERROR_CHANNEL, f"the block receiver refused: {exc}") from exc
        except ssl.SSLError as exc:
            writer.close()
            raise _refused(exc) from exc
        except (OSError, EOFError, asyncio.TimeoutError) as exc:
            writer.close()
            raise _Dropped(exc, PassCounters()) from exc
        self._target_has_digests = bool(ready.get("digests"))
        return reader, writer, self._codec(ready)

    def _codec(self, ready: dict[str, Any]) -> int:
        offered = set(ready.get("codecs", []))
        if self._options.threads <= 0:
            return wire.CODEC_RAW
        if wire.CODEC_ZSTD in offered and importlib.util.find_spec("zstandard") is not None:
            return wire.CODEC_ZSTD
        return wire.CODEC_ZLIB


# TLS alerts that say a certificate was refused: trying again cannot help.
_CERTIFICATE_ALERTS: Final = (
    "CERTIFICATE_VERIFY_FAILED",
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_DECRYPT_ERROR",
)


def _refused(exc: ssl.SSLError) -> Exception:
    """A certificate refusal (either way) as a ChannelError; other TLS failures as a drop."""
    reason = str(getattr(exc, "reason", "") or exc)
    if any(alert in reason for alert in _CERTIFICATE_ALERTS):
        return ChannelError(
            ERROR_TLS_PEER,
            f"the data channel's certificates were refused ({reason}): the source and the "
            "target must hold the task's own certificates",
        )
    return _Dropped(exc, PassCounters())


class _Dropped(Exception):
    def __init__(self, cause: BaseException, counters: PassCounters) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.counters = counters


def _resumed(volume: PassVolume, positions: dict[int, int]) -> PassVolume:
    start = max(volume.start, positions.get(volume.index, volume.start))
    return PassVolume(
        volume.index, volume.source_device, volume.target_device, volume.used, volume.table, start
    )


async def _read_message(reader: asyncio.StreamReader, expected: int) -> dict[str, Any]:
    kind, size = wire.MESSAGE.unpack(await reader.readexactly(wire.MESSAGE.size))
    if size > wire.MAX_MESSAGE:
        raise wire.ProtocolError(f"a message of {size} bytes")

    body = json.loads((await reader.readexactly(size)).decode("utf-8"))
    if kind == wire.ERROR:
        text = str(body.get("error", "error"))
        raise wire.TargetTooSmall(text) if body.get("too_small") else wire.ProtocolError(text)
    if kind != expected or not isinstance(body, dict):
        raise wire.ProtocolError(f"expected message {expected}, got {kind}")
    return body
