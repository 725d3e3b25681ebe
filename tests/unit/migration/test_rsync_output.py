"""rsync output parsing: progress2 records split anywhere, and the stats2 summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsagent.migration.rsync_output import (
    OutputParser,
    Progress,
    RecordSplitter,
    RsyncStats,
    parse_progress,
    parse_progress_record,
    parse_stats,
    split_records,
)

DATA = Path(__file__).parent / "data"
FULL_COPY = (DATA / "progress2-full-copy.out").read_bytes()
SYNC = (DATA / "progress2-sync.out").read_bytes()
INC_RECURSIVE = (DATA / "progress2-inc-recursive.out").read_bytes()


def _records(raw: bytes) -> list[Progress]:
    parser = OutputParser()
    return parser.feed(raw) + parser.close()


def records_bytes(raw: bytes) -> int:
    return _records(raw)[-1].bytes_done


class TestParseProgressRecord:
    @pytest.mark.parametrize(
        ("record", "expected"),
        [
            (
                "   1087897636  36%   10.00MB/s    0:00:01 (xfr#1, to-chk=3/5)",
                Progress(1087897636, 36, 10.0 * 1024**2, 1, 1, 3, 5, True),
            ),
            (
                "             11   0%    0.00kB/s    0:00:00  ",
                Progress(11, 0, 0.0, 0, None, None, None, False),
            ),
            (
                "  5,242,880  12%  1.50GB/s  123:04:05 (xfr#12, ir-chk=1000/2345)",
                Progress(5242880, 12, 1.5 * 1024**3, 123 * 3600 + 245, 12, 1000, 2345, False),
            ),
            (
                "       2048 100%  512.00B/s  ??:??:??",
                Progress(2048, 100, 512.0, None, None, None, None, False),
            ),
        ],
    )
    def test_fields(self, record: str, expected: Progress) -> None:
        """Bytes, percent, rate with its unit, ETA and the file counters come out as numbers."""
        assert parse_progress_record(record) == expected

    @pytest.mark.parametrize(
        "line",
        [
            "",
            "Number of files: 119 (reg: 84, dir: 26)",
            "sent 1070244 bytes  received 21362 bytes  727737.33 bytes/sec",
            "total size is 86103857  speedup is 78.88",
            'rsync: [sender] link_stat "/x" failed: No such file or directory (2)',
            "   123  45%   1.00MB/s",
        ],
    )
    def test_other_lines(self, line: str) -> None:
        """Summary lines, errors and truncated records are not progress."""
        assert parse_progress_record(line) is None


class TestCapturedOutput:
    def test_full_copy(self) -> None:
        """A real full copy reports growing bytes and ends with every file checked."""
        records = _records(FULL_COPY)
        assert len(records) > 20
        done = [r.bytes_done for r in records]
        assert done == sorted(done)
        last = records[-1]
        assert last.files_to_check == 0
        assert last.is_total_final
        assert last.files_total == 120
        # Hard links are in rsync's total but not sent: never wait for 100 %.
        assert last.percent < 100
        assert max(r.rate_bytes_per_s for r in records) > 1024**2

    def test_full_copy_stats(self) -> None:
        """The summary of the real full copy parses to plain integers."""
        parser = OutputParser()
        parser.feed(FULL_COPY)
        parser.close()
        stats = parser.stats()
        assert stats is not None
        assert stats.files_total == 120
        assert stats.files_created == 119  # all but the root directory
        assert stats.files_deleted == 0
        # 85 regular files, 3 of them further names of hard-linked ones: sent once.
        assert stats.files_transferred == 82
        assert stats.literal_bytes == stats.transferred_file_bytes == records_bytes(FULL_COPY)
        assert stats.matched_bytes == 0

    def test_sync_stats(self) -> None:
        """The real sync after a 1 MiB change sends ~1 MiB literal data and matches the rest."""
        parser = OutputParser()
        parser.feed(SYNC)
        assert parser.stats() == RsyncStats(
            files_total=119,
            files_created=0,
            files_deleted=1,
            files_transferred=2,
            total_file_bytes=86103857,
            transferred_file_bytes=12582920,
            literal_bytes=1052576,
            matched_bytes=11530344,
            bytes_sent=1070244,
            bytes_received=21362,
        )

    def test_parse_progress_takes_the_last_record(self) -> None:
        """`parse_progress` over complete output gives its final state."""
        latest = parse_progress(INC_RECURSIVE.decode())
        assert latest == _records(INC_RECURSIVE)[-1]
        assert latest is not None and latest.files_to_check == 0

    def test_no_progress_in_text(self) -> None:
        """Text without a record gives None."""
        assert parse_progress("Number of files: 3\n") is None


class TestChunking:
    def test_odd_splits(self) -> None:
        """Chunks cut inside numbers, inside `\\r\\n`-less records and at separators agree."""
        whole = _records(FULL_COPY)
        for size in (1, 2, 3, 7, 13, 64, 4096):
            parser = OutputParser()
            found: list[Progress] = []
            for start in range(0, len(FULL_COPY), size):
                found += parser.feed(FULL_COPY[start : start + size])
            found += parser.close()
            assert found == whole, size

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(SYNC)), max_size=40))
    def test_random_splits(self, cuts: list[int]) -> None:
        """Wherever pipe reads split the stream, the same records and summary come out."""
        parser = OutputParser()
        found: list[Progress] = []
        bounds = [0, *sorted(cuts), len(SYNC)]
        for start, end in zip(bounds, bounds[1:]):
            found += parser.feed(SYNC[start:end])
        found += parser.close()
        assert found == _records(SYNC)
        assert parser.stats() is not None
        assert parser.stats() == parse_stats(split_records(SYNC.decode()))

    def test_record_without_separator_is_flushed(self) -> None:
        """A last record without a separator is still reported when the stream ends."""
        splitter = RecordSplitter()
        assert splitter.feed(b"   10 1%  1.00kB/s  0:00:01\r   20 2%") == [
            "   10 1%  1.00kB/s  0:00:01"
        ]
        assert splitter.close() == ["   20 2%"]

    def test_endless_record_is_bounded(self) -> None:
        """A stream without separators cannot grow the buffer beyond the limit."""
        splitter = RecordSplitter(max_record_bytes=100)
        emitted = splitter.feed(b"x" * 150)
        assert emitted == ["x" * 150]
        assert splitter.close() == []

    def test_invalid_utf8_does_not_break_parsing(self) -> None:
        """Undecodable bytes are escaped, not fatal."""
        parser = OutputParser()
        assert parser.feed(b"\xff\xfe\n   5 1%  1.00kB/s  0:00:01\r") == [
            Progress(5, 1, 1024.0, 1, None, None, None, False)
        ]


class TestParseStats:
    def test_commas_are_tolerated(self) -> None:
        """Without `--no-h` numbers carry separators; they still parse."""
        stats = parse_stats(["Number of files: 1,234 (reg: 1,000)", "Literal data: 5,000 bytes"])
        assert stats == RsyncStats(files_total=1234, literal_bytes=5000)

    def test_no_summary(self) -> None:
        """Output without a summary gives None."""
        assert parse_stats(["rsync error: some files could not be transferred"]) is None
