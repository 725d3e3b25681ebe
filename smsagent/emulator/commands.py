"""The per-source command slot and how `GET /v3/sources/{id}/command` hands its command out.

Each source has at most one active command, the newest: queueing another supersedes it (the
server holds desired state, not a backlog). Delivery follows one of two policies:

* `once`: the command is handed out on one poll; it is offered again only if no result for it
  arrived within `redeliver_after_s` seconds of that hand-out.
* `repeat`: the command is returned on every poll until a result for it arrives or a newer
  command replaces it.

A result completes the active command of the same name; any other result is only recorded.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any, Optional

from smsagent.emulator.store import Doc, Store

KIND = "command"
SLOT = "command_slot"  # per source: the id of its active command, so a poll reads two documents


class DeliveryMode(str, Enum):
    """How often an active command is handed out."""

    once = "once"
    repeat = "repeat"


class CommandState(str, Enum):
    """Where a command is in its life."""

    pending = "pending"  # queued, never handed out
    delivered = "delivered"  # handed out at least once, no result yet
    done = "done"  # a result for it arrived
    superseded = "superseded"  # a newer command for the same source replaced it
    dropped = "dropped"  # its task or source was deleted


_ACTIVE = (CommandState.pending.value, CommandState.delivered.value)


class CommandQueue:
    """Queues, hands out and completes commands, keeping every command for inspection."""

    def __init__(self, store: Store, mode: DeliveryMode, redeliver_after_s: float) -> None:
        self._store = store
        self._mode = mode
        self._redeliver_after_s = redeliver_after_s

    def push(
        self,
        source_id: str,
        name: str,
        now_s: float,
        param: Optional[dict[str, Any]] = None,
    ) -> Doc:
        """Queue `name` for `source_id`, superseding the source's active command."""
        self._end_active(source_id, CommandState.superseded)
        command: Doc = {
            "id": uuid.uuid4().hex,
            "source_id": source_id,
            "command_name": name,
            "command_param": dict(param or {}),
            "state": CommandState.pending.value,
            "created_at": now_s,
            "delivery_count": 0,
            "delivered_at": None,
            "completed_at": None,
        }
        self._store.put(KIND, command["id"], command)
        self._store.put(SLOT, source_id, {"command_id": command["id"]})
        return command

    def poll(self, source_id: str, now_s: float) -> Optional[Doc]:
        """The command to hand out now under the delivery policy, or None."""
        command = self.active(source_id)
        if command is None or not self._is_due(command, now_s):
            return None
        command["state"] = CommandState.delivered.value
        command["delivery_count"] += 1
        command["delivered_at"] = now_s
        self._store.put(KIND, command["id"], command)
        return command

    def complete(self, source_id: str, name: str, now_s: float) -> Optional[Doc]:
        """Mark the source's active command done if a result for its name arrived."""
        command = self.active(source_id)
        if command is None or command["command_name"] != name:
            return None
        command["state"] = CommandState.done.value
        command["completed_at"] = now_s
        self._store.put(KIND, command["id"], command)
        return command

    def drop(self, source_id: str, task_id: Optional[str] = None) -> None:
        """Drop the source's active command (only if it is for `task_id`, when given)."""
        command = self.active(source_id)
        if command is None:
            return
        if task_id is not None and command["command_param"].get("task_id") != task_id:
            return
        command["state"] = CommandState.dropped.value
        self._store.put(KIND, command["id"], command)

    def active(self, source_id: str) -> Optional[Doc]:
        """The source's pending or delivered command, if any."""
        slot = self._store.get(SLOT, source_id)
        command = None if slot is None else self._store.get(KIND, slot["command_id"])
        if command is None or command["state"] not in _ACTIVE:
            return None
        return command

    def all(self) -> list[Doc]:
        """Every command ever queued, oldest first."""
        return self._store.values(KIND)

    def _is_due(self, command: Doc, now_s: float) -> bool:
        if self._mode is DeliveryMode.repeat or command["delivered_at"] is None:
            return True
        return bool(now_s - command["delivered_at"] >= self._redeliver_after_s)

    def _end_active(self, source_id: str, state: CommandState) -> None:
        command = self.active(source_id)
        if command is not None:
            command["state"] = state.value
            self._store.put(KIND, command["id"], command)
