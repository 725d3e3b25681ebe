"""Splitting the copy into parallel streams by mount point and top-level directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from smsagent.migration.streams import Stream, plan_streams, tree_bytes, work_units

MiB = 1024 * 1024


def _estimator(root: Path, sizes: dict[str, int]) -> Callable[[str], int]:
    """Sizes by relative path; a directory's size includes what lies below it."""

    def estimate(path: str) -> int:
        rel = os.path.relpath(path, root)
        if rel == ".":
            return sum(sizes.values())
        return sum(size for key, size in sizes.items() if key == rel or key.startswith(rel + "/"))

    return estimate


def _copied_by(streams: tuple[Stream, ...], name: str) -> list[Stream]:
    """The streams that copy top-level entry `name`: as a source, or through the root."""
    return [
        stream
        for stream in streams
        if name in stream.sources
        or ("" in stream.sources and f"- /{name}/*" not in stream.filter_rules)
    ]


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """A source root with top-level dirs, a file and a symlink at the top."""
    for name in ("usr", "var", "etc", "home", "opt"):
        (tmp_path / name).mkdir()
    (tmp_path / "vmlinuz").write_text("k")
    (tmp_path / "bin").symlink_to("usr/bin")
    return tmp_path


def _covered(streams: tuple[Stream, ...]) -> list[str]:
    return sorted(source for stream in streams for source in stream.sources)


class TestPlanStreams:
    def test_one_stream(self, server: Path) -> None:
        """One stream copies every file system in one pass without extra rules."""
        streams = plan_streams(str(server), ["", "home"], 1)
        assert streams == (Stream(("", "home"), (), 0),)

    def test_enough_mounts(self, server: Path) -> None:
        """With as many file systems as streams, each gets its own; the root leaves the rest."""
        sizes = {"usr": 50 * MiB, "home": 40 * MiB, "data": 30 * MiB}
        streams = plan_streams(
            str(server), ["", "home", "data"], 3, estimate=_estimator(server, sizes)
        )
        by_source = {stream.sources: stream for stream in streams}
        assert set(by_source) == {("",), ("home",), ("data",)}
        assert by_source[("",)].filter_rules == ("- /data/*", "- /home/*")
        assert by_source[("home",)].filter_rules == ()

    def test_split_by_top_level_directory(self, server: Path) -> None:
        """Fewer mounts than streams: top-level directories are dealt out, balanced by size."""
        sizes = {"usr": 60 * MiB, "var": 30 * MiB, "etc": 10 * MiB, "opt": 20 * MiB}
        streams = plan_streams(str(server), ["", "home"], 3, estimate=_estimator(server, sizes))
        assert len(streams) == 3
        assert _covered(streams).count("usr") == 1
        loads = sorted(stream.size_bytes for stream in streams)
        assert loads == [30 * MiB, 30 * MiB, 60 * MiB]
        # Every top-level dir and mount is copied by exactly one stream.
        for name in ("usr", "var", "etc", "opt", "home"):
            assert len(_copied_by(streams, name)) == 1, (name, streams)
        assert "" in _covered(streams)

    def test_split_dir_with_its_root_is_not_a_second_source(self, server: Path) -> None:
        """A top-level dir dealt to the root's own stream is copied through the root."""
        sizes = {"usr": 100 * MiB}
        streams = plan_streams(str(server), [""], 2, estimate=_estimator(server, sizes))
        assert [s.sources for s in streams] == [("usr",), ("",)]
        root_stream = streams[1]
        assert root_stream.filter_rules == ("- /usr/*",)
        assert all("- /var/*" not in s.filter_rules for s in streams)

    def test_symlinks_and_files_stay_with_the_root(self, server: Path) -> None:
        """Only real directories on the same file system are split off."""
        streams = plan_streams(str(server), [""], 4, estimate=lambda _: 1)
        sources = _covered(streams)
        assert "bin" not in sources
        assert "vmlinuz" not in sources

    def test_only_dirs(self, server: Path) -> None:
        """`ONLY_SYNC_DIR` limits the sources, keeping file systems mounted below them."""
        assert [u.path for u in work_units(["", "home", "var/lib/docker"], ["var", "etc"])] == [
            "var",
            "etc",
            "var/lib/docker",
        ]
        streams = plan_streams(str(server), ["", "home"], 1, only_dirs=["etc"])
        assert streams == (Stream(("etc",), (), 0),)

    def test_bad_stream_count(self, server: Path) -> None:
        """At least one stream is needed."""
        with pytest.raises(ValueError, match="max_streams must be at least 1"):
            plan_streams(str(server), [""], 0)


class TestTreeBytes:
    def test_counts_allocation(self, tmp_path: Path) -> None:
        """Allocated bytes are counted; holes in sparse files are not."""
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "data").write_bytes(os.urandom(MiB))
        with open(tmp_path / "sparse", "wb") as handle:
            handle.truncate(100 * MiB)
        assert MiB <= tree_bytes(str(tmp_path)) < 2 * MiB

    def test_missing_path(self, tmp_path: Path) -> None:
        """A path that vanished counts as empty."""
        assert tree_bytes(str(tmp_path / "gone")) == 0
