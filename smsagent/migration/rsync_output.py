"""Parse rsync's stdout: `--info=progress2` records and the `stats2` summary (pure, no I/O).

rsync (run with `--no-h` and `LC_ALL=C`) writes a progress record about once a second, ended by
`\\r`, and the summary lines at the end, ended by `\\n`. Pipe reads split the stream anywhere, so
`RecordSplitter` reassembles records across chunks before they are parsed.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Callable, Final, Optional

# `   1087897636  36%   10.00MB/s    0:00:01 (xfr#1, to-chk=3/5)`; the parenthesis is optional.
_PROGRESS_RE: Final = re.compile(
    r"^\s*(?P<bytes>[\d,]+)\s+(?P<pct>\d+)%\s+(?P<rate>[\d.,]+)(?P<unit>[kMGTP]?)B/s"
    r"\s+(?P<eta>\S+)"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s+(?P<chk>ir|to)-chk=(?P<left>\d+)/(?P<total>\d+)\))?\s*$"
)
_RATE_FACTOR: Final = {"": 1, "k": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_ETA_RE: Final = re.compile(r"^(\d+):(\d{2}):(\d{2})$")

# `stats2` line label -> RsyncStats field; values are integers with `--no-h` (commas tolerated).
_STATS_FIELDS: Final = {
    "Number of files": "files_total",
    "Number of created files": "files_created",
    "Number of deleted files": "files_deleted",
    "Number of regular files transferred": "files_transferred",
    "Total file size": "total_file_bytes",
    "Total transferred file size": "transferred_file_bytes",
    "Literal data": "literal_bytes",
    "Matched data": "matched_bytes",
    "Total bytes sent": "bytes_sent",
    "Total bytes received": "bytes_received",
}
_STATS_RE: Final = re.compile(r"^(?P<label>[A-Za-z ]+):\s+(?P<value>[\d,]+)")


@dataclass(frozen=True)
class Progress:
    """One `progress2` record.

    Attributes:
        bytes_done: size of the files transferred so far in this run (not a share of the total:
            hard links and unchanged files count in rsync's total but are never sent).
        percent: rsync's own `bytes_done` / total size of the file set; never a sign of being done.
        rate_bytes_per_s: rsync's instantaneous rate.
        eta_s: rsync's estimate of the remaining time; None while it has none.
        files_transferred: `xfr#`, files sent so far.
        files_to_check: files still to check; with `files_total`, the file-level progress.
        files_total: files in the set so far.
        is_total_final: False while incremental recursion still grows the file list (`ir-chk`).
    """

    bytes_done: int
    percent: int
    rate_bytes_per_s: float
    eta_s: Optional[int]
    files_transferred: Optional[int] = None
    files_to_check: Optional[int] = None
    files_total: Optional[int] = None
    is_total_final: bool = False


@dataclass(frozen=True)
class RsyncStats:
    """The `stats2` summary of one rsync run (integers; missing lines stay None)."""

    files_total: Optional[int] = None
    files_created: Optional[int] = None
    files_deleted: Optional[int] = None
    files_transferred: Optional[int] = None
    total_file_bytes: Optional[int] = None
    transferred_file_bytes: Optional[int] = None
    literal_bytes: Optional[int] = None
    matched_bytes: Optional[int] = None
    bytes_sent: Optional[int] = None
    bytes_received: Optional[int] = None


def _integer(text: str) -> int:
    return int(text.replace(",", ""))


def _eta_seconds(text: str) -> Optional[int]:
    match = _ETA_RE.match(text)
    if match is None:
        return None  # `??:??:??` while rsync has no estimate
    hours, minutes, seconds = (int(part) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_progress_record(record: str) -> Optional[Progress]:
    """Parse one `progress2` record; None for anything else (stats lines, blank lines)."""
    match = _PROGRESS_RE.match(record)
    if match is None:
        return None
    chk = match["chk"]
    return Progress(
        bytes_done=_integer(match["bytes"]),
        percent=int(match["pct"]),
        rate_bytes_per_s=float(match["rate"].replace(",", "")) * _RATE_FACTOR[match["unit"]],
        eta_s=_eta_seconds(match["eta"]),
        files_transferred=int(match["xfr"]) if match["xfr"] else None,
        files_to_check=int(match["left"]) if chk else None,
        files_total=int(match["total"]) if chk else None,
        is_total_final=chk == "to",
    )


def split_records(text: str) -> list[str]:
    """Split complete output on `\\r` and `\\n` into non-empty records."""
    return [record for record in re.split(r"[\r\n]", text) if record.strip()]


def parse_progress(text: str) -> Optional[Progress]:
    """The last progress record in a piece of complete output, or None if it holds none."""
    latest: Optional[Progress] = None
    for record in split_records(text):
        latest = parse_progress_record(record) or latest
    return latest


def parse_stats(lines: list[str]) -> Optional[RsyncStats]:
    """The `stats2` summary found in `lines`, or None if there is none."""
    values: dict[str, int] = {}
    for line in lines:
        match = _STATS_RE.match(line.strip())
        if match is None:
            continue
        name = _STATS_FIELDS.get(match["label"].strip())
        if name is not None:
            values[name] = _integer(match["value"])
    return RsyncStats(**values) if values else None


class RecordSplitter:
    """Reassemble `\\r`/`\\n`-ended records from chunks split at arbitrary bytes.

    Args:
        max_record_bytes: a record longer than this is cut, so a stream without separators
            cannot grow the buffer without bound.
    """

    def __init__(self, max_record_bytes: int = 65536) -> None:
        self._buffer = b""
        self._max_record_bytes = max_record_bytes

    def feed(self, chunk: bytes) -> list[str]:
        """Add a chunk; return the records it completed (empty ones dropped)."""
        data = self._buffer + chunk
        parts = re.split(rb"[\r\n]", data)
        self._buffer = parts.pop()
        if len(self._buffer) > self._max_record_bytes:
            parts.append(self._buffer)
            self._buffer = b""
        return [text for part in parts if (text := _decode(part)).strip()]

    def close(self) -> list[str]:
        """The last record if the stream ended without a separator."""
        rest, self._buffer = self._buffer, b""
        text = _decode(rest)
        return [text] if text.strip() else []


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


RecordCallback = Callable[[str], None]


class OutputParser:
    """Follow rsync's stdout: every progress record and, at the end, the summary.

    Args:
        on_record: called with every record that is not progress (itemized changes, the
            summary lines), in order.
    """

    def __init__(self, on_record: Optional[RecordCallback] = None) -> None:
        self._on_record = on_record
        self._splitter = RecordSplitter()
        # The summary is the last ~15 lines; earlier non-progress lines are not needed.
        self._other_lines: deque[str] = deque(maxlen=64)
        self.last_progress: Optional[Progress] = None

    def feed(self, chunk: bytes) -> list[Progress]:
        """The progress records completed by this chunk, oldest first."""
        return self._consume(self._splitter.feed(chunk))

    def close(self) -> list[Progress]:
        """Flush a final record left without a separator."""
        return self._consume(self._splitter.close())

    def stats(self) -> Optional[RsyncStats]:
        """The summary, once the stream has ended."""
        return parse_stats(list(self._other_lines))

    def _consume(self, records: list[str]) -> list[Progress]:
        found = []
        for record in records:
            progress = parse_progress_record(record)
            if progress is None:
                self._other_lines.append(record)
                if self._on_record is not None:
                    self._on_record(record)
                continue
            found.append(progress)
            self.last_progress = progress
        return found
