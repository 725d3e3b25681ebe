"""Starting the block receiver on the target over the task's SSH session.

The receiver's own text (`receiver.py`) travels on ssh's stdin with its configuration, and the
target's `python3` runs it from memory: nothing is installed on the target. The target's Python
first says which interpreter and machine it is; when it can load the agent's compiled
`zstandard` and `xxhash` (the same interpreter version and machine), those travel too, into a
private temporary directory the receiver removes when it ends. One ssh connection and one
Python start do both: a start costs one SSH handshake. Otherwise the channel compresses with
zlib, which every Python has, and the target cannot report digests: after the target's own tools
wrote to a volume, its whole table is forgotten.

The ssh client stays open for the receiver's life: its stdin is the receiver's lease, so the
receiver ends when the agent ends the session, stops, or is killed (its leftover ssh clients
are killed by task tag at the next start).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import io
import json
import platform
import shlex
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Optional

from smsagent.childproc import kill_group
from smsagent.migration.block import receiver as wire
from smsagent.target.session import TargetError, TargetSession

ERROR_RECEIVER: Final = "SMSAGENT.BLOCK_RECEIVER"
START_TIMEOUT_S: Final = 60.0
_PYTHON: Final = "SMSAGENT-RECEIVER-PYTHON"
# Says which Python it is, reads its configuration, unpacks the modules it was sent, and runs
# the receiver's text.
_BOOTSTRAP: Final = """
import base64, io, json, os, platform, shutil, sys, tarfile, tempfile
sys.stdout.write("%s %s %s\\n" % (@PYTHON@, sys.implementation.cache_tag, platform.machine()))
sys.stdout.flush()
config = json.loads(sys.stdin.buffer.readline())
workdir = tempfile.mkdtemp(prefix="smsagent-receiver-")
config["workdir"] = workdir
if config.get("modules_tgz"):
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(config.pop("modules_tgz")))) as tar:
        tar.extractall(workdir)
    sys.path.insert(0, workdir)
namespace = {"__name__": "smsagent_block_receiver"}
exec(compile(config.pop("source"), "smsagent-block-receiver", "exec"), namespace)
namespace["serve"](config, sys.stdout)
""".replace("@PYTHON@", repr(_PYTHON))
_THIS_PYTHON: Final = f"{sys.implementation.cache_tag} {platform.machine()}"
_RECEIVER_TEXT: Final = Path(wire.__file__).read_text(encoding="utf-8")


@dataclass
class Receiver:
    """A running receiver: its ssh process and the port it listens on."""

    process: asyncio.subprocess.Process
    port: int
    lines: list[str]
    collector: Optional[asyncio.Future[None]] = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self) -> None:
        """End the lease (stdin), then the ssh client; the receiver exits with it."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5.0)
        if self.collector is not None:
            self.collector.cancel()
        kill_group(self.process)
        await self.process.wait()


async def start_receiver(
    session: TargetSession,
    tls_config: dict[str, Any],
    devices: list[str],
    *,
    port: int,
    bind: str = "0.0.0.0",
    ship_modules: bool = True,
) -> Receiver:
    """Start the receiver on the target, allowed to write `devices` only.

    Raises:
        TargetError: ssh failed, or the receiver did not start (the port taken, no python3).
    """
    config: dict[str, Any] = {
        **tls_config,
        "devices": devices,
        "port": port,
        "bind": bind,
        "source": _RECEIVER_TEXT,
    }
    remote = shlex.join(["python3", "-c", _BOOTSTRAP])
    argv = [*session.ssh_argv(), "--", session.host, remote]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=session.child_env(),
        start_new_session=True,
    )
    assert process.stdin is not None and process.stdout is not None
    # Packed while ssh connects: it takes a tenth of a second, the handshake longer.
    bundle = asyncio.ensure_future(asyncio.to_thread(_local_bundle)) if ship_modules else None
    lines: list[str] = []
    listening = None
    try:
        python = await asyncio.wait_for(_line(process.stdout, lines, _PYTHON), START_TIMEOUT_S)
        if python is not None:
            modules = await bundle if bundle is not None else None
            if modules is not None and python == _THIS_PYTHON:
                config["modules_tgz"] = modules
            process.stdin.write(json.dumps(config).encode("utf-8") + b"\n")
            await process.stdin.drain()
            found = await asyncio.wait_for(
                _line(process.stdout, lines, wire.LISTENING), START_TIMEOUT_S
            )
            listening = int(found) if found is not None else None
    except (OSError, ValueError, asyncio.TimeoutError) as exc:
        kill_group(process)
        await process.wait()
        detail = lines[-1] if lines else str(exc) or "no answer"
        raise TargetError(ERROR_RECEIVER, f"the block receiver did not start: {detail}") from exc
    finally:
        if bundle is not None:
            bundle.cancel()
    if listening is None:
        await process.wait()
        detail = lines[-1] if lines else f"exit {process.returncode}"
        raise TargetError(ERROR_RECEIVER, f"the block receiver did not start: {detail}")
    receiver = Receiver(process, listening, lines)
    receiver.collector = asyncio.ensure_future(_collect(process.stdout, lines))
    return receiver


async def _line(stdout: asyncio.StreamReader, lines: list[str], marker: str) -> Optional[str]:
    """What follows `marker` on the next line that starts with it (other lines are kept in
    `lines`); None when the output ends first."""
    while True:
        raw = await stdout.readline()
        if not raw:
            return None
        line = raw.decode("utf-8", "replace").rstrip()
        if line.startswith(marker + " "):
            return line[len(marker) + 1 :]
        lines.append(line[-500:])


async def _collect(stdout: asyncio.StreamReader, lines: list[str]) -> None:
    """Keep the receiver's last lines (refused peers, ended connections) for errors and logs."""
    while True:
        raw = await stdout.readline()
        if not raw:
            return
        lines.append(raw.decode("utf-8", "replace").rstrip()[-500:])
        del lines[:-50]


# The packages the receiver can use when the target's Python loads them, and the files of each
# it needs (the compiled backend, not stubs or alternative backends).
SHIPPED_MODULES: Final = {
    "zstandard": ("__init__.py", "backend_c."),
    "xxhash": ("__init__.py", "version.py", "_xxhash."),
}


def _local_bundle() -> Optional[str]:
    """The agent's compiled helper packages as base64 tar.gz, or None when it has none."""
    packages = {}
    for name in SHIPPED_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            packages[name] = Path(spec.origin).parent
    return _pack(packages) if packages else None


def _pack(packages: dict[str, Path]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, directory in packages.items():
            wanted = SHIPPED_MODULES[name]
            for path in sorted(directory.iterdir()):
                if path.name in wanted or path.name.startswith(
                    tuple(w for w in wanted if w.endswith("."))
                ):
                    tar.add(path, arcname=f"{name}/{path.name}")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
