"""Source servers: registration, disk and state reports, liveness, and their console view."""

from __future__ import annotations

import uuid
from typing import Any, Optional

from smsagent.api.enums import CopyState, SourceState
from smsagent.api.models import (
    PostSourceServerBody,
    PutCopyStateReq,
    PutDiskInfoReq,
    SourceServer,
    TaskBrief,
)
from smsagent.emulator.errors import source_not_found
from smsagent.emulator.store import Doc, Store

KIND = "source"

# Fields the emulator keeps on a source for itself; they never appear in a response.
_INTERNAL = ("current_task_id",)
_TASK_BRIEF_FIELDS = tuple(TaskBrief.model_fields)


def to_ms(now_s: float) -> int:
    """Wall-clock seconds -> the epoch milliseconds SMS puts in its timestamps."""
    return int(now_s * 1000)


class Sources:
    """The source servers the agents registered, kept in a `Store`."""

    def __init__(self, store: Store, disconnect_after_s: float) -> None:
        self._store = store
        self._disconnect_after_s = disconnect_after_s

    def register(self, body: PostSourceServerBody, now_s: float) -> str:
        """Store a registration; a known `id`, or the same name and IP, keeps its record."""
        existing = self._match(body)
        doc: Doc = dict(existing or {})
        doc.update(body.to_wire())
        doc["id"] = existing["id"] if existing else uuid.uuid4().hex
        doc.setdefault("add_date", to_ms(now_s))
        doc["state"] = body.state or doc.get("state") or SourceState.waiting.value
        doc["last_visit_time"] = to_ms(now_s)
        doc.setdefault("checks", [])
        self._store.put(KIND, doc["id"], doc)
        return str(doc["id"])

    def find(self, source_id: str) -> Optional[Doc]:
        """The stored source, or None."""
        return self._store.get(KIND, source_id)

    def get(self, source_id: str) -> Doc:
        """The stored source.

        Raises:
            ApiError: 404 when there is no such source.
        """
        doc = self._store.get(KIND, source_id)
        if doc is None:
            raise source_not_found(source_id)
        return doc

    def all(self) -> list[Doc]:
        """Every source, in registration order."""
        return self._store.values(KIND)

    def update(self, source_id: str, **fields: Any) -> Doc:
        """Set top-level fields of a source and store it."""
        doc = self.get(source_id)
        doc.update(fields)
        self._store.put(KIND, source_id, doc)
        return doc

    def update_disks(self, source_id: str, body: PutDiskInfoReq) -> None:
        """Replace the disk, volume-group and btrfs lists that the body carries."""
        wire = body.to_wire()
        fields = {"disks": wire.get("disks"), "volume_groups": wire.get("volumegroups")}
        fields["btrfs_list"] = wire.get("btrfs_list")
        self.update(source_id, **{key: value for key, value in fields.items() if value is not None})

    def change_state(self, source_id: str, body: PutCopyStateReq, now_s: float) -> None:
        """Apply a `changestate` report; `init` is shown as `initialize`, as the console does."""
        state = body.copystate
        shown = SourceState.initialize.value if state is CopyState.init else state.value
        self.update(
            source_id,
            state=shown,
            migration_cycle=body.migrationcycle.value,
            state_action_time=to_ms(now_s),
        )

    def touch(self, source_id: str, now_s: float) -> None:
        """Record a poll: it keeps the source connected."""
        self.update(source_id, last_visit_time=to_ms(now_s))

    def delete(self, source_id: str) -> None:
        """Forget a source (its agent must register again)."""
        if not self._store.delete(KIND, source_id):
            raise source_not_found(source_id)

    def view(self, doc: Doc, task: Optional[Doc], now_s: float) -> dict[str, Any]:
        """The ShowServer / ListServers body of a source, with `connected` and `current_task`."""
        shown = {key: value for key, value in doc.items() if key not in _INTERNAL}
        shown["connected"] = self.is_connected(doc, now_s)
        if task is not None:
            brief = {key: task[key] for key in _TASK_BRIEF_FIELDS if key in task}
            shown["current_task"] = brief
        return SourceServer.model_validate(shown).to_wire()

    def is_connected(self, doc: Doc, now_s: float) -> bool:
        """True while the agent polled within the disconnect window."""
        last_ms = doc.get("last_visit_time")
        if last_ms is None:
            return False
        return bool(now_s - last_ms / 1000 <= self._disconnect_after_s)

    def _match(self, body: PostSourceServerBody) -> Optional[Doc]:
        if body.id:
            known = self._store.get(KIND, body.id)
            if known is not None:
                return known
        for doc in self.all():
            if doc.get("name") == body.name and doc.get("ip") == body.ip:
                return doc
        return None
