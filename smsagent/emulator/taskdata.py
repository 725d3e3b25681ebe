"""Per-task documents beside the task: speed limits, settings, consistency results and keys."""

from __future__ import annotations

import json
import secrets
from typing import Any, Optional

from pydantic import ConfigDict

from smsagent.api.enums import MigrateType, OsType, TaskType
from smsagent.api.models import (
    ConfigurationRequestBody,
    SetConsistencyResultRequestBody,
    ShowCertKeyResponse,
    SpeedLimit,
)
from smsagent.emulator.store import Doc, Store

SPEED_LIMIT = "speed_limit"
CONFIGURATION = "configuration"
CONSISTENCY = "consistency"
CERT_KEY = "certkey"
PASSPHRASE = "passphrase"
KINDS = (SPEED_LIMIT, CONFIGURATION, CONSISTENCY, CERT_KEY, PASSPHRASE)

_MIGRATE_TYPES = {
    (OsType.LINUX.value, TaskType.MIGRATE_FILE.value): MigrateType.LINUX_MIGRATE_FILE,
    (OsType.LINUX.value, TaskType.MIGRATE_BLOCK.value): MigrateType.LINUX_MIGRATE_BLOCK,
    (OsType.WINDOWS.value, TaskType.MIGRATE_BLOCK.value): MigrateType.WINDOWS_MIGRATE_BLOCK,
}


class CertKeyUpdate(ShowCertKeyResponse):
    """Body of the admin call that sets a task's keys: the ShowCertKey fields and nothing else."""

    model_config = ConfigDict(extra="forbid")

    passphrase: Optional[str] = None


class TaskData:
    """Reads and writes the side documents of tasks, keyed by task id."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def speed_limits(self, task_id: str) -> dict[str, Any]:
        """The ShowsSpeedLimits body: the windows last set, or none."""
        return self._store.get(SPEED_LIMIT, task_id) or {"speed_limit": []}

    def set_speed_limits(self, task_id: str, body: SpeedLimit) -> None:
        """Replace the task's windows."""
        self._store.put(SPEED_LIMIT, task_id, body.to_wire())

    def configurations(self, task: Doc, config_key: Optional[str]) -> dict[str, Any]:
        """The ShowConfigSetting body, optionally only the entry for `config_key`."""
        stored = self._store.get(CONFIGURATION, task["id"]) or {}
        entries = [
            entry for key, entry in stored.items() if config_key is None or key == config_key
        ]
        migrate_type = _MIGRATE_TYPES.get((str(task.get("os_type")), str(task.get("type"))))
        body: dict[str, Any] = {"task_id": task["id"], "configurations": entries}
        if migrate_type is not None:
            body["migrate_type"] = migrate_type.value
        return body

    def set_configurations(self, task_id: str, body: ConfigurationRequestBody) -> None:
        """Store configuration entries; a key set again replaces its previous value."""
        stored = self._store.get(CONFIGURATION, task_id) or {}
        for entry in body.to_wire()["configurations"]:
            stored[entry["config_key"]] = entry
        self._store.put(CONFIGURATION, task_id, stored)

    def consistency(self, task_id: str) -> dict[str, Any]:
        """The ShowConsistencyResult body: each stored result as a JSON string."""
        stored = self._store.get(CONSISTENCY, task_id) or {"consistency_result": []}
        results = [json.dumps(entry, sort_keys=True) for entry in stored["consistency_result"]]
        return {"task_id": task_id, "result_list": results}

    def set_consistency(self, task_id: str, body: SetConsistencyResultRequestBody) -> None:
        """Replace the task's verification results."""
        self._store.put(CONSISTENCY, task_id, body.to_wire())

    def cert_key(self, task_id: str) -> dict[str, Any]:
        """The ShowCertKey body: what the console set, or an empty object."""
        return self._store.get(CERT_KEY, task_id) or {}

    def set_cert_key(self, task_id: str, body: CertKeyUpdate) -> None:
        """Store the keys; a passphrase in the body replaces the task's passphrase."""
        wire = body.to_wire()
        passphrase = wire.pop("passphrase", None)
        self._store.put(CERT_KEY, task_id, wire)
        if passphrase is not None:
            self._store.put(PASSPHRASE, task_id, {"passphrase": passphrase})

    def passphrase(self, task_id: str) -> dict[str, Any]:
        """The ShowPassphrase body; a random passphrase is made on first read."""
        stored = self._store.get(PASSPHRASE, task_id)
        if stored is None:
            stored = {"passphrase": secrets.token_hex(16)}
            self._store.put(PASSPHRASE, task_id, stored)
        return {"task_id": task_id, "passphrase": stored["passphrase"]}

    def forget(self, task_id: str) -> None:
        """Drop every side document of a deleted task."""
        for kind in KINDS:
            self._store.delete(kind, task_id)
