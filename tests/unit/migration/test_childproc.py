"""The movers' child-process helpers: environment and bounded stderr capture."""

from __future__ import annotations

import pytest

from smsagent.migration.childproc import LineTail, minimal_env


class TestMinimalEnv:
    def test_nothing_inherited(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Only PATH, the C locale and HOME reach a child; the agent's secrets never do."""
        monkeypatch.setenv("SMSAGENT_SK", "secret-value")
        env = minimal_env()
        assert set(env) == {"PATH", "LC_ALL", "LANG", "HOME"}
        assert env["LC_ALL"] == "C"
        assert "secret-value" not in env.values()


class TestLineTail:
    def test_keeps_the_last_lines(self) -> None:
        """Only the newest lines are kept, split across chunks correctly."""
        tail = LineTail(max_lines=3)
        tail.feed(b"one\ntw")
        tail.feed(b"o\nthree\nfour\nfi")
        tail.close()
        assert tail.lines() == ["three", "four", "fi"]

    def test_long_lines_are_cut(self) -> None:
        """A line longer than the limit is cut, also one that never ends."""
        tail = LineTail(max_lines=5, max_line_bytes=10)
        tail.feed(b"x" * 25 + b"\n")
        tail.feed(b"y" * 25)
        assert tail.lines() == ["x" * 10, "y" * 10]

    def test_blank_lines_and_bad_bytes(self) -> None:
        """Blank lines are dropped; bytes that are not UTF-8 are escaped, not fatal."""
        tail = LineTail()
        tail.feed(b"\n\r\n  \nbad \xff byte\r\n")
        assert tail.lines() == ["bad \\xff byte"]
