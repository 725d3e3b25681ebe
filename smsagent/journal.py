"""journald's native protocol over its datagram socket, for when systemd-python is absent.

The packaged agent runs without systemd-python (it has no wheels), yet its journal entries must
carry the structured fields (`TASK_ID`, `COMMAND`, ...). The protocol is small: one datagram per
entry, `NAME=value` lines, and a length-prefixed form for values holding a newline.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Optional

JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
# Entries longer than a datagram may carry are cut; journald itself caps a field at 64 KiB.
MESSAGE_LIMIT_BYTES: Final = 48 * 1024


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """One journal entry in the native protocol."""
    parts: list[bytes] = []
    for name, value in fields.items():
        data = value.encode("utf-8", errors="replace")
        key = name.encode("ascii", errors="replace")
        if b"\n" in data:
            parts.append(key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key + b"=" + data + b"\n")
    return b"".join(parts)


def stream_is_journal(fd: int, journal_stream: Optional[str]) -> bool:
    """Whether `fd` is the journal stream systemd connected (`JOURNAL_STREAM=dev:inode`)."""
    if not journal_stream:
        return False
    try:
        device, inode = (int(part) for part in journal_stream.split(":"))
        info = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class JournalSocket:
    """Sends entries to journald; a lost entry is dropped rather than raised (logging must never
    take the agent down).

    Args:
        path: journald's native socket.
    """

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self._path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)

    @classmethod
    def available(cls, path: str = JOURNAL_SOCKET) -> bool:
        """Whether journald listens here."""
        return Path(path).exists()

    def send(self, **fields: str) -> None:
        """Send one entry (the calling convention of systemd-python's `journal.send`)."""
        try:
            self._socket.sendto(encode_entry(fields), self._path)
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE or "MESSAGE" not in fields:
                return
            cut = dict(fields, MESSAGE=fields["MESSAGE"][:MESSAGE_LIMIT_BYTES] + " [cut]")
            try:
                self._socket.sendto(encode_entry(cut), self._path)
            except OSError:
                return
