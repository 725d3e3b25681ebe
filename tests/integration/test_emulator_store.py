"""The emulator's two stores behave alike, and the SQLite one keeps its data when reopened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smsagent.emulator.store import MemoryStore, SqliteStore, Store


def exercise(store: Store) -> dict[str, Any]:
    """One sequence of every operation; returns what each read gave."""
    store.put("task", "b", {"n": 1, "nested": {"list": [1, 2]}})
    store.put("task", "a", {"n": 2})
    store.put("task", "b", {"n": 3})  # an update keeps b's place
    store.put("source", "a", {"other": "kind"})
    store.append("progress", {"seq": 1})
    store.append("progress", {"seq": 2})
    read = {
        "tasks": store.values("task"),
        "b": store.get("task", "b"),
        "missing": store.get("task", "zzz"),
        "progress": store.entries("progress"),
        "deleted": store.delete("task", "a"),
        "deleted_again": store.delete("task", "a"),
        "after_delete": store.values("task"),
        "sources": store.values("source"),
    }
    copy = store.get("task", "b")
    assert copy is not None
    copy["n"] = 99  # a returned document is a copy
    read["unchanged"] = store.get("task", "b")
    store.clear()
    read["cleared"] = (store.values("task"), store.entries("progress"))
    return read


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    yield opened
    opened.close()


def test_stores_agree(tmp_path: Path) -> None:
    """Memory and SQLite give the same answers to the same operations."""
    sqlite = SqliteStore(tmp_path / "state.db")
    assert exercise(MemoryStore()) == exercise(sqlite)
    sqlite.close()


def test_store_semantics(store: Store) -> None:
    """Insertion order survives updates, reads are copies, clear empties everything."""
    read = exercise(store)
    assert read["tasks"] == [{"n": 3}, {"n": 2}]
    assert read["b"] == {"n": 3} and read["missing"] is None
    assert (read["deleted"], read["deleted_again"]) == (True, False)
    assert read["unchanged"] == {"n": 3}
    assert read["cleared"] == ([], [])


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    """Documents and journal entries written before close are read back after reopening."""
    path = tmp_path / "state.db"
    first = SqliteStore(path)
    first.put("task", "t1", {"state": "RUNNING"})
    first.append("progress", {"progress": 40})
    first.close()
    second = SqliteStore(path)
    assert second.get("task", "t1") == {"state": "RUNNING"}
    assert second.entries("progress") == [{"progress": 40}]
    second.close()
