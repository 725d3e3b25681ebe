"""The block receiver: runs on the target, writes the chunks the source sends into its disks.

This file is two things. The agent imports it for the wire format (`HEADER`, the frame kinds and
codecs), so both ends share one definition. And the agent sends its text to the target over the
task's SSH session, where `python3` runs it: nothing is installed on the target, so it uses the
standard library only (and the `zstandard` package when the agent sent one that the target's
Python can load; otherwise it offers zlib alone).

On the target it reads one JSON document on stdin (the task's TLS material, the devices it may
write, the port), listens with TLS on the data port, and serves one source connection at a
time. Both ends are pinned: the source must present the task's source certificate, signed by the
task's CA; a plain-text or foreign peer fails the handshake. Stdin staying open is its lease:
when the agent's ssh goes away (the agent stopped or was killed), the receiver exits.

Per connection:
    source -> HELLO (JSON: the devices by index, sizes, the codecs it will use)
    target -> READY (JSON: the codecs it has)
    source -> DATA / ZERO frames, streamed without waiting; FLUSH asks for an acknowledgement
    target -> ACK(seq): every frame up to `seq` is written and fsync'd
              NACK(seq): frame `seq` did not match its digest; the target drops every frame
              until `seq` arrives again (the source goes back to it)

Two threads serve a connection. The network thread receives, decodes and checks each frame and
sends the replies (the TLS connection is never used from two threads); the disk thread writes
the checked frames in order and fsyncs them in batches. So receiving goes on while the disk
writes and flushes, which on a real disk is most of a batch's time.
"""

# It runs on the target's Python, which may be as old as 3.6: no `from __future__ import
# annotations`, `typing` generics and %-formatting are kept on purpose.
# ruff: noqa: UP006, UP031, UP035, PTH108, PTH118

import collections
import contextlib
import errno
import fcntl
import json
import mmap
import os
import select
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import threading
import zlib
from typing import Any, Callable, Deque, Dict, Optional, Set

PROTOCOL_VERSION = 1
# kind(1) volume(2) seq(8) offset(8) length(4) codec(1) payload(4) crc32(4), network order.
HEADER = struct.Struct("!BHQQIBII")
# kind(1) seq(8)
REPLY = struct.Struct("!BQ")
# A JSON message: kind(1) length(4), then the UTF-8 text.
MESSAGE = struct.Struct("!BI")

HELLO = 1
READY = 2
DATA = 3
ZERO = 4
FLUSH = 5
ACK = 6
NACK = 7
ERROR = 8
HASH = 9
DIGESTS = 10

CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_ZLIB = 2

MAX_CHUNK = 64 * 1024 * 1024
MAX_MESSAGE = 1024 * 1024
# A batch is acknowledged once this much is written, or when the source pauses; the source may
# ask for smaller batches (a third of what it keeps in flight), within these bounds.
ACK_BYTES = 16 * 1024 * 1024
MIN_ACK_BYTES = 1024 * 1024
# Checked frames waiting for the disk thread, at most (the network thread waits beyond it).
QUEUE_BYTES = 32 * 1024 * 1024
ZERO_SPAN = 1024 * 1024
# Direct writes: offsets and lengths in multiples of this (any logical block size up to it);
# copied through an aligned buffer of DIRECT_BUFFER bytes.
DIRECT_ALIGN = 4096
DIRECT_BUFFER = 4 * 1024 * 1024
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272
BLKFLSBUF = 0x1261
SUB_BLOCK = 64 * 1024
LISTENING = "SMSAGENT-RECEIVER-LISTENING"


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


class TargetTooSmall(ProtocolError):
    """A target device holds fewer bytes than its source volume: no retry helps."""


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def read_exact(sock: Any, size: int) -> bytes:
    """`size` bytes from `sock`; ConnectionError when the peer closed first."""
    parts = []
    remaining = size
    while remaining:
        part = sock.recv(min(remaining, 4 * 1024 * 1024))
        if not part:
            raise ConnectionError("the peer closed the connection")
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def pack_message(kind: int, body: Dict[str, Any]) -> bytes:
    text = json.dumps(body, sort_keys=True).encode("utf-8")
    return MESSAGE.pack(kind, len(text)) + text


def read_message(sock: Any, expected: int) -> Dict[str, Any]:
    kind, size = MESSAGE.unpack(read_exact(sock, MESSAGE.size))
    if size > MAX_MESSAGE:
        raise ProtocolError("message of %d bytes is too large" % size)
    body = json.loads(read_exact(sock, size).decode("utf-8"))
    if kind == ERROR:
        raise ProtocolError(str(body.get("error", "the peer reported an error")))
    if kind != expected or not isinstance(body, dict):
        raise ProtocolError("expected message %d, got %d" % (expected, kind))
    return body


def block_digest() -> Optional[Callable[[bytes], int]]:
    """The digest table's function (xxh3, 64 bits, never 0), when `xxhash` is importable."""
    try:
        import xxhash  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    function = xxhash.xxh3_64_intdigest
    return lambda data: function(data) or 1


def decoders() -> Dict[int, Callable[[bytes, int], bytes]]:
    """The codecs this Python can decode: raw and zlib always, zstd when importable."""
    table: Dict[int, Callable[[bytes, int], bytes]] = {
        CODEC_RAW: lambda payload, length: payload,
        CODEC_ZLIB: lambda payload, length: zlib.decompress(payload),
    }
    try:
        import zstandard  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return table
    decompressor = zstandard.ZstdDecompressor()
    table[CODEC_ZSTD] = lambda payload, length: decompressor.decompress(
        payload, max_output_size=length
    )
    return table


class Volume:
    """One target device this receiver may write, opened exclusively (a mounted or otherwise
    claimed device refuses the open, so the receiver never writes one in use).

    Writes bypass the target's page cache (O_DIRECT) where the device allows it: the data is
    copied once, into an aligned buffer, instead of into the cache and out again at the fsync,
    and the target's memory is left to its own system.
    """

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags | os.O_DIRECT)
            self.direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no direct I/O on this file system
                raise
            self.fd = os.open(path, flags)
            self.direct = False
        actual = device_size(self.fd)
        if actual < size:
            os.close(self.fd)
            raise TargetTooSmall(
                "target volume %s holds %d bytes, fewer than its source's %d" % (path, actual, size)
            )
        self.size = actual
        self.dirty = False
        self._buffer: Optional[mmap.mmap] = None

    def write(self, offset: int, data: bytes) -> None:
        self.dirty = True
        if self.direct and offset % DIRECT_ALIGN == 0 and len(data) % DIRECT_ALIGN == 0:
            try:
                self._write_direct(offset, data)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._set_direct(False)  # the device refuses direct writes: buffered from now
        if not self.direct:
            self._write_all(offset, memoryview(data))
            return
        # An unaligned piece (a device's last sub-block): buffered, the fsync covers it.
        self._set_direct(False)
        try:
            self._write_all(offset, memoryview(data))
        finally:
            self._set_direct(True)

    def _write_direct(self, offset: int, data: bytes) -> None:
        if self._buffer is None:
            self._buffer = mmap.mmap(-1, DIRECT_BUFFER)  # page-aligned, as O_DIRECT needs
        buffer = memoryview(self._buffer)
        source = memoryview(data)
        try:
            while source:
                size = min(len(source), DIRECT_BUFFER)
                buffer[:size] = source[:size]
                self._write_all(offset, buffer[:size])
                source = source[size:]
                offset += size
        finally:
            buffer.release()

    def _write_all(self, offset: int, view: memoryview) -> None:
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def _set_direct(self, direct: bool) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        flags = flags | os.O_DIRECT if direct else flags & ~os.O_DIRECT
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)
        self.direct = direct

    def zero(self, offset: int, length: int) -> None:
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        except OSError:
            empty = bytes(min(length, ZERO_SPAN))
            end = offset + length
            while offset < end:
                self.write(offset, empty[: min(len(empty), end - offset)])
                offset += len(empty)
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    def close(self) -> None:
        os.close(self.fd)
        buffer, self._buffer = self._buffer, None
        # After a failed write its traceback may still hold a view of the buffer: then the
        # buffer is freed with that traceback, not here.
        if buffer is not None:
            with contextlib.suppress(BufferError):
                buffer.close()


def flush_cache(descriptor: int) -> None:
    """Drop the device's cached blocks: a file system mounted on it since wrote around them."""
    # Not a block device (the wire format's tests write regular files): nothing cached.
    with contextlib.suppress(OSError):
        fcntl.ioctl(descriptor, BLKFLSBUF, 0)


def device_size(fd: int) -> int:
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("Q", buf)[0])
    except OSError:
        return os.fstat(fd).st_size  # a regular file (tests of the wire format)


class DiskWriter:
    """The disk thread of a connection: writes checked frames in order, fsyncs them in batches
    of `batch_bytes` (or when asked: the source paused), and tells the network thread, through
    a pipe it can select on, which frame is durable."""

    def __init__(self, batch_bytes: int) -> None:
        self.batch_bytes = batch_bytes
        self.wake_read, self.wake_write = os.pipe()
        # Never blocks: a full pipe wakes the network thread already, which may not read it for
        # as long as the connection keeps it busy.
        os.set_blocking(self.wake_write, False)
        self.durable: Optional[int] = None  # every frame up to this seq is on disk
        self.error: Optional[BaseException] = None
        self._items: Deque[Any] = collections.deque()
        self._queued_bytes = 0
        self._busy = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="disk", daemon=True)
        self._thread.start()

    def write(
        self, seq: int, volume: Volume, offset: int, data: Optional[bytes], length: int
    ) -> None:
        """Queue one checked frame (`data` None: zeros); waits while the queue is full."""
        with self._ready:
            while self._queued_bytes >= QUEUE_BYTES and self.error is None:
                self._ready.wait()
            self._items.append((seq, volume, offset, data, length))
            self._queued_bytes += len(data) if data is not None else 0
            self._ready.notify_all()

    def sync(self) -> None:
        """Ask for the frames queued so far to be made durable (skipped when more follow)."""
        with self._ready:
            self._items.append(None)
            self._ready.notify_all()

    def idle(self) -> None:
        """Wait until every queued frame is written and durable."""
        self.sync()
        with self._ready:
            while (self._items or self._busy) and self.error is None:
                self._ready.wait()

    def close(self) -> None:
        with self._ready:
            self._items.append(STOP)
            self._ready.notify_all()
        self._thread.join()
        os.close(self.wake_read)
        os.close(self.wake_write)

    def _run(self) -> None:
        dirty: Set[Volume] = set()
        unsynced = 0
        last: Optional[int] = None
        try:
            while True:
                with self._ready:
                    self._busy = False
                    self._ready.notify_all()
                    while not self._items:
                        self._ready.wait()
                    item = self._items.popleft()
                    self._busy = True
                    more = bool(self._items)
                    if item is not None and item is not STOP and item[3] is not None:
                        self._queued_bytes -= len(item[3])
                        self._ready.notify_all()
                if item is STOP:
                    return
                if item is not None:
                    seq, volume, offset, data, length = item
                    if data is None:
                        volume.zero(offset, length)
                    else:
                        volume.write(offset, data)
                        unsynced += length
                    dirty.add(volume)
                    last = seq
                if last is None or (unsynced < self.batch_bytes and (item is not None or more)):
                    continue
                for volume in dirty:
                    volume.sync()
                dirty.clear()
                unsynced = 0
                self.durable, last = last, None
                self._wake()
        except BaseException as exc:  # the network thread reports it and ends the connection
            self.error = exc
            with self._ready:
                self._busy = False
                self._ready.notify_all()
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_write, b"x")


STOP = object()


class Session:
    """One source connection: check each frame, have it written, acknowledge what is on disk."""

    def __init__(self, sock: Any, allowed: Dict[str, int]) -> None:
        self.sock = sock
        self.allowed = allowed
        self.volumes: Dict[int, Volume] = {}
        self.codecs = decoders()
        self.expected = 0  # the seq of the next frame to accept
        self.waiting_for: Optional[int] = None  # a NACKed seq: frames are dropped until it
        self.acked: Optional[int] = None
        self._disk: Optional[DiskWriter] = None

    @property
    def disk(self) -> DiskWriter:
        assert self._disk is not None, "the disk thread starts with the connection"
        return self._disk

    def serve(self) -> None:
        hello = read_message(self.sock, HELLO)
        if hello.get("version") != PROTOCOL_VERSION:
            raise ProtocolError("protocol version %r is not %d" % (hello.get("version"), 1))
        try:
            for entry in hello.get("volumes", []):
                path, size = str(entry["path"]), int(entry["size"])
                if path not in self.allowed:
                    raise ProtocolError("%s is not a device of this task" % path)
                self.volumes[int(entry["index"])] = Volume(path, size)
        except (OSError, ProtocolError) as exc:
            refusal = {"error": str(exc), "too_small": isinstance(exc, TargetTooSmall)}
            self.sock.sendall(pack_message(ERROR, refusal))
            raise
        batch = int(hello.get("ack_bytes") or ACK_BYTES)
        self._disk = DiskWriter(max(MIN_ACK_BYTES, min(batch, ACK_BYTES)))
        ready = {
            "codecs": sorted(self.codecs),
            "digests": block_digest() is not None,
            "version": PROTOCOL_VERSION,
        }
        self.sock.sendall(pack_message(READY, ready))
        try:
            while self.frame():
                pass
        finally:
            self.disk.close()
            for volume in self.volumes.values():
                volume.close()

    def frame(self) -> bool:
        header = self.next_header()
        if header is None:
            return False
        kind, index, seq, offset, length, codec, size, digest = header
        if size > MAX_CHUNK or length > MAX_CHUNK:
            raise ProtocolError("frame %d is larger than %d bytes" % (seq, MAX_CHUNK))
        payload = read_exact(self.sock, size) if size else b""
        if kind == FLUSH:
            self.disk.sync()
            return True
        if kind == HASH:
            self.disk.idle()
            self.acknowledge()
            self.send_digests(index, json.loads(payload.decode("utf-8")))
            return True
        if kind not in (DATA, ZERO):
            raise ProtocolError("unknown frame kind %d" % kind)
        if self.waiting_for is not None and seq != self.waiting_for:
            return True  # after a NACK: dropped until the source goes back
        if seq != self.expected:
            raise ProtocolError("frame %d arrived where %d was due" % (seq, self.expected))
        volume = self.volumes.get(index)
        if volume is None or offset + length > volume.size:
            raise ProtocolError("frame %d is outside the devices of this task" % seq)
        data = None
        if kind == DATA:
            data = self.checked(codec, payload, length, digest)
            if data is None:
                self.waiting_for = seq
                self.sock.sendall(REPLY.pack(NACK, seq))
                return True
        self.waiting_for = None
        self.expected = seq + 1
        self.disk.write(seq, volume, offset, data, length)
        if not self.more_waiting():
            self.disk.sync()  # the source paused
        self.acknowledge()
        return True

    def checked(self, codec: int, payload: bytes, length: int, digest: int) -> Optional[bytes]:
        """A data frame's bytes, or None when they do not match its digest."""
        data = self.decode(codec, payload, length)
        if data is None or len(data) != length or crc(data) != digest:
            return None
        return data

    def next_header(self) -> Optional[Any]:
        """The next frame's header fields, or None when the source closed the connection.
        While it waits, batches the disk thread made durable are acknowledged; a disk error
        is raised (the connection ends, the source resumes)."""
        disk = self.disk
        while not self.sock.pending():
            readable, _, _ = select.select([self.sock, disk.wake_read], [], [])
            if disk.wake_read in readable:
                os.read(disk.wake_read, 4096)
                self.acknowledge()
            if self.sock in readable:
                break
        header = self.sock.recv(HEADER.size)
        if not header:
            return None
        if len(header) < HEADER.size:
            header += read_exact(self.sock, HEADER.size - len(header))
        return HEADER.unpack(header)

    def send_digests(self, index: int, request: Dict[str, Any]) -> None:
        """The digests of what the target holds in the sub-blocks asked for (after the target's
        own tools wrote to it: the source forgets what no longer matches)."""
        volume = self.volumes.get(index)
        function = block_digest()
        if volume is None or function is None:
            raise ProtocolError("no digests for volume %d here" % index)
        limit = min(int(request.get("limit", volume.size)), volume.size)
        values = []
        descriptor = os.open(volume.path, os.O_RDONLY | os.O_CLOEXEC)
        flush_cache(descriptor)
        try:
            for first, count in request.get("runs", []):
                for block in range(int(first), int(first) + int(count)):
                    offset = block * SUB_BLOCK
                    size = min(SUB_BLOCK, limit - offset)
                    data = os.pread(descriptor, size, offset) if size > 0 else b""
                    values.append(function(data) if data else 0)
        finally:
            os.close(descriptor)
        body = struct.pack("<%dQ" % len(values), *values)
        self.sock.sendall(MESSAGE.pack(DIGESTS, len(body)) + body)

    def decode(self, codec: int, payload: bytes, length: int) -> Optional[bytes]:
        decode = self.codecs.get(codec)
        if decode is None:
            raise ProtocolError("codec %d is not available here" % codec)
        try:
            return decode(payload, length)
        except Exception:  # a corrupt payload: NACKed like a digest mismatch
            return None

    def more_waiting(self) -> bool:
        if self.sock.pending():
            return True
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def acknowledge(self) -> None:
        """Acknowledge the last frame the disk thread made durable, once."""
        disk = self.disk
        if disk.error is not None:
            raise disk.error
        durable = disk.durable
        if durable is not None and durable != self.acked:
            self.acked = durable
            self.sock.sendall(REPLY.pack(ACK, durable))


def server_context(config: Dict[str, Any], workdir: str) -> ssl.SSLContext:
    """TLS for the data port: the target's data certificate; the source's certificate is
    required, must chain to the task's CA, and must be the task's own."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    cert = os.path.join(workdir, "data.crt")
    key = os.path.join(workdir, "data.key")
    for path, text in ((cert, config["data_cert"]), (key, config["data_key"])):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
    try:
        context.load_cert_chain(cert, key, password=config.get("passphrase") or None)
    finally:
        os.unlink(cert)
        os.unlink(key)
    context.load_verify_locations(cadata=config["ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_is(sock: Any, expected_pem: str) -> bool:
    der = sock.getpeercert(binary_form=True)
    return der is not None and der == ssl.PEM_cert_to_DER_cert(expected_pem.strip() + "\n")


def watch_lease(stop: Callable[[], None]) -> None:
    """Stop when stdin ends: the agent's ssh, which started this receiver, went away."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        stop()


def serve(config: Dict[str, Any], out: Any) -> None:
    allowed = {str(path): 0 for path in config["devices"]}
    with tempfile.TemporaryDirectory(prefix="smsagent-receiver-") as workdir:
        context = server_context(config, workdir)
    listener = socket.socket(socket.AF_INET6 if ":" in config["bind"] else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((config["bind"], int(config["port"])))
    listener.listen(4)
    workdir = str(config.get("workdir") or "")

    def end() -> None:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch_lease, args=(end,), daemon=True).start()
    out.write("%s %d\n" % (LISTENING, listener.getsockname()[1]))
    out.flush()
    while True:
        raw, peer = listener.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log(out, "refused %s: %s" % (peer[0], exc))
            raw.close()
            continue
        try:
            if not peer_is(sock, config["source_cert"]):
                log(out, "refused %s: not the task's source certificate" % peer[0])
                continue
            Session(sock, allowed).serve()
        except (OSError, ProtocolError, ValueError, zlib.error) as exc:
            log(out, "connection from %s ended: %s" % (peer[0], exc))
        finally:
            sock.close()


def log(out: Any, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def main() -> None:
    line = sys.stdin.buffer.readline()
    config = json.loads(line.decode("utf-8"))
    modules = config.get("modules")
    if modules:
        sys.path.insert(0, modules)
    serve(config, sys.stdout)


if __name__ == "__main__":
    main()
