"""Where the emulator keeps its documents: in memory, or in a SQLite file that survives restarts.

Both stores hold JSON documents by kind and key, plus append-only journals, and both round-trip
every document through JSON, so a test against memory sees exactly what SQLite would give back.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Optional, Protocol

Doc = dict[str, Any]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS documents ("
    " kind TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (kind, key))",
    "CREATE TABLE IF NOT EXISTS journal ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, log TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS journal_log ON journal (log, seq)",
)


class Store(Protocol):
    """Documents by `(kind, key)` in insertion order, and named append-only journals."""

    def get(self, kind: str, key: str) -> Optional[Doc]: ...

    def put(self, kind: str, key: str, doc: Doc) -> None: ...

    def delete(self, kind: str, key: str) -> bool: ...

    def values(self, kind: str) -> list[Doc]: ...

    def append(self, log: str, entry: Doc) -> None: ...

    def entries(self, log: str) -> list[Doc]: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


def _encode(doc: Doc) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


class MemoryStore:
    """A `Store` in dictionaries; gone when the process ends."""

    def __init__(self) -> None:
        self._documents: dict[str, dict[str, str]] = {}
        self._journals: dict[str, list[str]] = {}

    def get(self, kind: str, key: str) -> Optional[Doc]:
        text = self._documents.get(kind, {}).get(key)
        return None if text is None else dict(json.loads(text))

    def put(self, kind: str, key: str, doc: Doc) -> None:
        # Updating a key keeps its place, as the SQLite store keeps its sequence number.
        self._documents.setdefault(kind, {})[key] = _encode(doc)

    def delete(self, kind: str, key: str) -> bool:
        return self._documents.get(kind, {}).pop(key, None) is not None

    def values(self, kind: str) -> list[Doc]:
        return [dict(json.loads(text)) for text in self._documents.get(kind, {}).values()]

    def append(self, log: str, entry: Doc) -> None:
        self._journals.setdefault(log, []).append(_encode(entry))

    def entries(self, log: str) -> list[Doc]:
        return [dict(json.loads(text)) for text in self._journals.get(log, [])]

    def clear(self) -> None:
        self._documents.clear()
        self._journals.clear()

    def close(self) -> None:
        """Nothing to release."""


class SqliteStore:
    """A `Store` in one SQLite file, committed after every write.

    The emulator calls it from its event loop: each statement is a local, sub-millisecond write,
    which is cheaper than handing it to a thread.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def get(self, kind: str, key: str) -> Optional[Doc]:
        row = self._db.execute(
            "SELECT body FROM documents WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put(self, kind: str, key: str, doc: Doc) -> None:
        self._db.execute(
            "INSERT INTO documents (kind, key, seq, body) VALUES (?, ?,"
            " (SELECT COALESCE(MAX(seq), 0) + 1 FROM documents), ?)"
            " ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body",
            (kind, key, _encode(doc)),
        )

    def delete(self, kind: str, key: str) -> bool:
        cursor = self._db.execute("DELETE FROM documents WHERE kind = ? AND key = ?", (kind, key))
        return cursor.rowcount > 0

    def values(self, kind: str) -> list[Doc]:
        rows = self._db.execute(
            "SELECT body FROM documents WHERE kind = ? ORDER BY seq", (kind,)
        ).fetchall()
        return [dict(json.loads(row[0])) for row in rows]

    def append(self, log: str, entry: Doc) -> None:
        self._db.execute("INSERT INTO journal (log, body) VALUES (?, ?)", (log, _encode(entry)))

    def entries(self, log: str) -> list[Doc]:
        rows = self._db.execute(
            "SELECT body FROM journal WHERE log = ? ORDER BY seq", (log,)
        ).fetchall()
        return [dict(json.loads(row[0])) for row in rows]

    def clear(self) -> None:
        self._db.execute("DELETE FROM documents")
        self._db.execute("DELETE FROM journal")

    def close(self) -> None:
        self._db.close()


def open_store(path: Optional[Path]) -> Store:
    """A SQLite store at `path`, or a memory store when no path is given."""
    return MemoryStore() if path is None else SqliteStore(path)
