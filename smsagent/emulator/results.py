"""Command results the agents sent: kept in arrival order, each result key recorded once per source.

Agents deliver results at least once and mark each with `result_detail.result_key`. The same
key from the same source again is a redelivery: it is counted on the stored result (its
`duplicates`) and otherwise ignored. Results without a key (a non-empty string) are all kept.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional

from smsagent.emulator.store import Doc, Store

KIND = "command_result"
KEYS = "command_result_key"  # per `source_id/result_key`: the store key of its stored result
RESULT_KEY_FIELD = "result_key"


def result_key(result_detail: dict[str, Any]) -> Optional[str]:
    """The idempotency key of a result, or None when it has none."""
    key = result_detail.get(RESULT_KEY_FIELD)
    return key if isinstance(key, str) and key else None


def _index_key(source_id: str, key: str) -> str:
    # Source ids never contain "/" (path ids are [A-Za-z0-9_-]), so the pair stays unambiguous.
    return f"{source_id}/{key}"


class CommandResults:
    """The stored command results, oldest first, with their duplicate counts."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def count_duplicate(self, source_id: str, result_detail: dict[str, Any]) -> bool:
        """True, after counting it, when this source already sent a result with this key."""
        key = result_key(result_detail)
        index = None if key is None else self._store.get(KEYS, _index_key(source_id, key))
        stored = None if index is None else self._store.get(KIND, index["result"])
        if index is None or stored is None:
            return False
        stored["duplicates"] += 1
        self._store.put(KIND, index["result"], stored)
        return True

    def record(self, source_id: str, entry: Doc) -> Doc:
        """Store a first-seen result (with `duplicates` 0) and remember its key for the source."""
        stored = {**entry, "duplicates": 0}
        store_key = uuid.uuid4().hex
        self._store.put(KIND, store_key, stored)
        key = result_key(entry.get("result_detail") or {})
        if key is not None:
            self._store.put(KEYS, _index_key(source_id, key), {"result": store_key})
        return stored

    def all(self) -> list[Doc]:
        """Every stored result, oldest first."""
        return self._store.values(KIND)

    def duplicate_count(self) -> int:
        """How many redelivered results were counted and not stored again."""
        return sum(int(entry["duplicates"]) for entry in self.all())
