"""Splitting the copy into parallel streams by mount point and top-level directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from smsagent.migration.streams import Stream, Survey, plan_streams, survey_tree, work_units

MiB = 1024 * 1024


def _surveyor(root: Path, sizes: dict[str, int]) -> Callable[[str, frozenset[str]], Survey]:
    """Sizes by relative path; a unit's size is what lies below it minus the skipped subtrees."""

    def survey(path: str, skip: frozenset[str]) -> Survey:
        rel = os.path.relpath(path, root)
        skipped = {os.path.relpath(p, root) for p in skip}
        return Survey(
            sum(
                size
                for key, size in sizes.items()
                if (rel == "." or key == rel or key.startswith(rel + "/"))
                and not any(key == s or key.startswith(s + "/") for s in skipped)
            )
        )

    return survey


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
            str(server), ["", "home", "data"], 3, survey=_surveyor(server, sizes)
        )
        by_source = {stream.sources: stream for stream in streams}
        assert set(by_source) == {("",), ("home",), ("data",)}
        assert by_source[("",)].filter_rules == ("- /data/*", "- /home/*")
        assert by_source[("home",)].filter_rules == ()

    def test_split_by_top_level_directory(self, server: Path) -> None:
        """Fewer mounts than streams: top-level directories are dealt out, balanced by size."""
        sizes = {"usr": 60 * MiB, "var": 30 * MiB, "etc": 10 * MiB, "opt": 20 * MiB}
        streams = plan_streams(str(server), ["", "home"], 3, survey=_surveyor(server, sizes))
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
        streams = plan_streams(str(server), [""], 2, survey=_surveyor(server, sizes))
        assert [s.sources for s in streams] == [("usr",), ("",)]
        root_stream = streams[1]
        assert root_stream.filter_rules == ("- /usr/*",)
        assert all("- /var/*" not in s.filter_rules for s in streams)

    def test_symlinks_and_files_stay_with_the_root(self, server: Path) -> None:
        """Only real directories on the same file system are split off."""
        streams = plan_streams(str(server), [""], 4, survey=lambda path, skip: Survey(1))
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


class TestHardLinks:
    def test_units_sharing_a_hard_link_share_a_stream(self, server: Path) -> None:
        """Directories holding names of one inode are copied by one stream, so it stays one."""
        (server / "usr" / "big").write_bytes(os.urandom(2 * MiB))
        (server / "var" / "data").write_bytes(os.urandom(MiB))
        (server / "etc" / "x").write_bytes(os.urandom(MiB))
        os.link(server / "var" / "data", server / "opt" / "data-link")
        streams = plan_streams(str(server), [""], 4)
        assert len(streams) > 1
        assert len(_copied_by(streams, "var")) == 1
        assert _copied_by(streams, "var") == _copied_by(streams, "opt")


class TestSurveyTree:
    def test_counts_allocation(self, tmp_path: Path) -> None:
        """Allocated bytes are counted; holes in sparse files are not."""
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "data").write_bytes(os.urandom(MiB))
        with open(tmp_path / "sparse", "wb") as handle:
            handle.truncate(100 * MiB)
        assert MiB <= survey_tree(str(tmp_path)).size_bytes < 2 * MiB

    def test_skip_and_links(self, tmp_path: Path) -> None:
        """Skipped subtrees are left out; files with several names are reported by inode."""
        (tmp_path / "keep").mkdir()
        (tmp_path / "skip").mkdir()
        (tmp_path / "keep" / "a").write_bytes(os.urandom(MiB))
        os.link(tmp_path / "keep" / "a", tmp_path / "keep" / "b")
        (tmp_path / "skip" / "c").write_bytes(os.urandom(MiB))
        found = survey_tree(str(tmp_path), frozenset({str(tmp_path / "skip")}))
        assert MiB <= found.size_bytes < 2 * MiB
        info = (tmp_path / "keep" / "a").stat()
        assert found.linked_inodes == {(info.st_dev, info.st_ino)}

    def test_missing_path(self, tmp_path: Path) -> None:
        """A path that vanished counts as empty."""
        assert survey_tree(str(tmp_path / "gone")) == Survey(0)
