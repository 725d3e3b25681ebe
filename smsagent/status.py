"""`smsagent status`: what the agent is doing, read from the state directory alone.

It works while the agent runs, after it stopped, and with a broken env file: it needs only the
state directory (`--state-dir`, else `SMSAGENT_STATE_DIR` from the environment or the env file,
else the default). It never writes to the state directory; with systemd present it also shows
the unit's state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Optional

from dotenv import dotenv_values

from smsagent.agent.health import read_health
from smsagent.agent.store import AGENT, CONNECTION, TASK, Document, Record, Store
from smsagent.config import DEFAULT_ENV_FILE

DEFAULT_STATE_DIR: Final = Path("/var/lib/smsagent")
UNIT: Final = "smsagent.service"
OUTBOX_DIR: Final = "outbox"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsagent status",
        description="What the agent is doing, read from the state directory alone.",
    )
    parser.add_argument("--state-dir", type=Path, help="state directory to read")
    parser.add_argument("--env-file", type=Path, help=f"env file (default {DEFAULT_ENV_FILE})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def find_state_dir(
    state_dir: Optional[Path], env_file: Optional[Path], environ: Mapping[str, str]
) -> Path:
    """The state directory: the flag, else the environment, else the env file, else default."""
    if state_dir is not None:
        return state_dir
    if environ.get("SMSAGENT_STATE_DIR"):
        return Path(environ["SMSAGENT_STATE_DIR"])
    path = env_file or DEFAULT_ENV_FILE
    try:
        value = dotenv_values(path).get("SMSAGENT_STATE_DIR") if path.is_file() else None
    except OSError:
        value = None
    return Path(value) if value else DEFAULT_STATE_DIR


def _load(store: Store, document: Document[Any]) -> Optional[Record]:
    """A document without side effects: unreadable ones are reported as absent, not moved."""
    path = store.path(document)
    try:
        return document.model.model_validate_json(path.read_bytes())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def outbox_depth(state_dir: Path) -> int:
    """Results written and not yet accepted by the server."""
    return len(list((state_dir / OUTBOX_DIR).glob("[0-9]*.json")))


def unit_state() -> Optional[str]:
    """`systemctl is-active smsagent.service`, or None without systemd."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return None
    try:
        done = subprocess.run(
            [systemctl, "is-active", UNIT],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def collect(state_dir: Path) -> dict[str, Any]:
    """Everything `status` shows, as plain JSON values."""
    store = Store(state_dir)
    agent, connection, task = (_load(store, doc) for doc in (AGENT, CONNECTION, TASK))
    health = read_health(state_dir) or {}
    report: dict[str, Any] = {
        "state_dir": str(state_dir),
        "state_dir_readable": state_dir.is_dir() and os.access(state_dir, os.R_OK | os.X_OK),
        "server_id": getattr(agent, "server_id", None),
        "endpoint": getattr(agent, "endpoint", None),
        "registered_at": getattr(agent, "registered_at", None),
        "last_ok_at": getattr(connection, "last_ok_at", None),
        "last_error_at": getattr(connection, "last_error_at", None),
        "last_error": getattr(connection, "last_error", None),
        "consecutive_errors": getattr(connection, "consecutive_errors", 0),
        "task": None,
        "outbox_depth": outbox_depth(state_dir),
        "fault": health.get("fault"),
        "fault_since": health.get("fault_since"),
        "agent_pid": health.get("pid"),
        "unit": unit_state(),
    }
    if task is not None:
        record = task.model_dump(mode="json")
        stage = record.get("stage")
        progress = record.get("stages", {}).get(stage, {}) if stage else {}
        report["task"] = {
            "task_id": record["task_id"],
            "task_type": record.get("task_type"),
            "state": record["state"],
            "stage": stage,
            "bytes_done": progress.get("bytes_done"),
            "bytes_total": progress.get("bytes_total"),
            "error_code": record.get("error_code"),
            "message": record.get("message"),
            "updated_at": record.get("updated_at"),
        }
    return report


def _when(epoch_s: Optional[float], now_s: float) -> str:
    if epoch_s is None:
        return "never"
    stamp = datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({max(now_s - epoch_s, 0):.0f} s ago)"


def _fault(report: Mapping[str, Any], now_s: float) -> str:
    fault = report.get("fault")
    if not fault:
        return "none"
    since = report.get("fault_since")
    return f"{fault} (since {_when(since, now_s)})" if isinstance(since, float) else str(fault)


def render(report: Mapping[str, Any], now_s: float) -> str:
    """The report as aligned `name: value` lines for a terminal."""
    connection = "ok" if not report["consecutive_errors"] else "failing"
    lines = [
        ("server id", report["server_id"] or "not registered"),
        ("endpoint", report["endpoint"] or "-"),
        ("service", report["unit"] or "not under systemd"),
        ("connection", connection),
        ("last good poll", _when(report["last_ok_at"], now_s)),
        ("last error", report["last_error"] or "none"),
        ("fault", _fault(report, now_s)),
    ]
    task = report["task"]
    if task is None:
        lines.append(("task", "none"))
    else:
        lines.append(("task", f"{task['task_id']} ({task['task_type'] or 'type unknown'})"))
        lines.append(("task state", task["state"]))
        if task["stage"]:
            done, total = task["bytes_done"] or 0, task["bytes_total"] or 0
            share = f", {100 * done // total} % of {total} bytes" if total else ""
            lines.append(("stage", f"{task['stage']}{share}"))
        if task["error_code"] or task["message"]:
            lines.append(("detail", f"{task['error_code'] or ''} {task['message'] or ''}".strip()))
    lines.append(("results owed", str(report["outbox_depth"])))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def main(argv: Sequence[str]) -> int:
    """Print the status; 0 when the state directory is readable, 1 when it is not."""
    args = _parser().parse_args(list(argv))
    state_dir = find_state_dir(args.state_dir, args.env_file, os.environ)
    report = collect(state_dir)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(render(report, time.time()))
    if not report["state_dir_readable"]:
        print(f"smsagent: state directory {state_dir} is not readable", file=sys.stderr)
        return 1
    return 0
