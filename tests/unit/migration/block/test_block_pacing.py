"""`LINUX_IO_LIMIT` for the block copy's reads: the pacer against a clock the test moves."""

from __future__ import annotations

from smsagent.migration.block.pacing import ReadPacer

MIB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def read_all(pacer: ReadPacer, clock: Clock, total: int, chunk: int) -> float:
    """Read `total` bytes in chunks, waiting as the pacer says; the seconds it took."""
    started = clock.now
    for _ in range(total // chunk):
        clock.now += pacer.delay(chunk)
    return clock.now - started


def test_reads_keep_to_the_limit_after_a_burst_of_one_second() -> None:
    clock = Clock()
    pacer = ReadPacer(10 * MIB, clock)
    took = read_all(pacer, clock, 200 * MIB, 4 * MIB)
    # 200 MiB at 10 MiB/s, less the first second's burst: 19 s at least, and no more wait.
    assert 18.6 <= took <= 19.0


def test_an_idle_while_saves_no_more_than_one_second() -> None:
    clock = Clock()
    pacer = ReadPacer(10 * MIB, clock)
    read_all(pacer, clock, 40 * MIB, 4 * MIB)
    clock.now += 600  # the pass waited for the target for ten minutes
    took = read_all(pacer, clock, 200 * MIB, 4 * MIB)
    assert took >= 18.6  # not a burst of ten minutes' worth


def test_a_source_read_slower_than_the_limit_never_waits() -> None:
    clock = Clock()
    pacer = ReadPacer(100 * MIB, clock)
    waits = []
    for _ in range(50):
        waits.append(pacer.delay(4 * MIB))
        clock.now += 0.1  # 40 MiB/s: the disk is slower than the limit
    assert waits == [0.0] * 50
