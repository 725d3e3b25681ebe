"""FSCOPY_TEST work for whole-agent tests: a small source tree, the task that copies it, and
what to compare afterwards.

    job = CopyJob.build(tmp_path, files=30)
    task_id = job.create_task(emulator, source_id, file_delay_s=0.1)
    ...
    assert job.differences() == []
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.support.emulator import EmulatorProcess

TASK_TYPE: Final = "FSCOPY_TEST"
FOLDERS: Final = ("etc", "var/lib/app", "srv/data")


@dataclass(frozen=True)
class CopyJob:
    """A source tree of regular files (and one symlink) and the empty target it is copied to."""

    source: Path
    target: Path
    files: tuple[str, ...]

    @classmethod
    def build(cls, workdir: Path, *, files: int = 30, seed: int = 1) -> CopyJob:
        """Write `files` files of 1-8 KiB of random bytes over three folders, and a symlink."""
        rng = random.Random(seed)
        source, target = workdir / "source", workdir / "target"
        target.mkdir(parents=True)
        names = cls.names(files)
        for index, relative in enumerate(names):
            path = source / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(rng.randint(1024, 8192)))
            path.chmod(0o640 if index % 2 else 0o600)
        (source / "etc" / "link").symlink_to("file-000.bin")
        return cls(source, target, tuple(sorted(names)))

    @staticmethod
    def names(files: int) -> list[str]:
        """The relative paths `build(files=...)` writes, in the order it writes them."""
        return [f"{FOLDERS[i % len(FOLDERS)]}/file-{i:03d}.bin" for i in range(files)]

    @property
    def written_entries(self) -> frozenset[str]:
        """What the plugin writes (and logs as `fscopy_file_copied`): the files and the symlink."""
        return frozenset({*self.files, "etc/link"})

    def create_task(
        self,
        emulator: EmulatorProcess,
        source_id: str,
        *,
        file_delay_s: float = 0.0,
        stop_delay_s: float = 0.0,
    ) -> str:
        """Create the task as the console does, then make it an FSCOPY_TEST task of this job."""
        task_id = emulator.create_task(source_id)
        fields: dict[str, Any] = {
            "type": TASK_TYPE,
            "fscopy_source": str(self.source),
            "fscopy_target": str(self.target),
        }
        if file_delay_s:
            fields["fscopy_file_delay_s"] = file_delay_s
        if stop_delay_s:
            fields["fscopy_stop_delay_s"] = stop_delay_s
        emulator.patch_task(task_id, **fields)
        return task_id

    def target_inodes(self) -> dict[str, int]:
        """The inode of each complete file in the target: the plugin writes a file to a new
        inode, so an unchanged inode means the file was not written again."""
        return {
            relative: (self.target / relative).stat().st_ino
            for relative in self.files
            if (self.target / relative).is_file()
        }

    def differences(self) -> list[str]:
        """How the target differs from the source (content, mode, mtime, links), sorted."""
        source, target = _describe(self.source), _describe(self.target)
        problems = [f"missing {relative}" for relative in sorted(source.keys() - target.keys())]
        problems += [f"extra {relative}" for relative in sorted(target.keys() - source.keys())]
        problems += [
            f"differs {relative}"
            for relative in sorted(source.keys() & target.keys())
            if source[relative] != target[relative]
        ]
        return problems


def _describe(root: Path) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        info = path.lstat()
        if path.is_symlink():
            found[relative] = ("link", str(path.readlink()))
        elif path.is_dir():
            found[relative] = ("dir", info.st_mode)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[relative] = ("file", info.st_mode, info.st_mtime_ns, digest)
    return found
