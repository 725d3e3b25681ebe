"""The block copy's pure parts: used maps, chunks, what differs from the table, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smsagent.migration.block.digests import UNKNOWN, DigestTable, digest
from smsagent.migration.block.extents import SUB_BLOCK, UsedMap, complement, whole_map
from smsagent.migration.block.settings import idle_threads, parse_block_settings
from smsagent.migration.block.source import VolumeReader, changed_chunk, chunk_spans
from smsagent.migration.settings import SettingError

MIB = 1024 * 1024


def test_complement_turns_free_records_into_used_ranges() -> None:
    free = [(4096, 4096), (0, 1024), (65536, 1000000)]  # unsorted, as records may come
    assert complement(free, 2 * MIB) == [(1024, 3072), (8192, 57344), (1065536, 2 * MIB - 1065536)]
    assert complement([(0, 2 * MIB)], 2 * MIB) == []
    assert complement([], 100) == [(0, 100)]


def test_runs_cover_every_sub_block_a_used_byte_touches() -> None:
    used = UsedMap(
        10 * SUB_BLOCK, ((10, 1), (SUB_BLOCK - 1, 2), (5 * SUB_BLOCK, 3 * SUB_BLOCK)), False, "t"
    )
    assert list(used.runs()) == [(0, 2), (5, 3)]


def test_chunks_split_runs_and_resume_from_a_position() -> None:
    used = UsedMap(
        100 * SUB_BLOCK, ((0, 10 * SUB_BLOCK), (50 * SUB_BLOCK, 5 * SUB_BLOCK)), False, "t"
    )
    spans = list(chunk_spans(used, 4 * SUB_BLOCK))
    assert spans == [
        (0, 4 * SUB_BLOCK), (4 * SUB_BLOCK, 4 * SUB_BLOCK), (8 * SUB_BLOCK, 2 * SUB_BLOCK),
        (50 * SUB_BLOCK, 4 * SUB_BLOCK), (54 * SUB_BLOCK, SUB_BLOCK),
    ]  # fmt: skip
    assert list(chunk_spans(used, 4 * SUB_BLOCK, start=9 * SUB_BLOCK)) == [
        (9 * SUB_BLOCK, SUB_BLOCK), (50 * SUB_BLOCK, 4 * SUB_BLOCK), (54 * SUB_BLOCK, SUB_BLOCK),
    ]  # fmt: skip
    tail = whole_map(3 * SUB_BLOCK + 100)
    assert list(chunk_spans(tail, MIB)) == [(0, 3 * SUB_BLOCK + 100)]


def test_only_sub_blocks_that_differ_from_the_table_are_sent(tmp_path: Path) -> None:
    image = tmp_path / "volume"
    blocks = [os.urandom(SUB_BLOCK), bytes(SUB_BLOCK), os.urandom(SUB_BLOCK), os.urandom(SUB_BLOCK)]
    image.write_bytes(b"".join(blocks))
    table = DigestTable(tmp_path / "table", len(blocks) * SUB_BLOCK)
    reader = VolumeReader(str(image), MIB)
    try:
        first = changed_chunk(reader, table, 0, 4 * SUB_BLOCK, zeros=True)
        # A zero run between data runs is its own piece, with no data.
        assert [(p.offset, p.length, p.data is None) for p in first.pieces] == [
            (0, SUB_BLOCK, False),
            (SUB_BLOCK, SUB_BLOCK, True),
            (2 * SUB_BLOCK, 2 * SUB_BLOCK, False),
        ]
        for piece in first.pieces:
            for number, value in enumerate(piece.digests):
                table.set(piece.first + number, value)
        assert changed_chunk(reader, table, 0, 4 * SUB_BLOCK, zeros=True).pieces == ()
        with image.open("r+b") as handle:
            handle.seek(2 * SUB_BLOCK + 5)
            handle.write(b"changed")
        again = changed_chunk(reader, table, 0, 4 * SUB_BLOCK, zeros=True)
        assert [(p.offset, p.length) for p in again.pieces] == [(2 * SUB_BLOCK, SUB_BLOCK)]
    finally:
        reader.close()
        table.close()


def test_the_table_survives_reopening_and_forgets_what_is_unused(tmp_path: Path) -> None:
    path = tmp_path / "table"
    table = DigestTable(path, 10 * SUB_BLOCK)
    for block in range(10):
        table.set(block, digest(bytes([block]) * 10))
    table.clear_outside([(2, 3), (8, 1)])
    kept = [block for block in range(10) if table.get(block) != UNKNOWN]
    assert kept == [2, 3, 4, 8]
    table.flush()
    table.close()
    reopened = DigestTable(path, 10 * SUB_BLOCK)
    assert [b for b in range(10) if reopened.get(b) != UNKNOWN] == [2, 3, 4, 8]
    reopened.close()
    # Another size is another layout: started afresh.
    other = DigestTable(path, 20 * SUB_BLOCK)
    assert other.known() == 0
    other.close()


def test_deferred_writes_reach_the_file_only_afterwards(tmp_path: Path) -> None:
    table = DigestTable(tmp_path / "table", 4 * SUB_BLOCK)
    table.set(0, 7)
    with table.deferred():
        table.set(1, 9)
        table.clear(0, 1)
        assert (table.get(0), table.get(1)) == (UNKNOWN, 9)
        assert table._view[0] == 7 and table._view[1] == 0  # the mapped file is untouched
    assert (table._view[0], table._view[1]) == (UNKNOWN, 9)
    table.close()


def test_block_settings_are_read_with_their_ranges() -> None:
    entries = [
        {"config_key": "LINUX_BLOCK_COMPRESS_THREAD_NUM", "config_value": "2"},
        {"config_key": "LINUX_BLOCK_CACHE_SIZE", "config_value": "8"},
        {"config_key": "MIGRATE_DST_IP", "config_value": "192.0.2.7"},
        {"config_key": "LINUX_IO_LIMIT", "config_value": "50"},
    ]
    settings = parse_block_settings(entries)
    assert (settings.threads, settings.cache_bytes, settings.transit_address) == (
        2, 8 * MIB, "192.0.2.7",
    )  # fmt: skip
    assert settings.read_bytes_s == 50 * MIB
    auto = parse_block_settings([], cpu_count=lambda: 8, load=lambda: 6.5)
    assert auto.threads == 1 and auto.cache_bytes == 4 * MIB and auto.read_bytes_s is None
    for key, value in (
        ("LINUX_IO_LIMIT", "5"),
        ("LINUX_IO_LIMIT", "fast"),
        ("LINUX_BLOCK_COMPRESS_THREAD_NUM", "4"),
        ("LINUX_BLOCK_CACHE_SIZE", "0"),
        ("LINUX_BLOCK_CACHE_SIZE", "big"),
        ("MIGRATE_DST_IP", "target.example"),
    ):
        with pytest.raises(SettingError, match=key):
            parse_block_settings([{"config_key": key, "config_value": value}])


@pytest.mark.parametrize(
    ("cores", "load", "threads"), [(1, 0.0, 1), (2, 0.1, 1), (4, 0.0, 3), (8, 7.9, 1), (16, 2, 3)]
)
def test_auto_threads_follow_idle_cores(cores: int, load: float, threads: int) -> None:
    assert idle_threads(cores, load) == threads


def test_volumes_are_found_by_mount_point_then_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from smsagent.api.models import TaskTargetServer
    from smsagent.inventory.mounts import MountEntry
    from smsagent.migration.block import volumes as volumes_module
    from smsagent.migration.block.volumes import ERROR_SOURCE_VOLUME, VolumeError, block_volumes
    from smsagent.target.layout import parse_layout

    def pv(
        name: str, index: int, fstype: str, mount_point: str, size_mib: int
    ) -> dict[str, object]:
        return {
            "name": name,
            "index": index,
            "file_system": fstype,
            "mount_point": mount_point,
            "size": size_mib * MIB,
        }

    missing_name = "/dev/smsagent-no-such-disk1"
    server = {
        "name": "t",
        "disks": [
            {
                "name": "/dev/vdb",
                "partition_style": "MBR",
                "size": 4096 * MIB,
                "physical_volumes": [
                    pv(missing_name, 0, "ext4", "/boot", 512),
                    pv("/dev/sda2", 1, "ext4", "/", 2048),
                    pv("/dev/sda3", 2, "swap", "", 512),
                ],
            }
        ],
    }
    layout = parse_layout(TaskTargetServer.model_validate(server))
    mounts = [
        MountEntry(1, 0, (8, 2), "/", "/srv/src", "ext4", "/dev/loop7p2"),
        MountEntry(2, 1, (8, 1), "/", "/srv/src/boot", "ext4", "/dev/loop7p1"),
    ]
    sizes = {"/dev/loop7p1": 512 * MIB, "/dev/loop7p2": 2048 * MIB, missing_name: 512 * MIB}
    real_size = volumes_module.device_size
    # No such devices here: their sizes are given; the mapping is what is tested.
    monkeypatch.setattr(volumes_module, "device_size", lambda device, target: sizes[device])

    found = block_volumes(layout, "/srv/src", mounts)
    # Swap is made new, not copied; each file system comes from where the source mounts it.
    assert [(v.target_device, v.source_device, v.mounted_at) for v in found] == [
        ("/dev/vdb1", "/dev/loop7p1", "/srv/src/boot"),
        ("/dev/vdb2", "/dev/loop7p2", "/srv/src"),
    ]
    assert all(v.mapped for v in found)
    # Not mounted: the layout's own name for it, read whole.
    unmounted = block_volumes(layout, "/srv/src", mounts[:1])
    assert unmounted[0].source_device == missing_name and not unmounted[0].mapped

    monkeypatch.setattr(volumes_module, "device_size", real_size)
    with pytest.raises(VolumeError) as refused:
        block_volumes(layout, "/srv/src", mounts[:1])
    assert refused.value.error_code == ERROR_SOURCE_VOLUME
    assert missing_name in refused.value.message and "/dev/vdb1" in refused.value.message
