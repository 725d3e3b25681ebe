"""The log bundle of UPLOAD_LOG: what support needs to see of this agent, as one tar.gz.

Members (each cut to its last `MEMBER_LIMIT_BYTES`):

- `manifest.json`: agent version, host, server and task ids, when, and each member with where
  it came from, or why it is missing;
- `agent-log.jsonl`: the last events of this agent's run (`smsagent.log.recent_events`), the
  task's lines and the movers' error output among them (rsync's and ssh's stderr tails are
  logged with the failure they explain);
- `journal.txt`, `journal-task.txt`: under systemd, the unit's journal and the task's lines
  in it (`TASK_ID=`), reaching back over restarts;
- `state/...`: the state directory's JSON documents (task, registration, connection, health,
  owed results), never the task keys in `keys/`; `state-files.txt` lists every file there;
- `check.json`: `smsagent check --json`; `inventory.json`: `smsagent inventory`;
- `unit-status.txt`: `systemctl status` of the unit, or "unknown" outside systemd.

Secrets are removed from every member: the values the process registered (SK, token,
passwords), the task keys found in the state directory, any PEM private key, and the values of
JSON fields named like secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Optional

from smsagent import __version__
from smsagent.childproc import kill_group
from smsagent.config import ENV_PREFIX, Settings, env_name
from smsagent.log import (
    REDACTED,
    SecretRegistry,
    is_secret_key,
    recent_events,
    redact_private_keys,
    scrub,
)
from smsagent.taskfiles import KEYS_DIR

MEMBER_LIMIT_BYTES: Final = 4 * 1024 * 1024
STATE_FILE_LIMIT_BYTES: Final = 1024 * 1024
JOURNAL_LINES: Final = 5000
TASK_JOURNAL_LINES: Final = 20000
COMMAND_TIMEOUT_S: Final = 60.0
CHECK_TIMEOUT_S: Final = 10.0
CUT_NOTE: Final = b"[cut: only the last part is kept]\n"


@dataclass(frozen=True)
class Member:
    """One file of the bundle."""

    name: str
    data: bytes
    source: str


@dataclass
class Bundle:
    """The members gathered so far, and what could not be gathered."""

    members: list[Member] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, text: str, source: str) -> None:
        self.members.append(Member(name, _tail(text.encode("utf-8", "replace")), source))


@dataclass(frozen=True)
class Facts:
    """What the bundle is about.

    Attributes:
        settings: the agent's settings.
        task_id: the task the logs are for, if any.
        server_id: this server's SMS id, if registered.
        now_s: when, epoch seconds.
    """

    settings: Settings
    task_id: Optional[str]
    server_id: Optional[str]
    now_s: float


class Scrubber:
    """Removes secrets from text: those the process registered and `extra` ones."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        self._extra = SecretRegistry()
        for value in extra:
            self._extra.register(value)

    def text(self, text: str) -> str:
        """`text` without any secret."""
        return redact_private_keys(self._extra.scrub(scrub(text)))

    def value(self, value: Any) -> Any:
        """A JSON value without secrets: secret-named fields redacted, strings scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                k: REDACTED if is_secret_key(str(k)) and v is not None else self.value(v)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        return value


def _tail(data: bytes) -> bytes:
    if len(data) <= MEMBER_LIMIT_BYTES:
        return data
    return CUT_NOTE + data[-(MEMBER_LIMIT_BYTES - len(CUT_NOTE)) :]


def task_keys(state_dir: Path) -> list[str]:
    """The task keys the state directory holds: secrets to remove wherever they appear."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for path in sorted((state_dir / KEYS_DIR).iterdir()):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found.append(path.read_text(encoding="utf-8"))
    return found


def state_documents(state_dir: Path, scrubber: Scrubber, bundle: Bundle) -> None:
    """The state directory's JSON documents (never `keys/`), and a listing of every file."""
    listing: list[str] = []
    try:
        paths = sorted(p for p in state_dir.rglob("*") if not p.is_symlink())
    except OSError as exc:
        bundle.missing["state/"] = f"cannot read {state_dir}: {exc.strerror or exc}"
        return
    for path in paths:
        relative = path.relative_to(state_dir)
        with contextlib.suppress(OSError):
            info = path.stat()
            listing.append(f"{oct(info.st_mode & 0o7777)} {info.st_size:>10} {relative}")
        if not path.is_file() or relative.parts[0] == KEYS_DIR or path.suffix != ".json":
            continue
        try:
            if path.stat().st_size > STATE_FILE_LIMIT_BYTES:
                bundle.missing[f"state/{relative}"] = "larger than 1 MiB"
                continue
            raw = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            bundle.missing[f"state/{relative}"] = exc.strerror or str(exc)
            continue
        try:
            text = json.dumps(scrubber.value(json.loads(raw)), indent=2, ensure_ascii=False)
        except ValueError:
            text = scrubber.text(raw)
        bundle.add(f"state/{relative}", text, str(path))
    bundle.add("state-files.txt", "\n".join(listing) + "\n", str(state_dir))


def agent_log(scrubber: Scrubber) -> str:
    """The recent events of this run as JSON lines."""
    lines = [
        json.dumps(scrubber.value(event), default=str, ensure_ascii=False)
        for event in recent_events()
    ]
    return "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True)
class Output:
    """How a command ended: its exit code (None when it did not run) and output."""

    exit_code: Optional[int]
    stdout: str
    stderr: str
    problem: Optional[str] = None


async def run_command(
    argv: Sequence[str], env: Mapping[str, str], timeout_s: float = COMMAND_TIMEOUT_S
) -> Output:
    """Run a command in a session of its own, bounded in time; never raises for its failure."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        return Output(None, "", "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        kill_group(proc)
        await proc.wait()
        return Output(proc.returncode, "", "", f"{' '.join(argv[:3])} took over {timeout_s:g} s")
    except BaseException:
        kill_group(proc)
        raise
    return Output(
        proc.returncode,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The agent's settings as `SMSAGENT_*` variables, so that `smsagent check` in a child
    checks what this agent runs with, whichever env file it was started with."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="python").items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(item) for item in value)
        else:
            text = str(value)
        env[env_name(name)] = text
    return env


def unit_name(cgroup_file: Path = Path("/proc/self/cgroup")) -> Optional[str]:
    """The systemd service this process runs in (from its cgroup), or None."""
    if "INVOCATION_ID" not in os.environ:
        return None
    try:
        text = cgroup_file.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        leaf = line.rpartition("/")[2]
        if leaf.endswith(".service"):
            return leaf
    return None


async def _own_command(args: Sequence[str], env: Mapping[str, str]) -> Output:
    return await run_command([sys.executable, "-m", "smsagent", *args], env)


async def _commands(facts: Facts, scrubber: Scrubber, bundle: Bundle) -> None:
    """`check --json`, `inventory`, and under systemd the unit's status and journal."""
    settings = facts.settings
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    # The child needs the credentials to check them; it is this agent's own program, and the
    # variables reach nothing else.
    check_env = {**plain_env, **settings_env(settings)}
    unit = unit_name()
    jobs: dict[str, tuple[str, Any]] = {
        "check.json": (
            "smsagent check --json",
            _own_command(["check", "--json", "--timeout", f"{CHECK_TIMEOUT_S:g}"], check_env),
        ),
        "inventory.json": (
            "smsagent inventory",
            _own_command(
                ["inventory", "--pretty", "--name", settings.server_name or ""], plain_env
            ),
        ),
    }
    if unit is not None:
        journal = ["journalctl", "--no-pager", "--output=short-iso-precise", f"--unit={unit}"]
        jobs["unit-status.txt"] = (
            f"systemctl status {unit}",
            run_command(["systemctl", "status", "--no-pager", "--full", unit], plain_env),
        )
        jobs["journal.txt"] = (
            f"journalctl --unit={unit}",
            run_command([*journal, f"--lines={JOURNAL_LINES}"], plain_env),
        )
        if facts.task_id:
            jobs["journal-task.txt"] = (
                f"journalctl --unit={unit} TASK_ID={facts.task_id}",
                run_command(
                    [*journal, f"--lines={TASK_JOURNAL_LINES}", f"TASK_ID={facts.task_id}"],
                    plain_env,
                ),
            )
    else:
        bundle.add(
            "unit-status.txt",
            f"unknown: this agent (pid {os.getpid()}) does not run under systemd\n",
            "this process",
        )
    outputs = await asyncio.gather(*(job for _, job in jobs.values()))
    for (name, (source, _)), output in zip(jobs.items(), outputs):
        _add_output(bundle, scrubber, name, source, output)


def _add_output(bundle: Bundle, scrubber: Scrubber, name: str, source: str, out: Output) -> None:
    if out.problem is not None:
        bundle.missing[name] = scrubber.text(out.problem)
        return
    text = out.stdout
    if out.stderr.strip():
        text += f"\n--- standard error ---\n{out.stderr}"
    if out.exit_code:
        text += f"\n--- exit status {out.exit_code} ---\n"
    bundle.add(name, scrubber.text(text), source)


def _manifest(facts: Facts, bundle: Bundle) -> str:
    manifest = {
        "agent_version": __version__,
        "host": socket.gethostname(),
        "server_id": facts.server_id,
        "task_id": facts.task_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(facts.now_s)),
        "members": [
            {"name": member.name, "bytes": len(member.data), "from": member.source}
            for member in bundle.members
        ],
        "missing": bundle.missing,
    }
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


async def collect(facts: Facts) -> Bundle:
    """Gather every member, secrets removed."""
    state_dir = facts.settings.state_dir
    scrubber = Scrubber([*facts.settings.secrets(), *task_keys(state_dir)])
    bundle = Bundle()
    bundle.add("agent-log.jsonl", agent_log(scrubber), "this agent's recent log events")
    await asyncio.to_thread(state_documents, state_dir, scrubber, bundle)
    await _commands(facts, scrubber, bundle)
    bundle.add("manifest.json", _manifest(facts, bundle), "this bundle")
    return bundle


def archive(bundle: Bundle, now_s: float, top: str) -> bytes:
    """The members as one tar.gz, each under the directory `top`, mode 0600."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in sorted(bundle.members, key=lambda m: m.name != "manifest.json"):
            info = tarfile.TarInfo(f"{top}/{member.name}")
            info.size = len(member.data)
            info.mtime = int(now_s)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(member.data))
    return buffer.getvalue()
