"""`/etc/fstab` and the resume device by the target's new UUIDs (pure: text in, text out).

An entry whose mount point the target has gets `UUID=<new uuid>` as its source, whatever named
it before (`UUID=`, `LABEL=`, `PARTUUID=`, `/dev/sdX`, `/dev/mapper/...`, `/dev/disk/by-*`), and
its old line is kept above it as a comment. Swap entries pair with the target's swap volumes by
the source's UUID, else in order. A device entry for a mount point the target lacks is commented
out (the boot would wait for a device that never comes), unless it is `noauto`. Network, pseudo
and bind mounts, and entries of files (a swap file, a loop image), are not touched.

Running the rewrite on its own output gives the same text: an entry that already names its new
UUID is left alone, commented lines are never entries, and an entry already under one of our
`was:` comments gets no second one.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Optional

from smsagent.target.prepared import PreparedVolume

MARK_WAS: Final = "# smsagent: was: "
MARK_OFF: Final = "# smsagent: not on the target: "
MARK_ADDED: Final = "# smsagent: added: mounted on the source without an entry here"
_DEVICE_TAGS: Final = ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "ID=")
_PSEUDO: Final = frozenset(
    {
        "proc", "sysfs", "tmpfs", "devtmpfs", "devpts", "ramfs", "cgroup", "cgroup2",
        "securityfs", "debugfs", "tracefs", "mqueue", "hugetlbfs", "efivarfs", "pstore",
        "configfs", "fusectl", "binfmt_misc", "bpf", "autofs", "overlay", "none", "rpc_pipefs",
        "nfsd", "usbfs",
    }
)  # fmt: skip
_NETWORK: Final = frozenset(
    {
        "nfs", "nfs4", "cifs", "smbfs", "smb3", "sshfs", "fuse.sshfs", "glusterfs",
        "fuse.glusterfs", "ceph", "fuse.ceph", "9p", "davfs", "fuse.s3fs", "lustre", "ocfs2",
        "gfs2",
    }
)  # fmt: skip
_ESCAPE_RE: Final = re.compile(r"\\([0-7]{3})")
_FIELD_RE: Final = re.compile(r"\S+")
_RESUME_RE: Final = re.compile(r"^(\s*(?:export\s+)?RESUME=)(.*?)(\s*)$")


@dataclass(frozen=True)
class _Entry:
    index: int
    spec: str  # unquoted
    mount_point: str  # decoded, normalised
    fstype: str
    options: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # where each field is in the line

    @property
    def is_device(self) -> bool:
        return self.spec.startswith(_DEVICE_TAGS) or self.spec.startswith("/dev/")

    @property
    def untouchable(self) -> bool:
        """Network, pseudo and bind mounts, and file-backed entries, are none of ours."""
        return (
            self.fstype in _PSEUDO
            or self.fstype in _NETWORK
            or self.fstype.startswith("fuse")
            or "_netdev" in self.options
            or "bind" in self.options
            or "rbind" in self.options
            or not self.is_device
        )

    @property
    def is_swap(self) -> bool:
        return self.fstype == "swap"


def decode_mount_point(field: str) -> str:
    """fstab's octal escapes (`\\040` for a space) undone, the path normalised."""
    text = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field)
    return posixpath.normpath(text) if text.startswith("/") else text


def encode_mount_point(path: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def unquote_spec(spec: str) -> str:
    """`UUID="abc"` -> `UUID=abc` (libmount accepts both)."""
    tag, sep, value = spec.partition("=")
    if sep and len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return f"{tag}={value[1:-1]}"
    return spec


def _parse(index: int, line: str) -> Optional[_Entry]:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    matches = list(_FIELD_RE.finditer(line))
    if len(matches) < 2:
        return None
    fields = [m.group(0) for m in matches]
    return _Entry(
        index=index,
        spec=unquote_spec(fields[0]),
        mount_point=decode_mount_point(fields[1]),
        fstype=fields[2] if len(fields) > 2 else "auto",
        options=tuple(fields[3].split(",")) if len(fields) > 3 else ("defaults",),
        spans=tuple(m.span() for m in matches),
    )


def _pair_swaps(
    entries: Sequence[_Entry], swaps: Sequence[PreparedVolume]
) -> dict[int, PreparedVolume]:
    """Swap entries paired with the target's swaps: by UUID (the source's or already the new
    one), then the rest in order."""
    paired: dict[int, PreparedVolume] = {}
    free = list(swaps)
    for entry in entries:
        uuid = entry.spec[len("UUID=") :] if entry.spec.startswith("UUID=") else None
        match = next((v for v in free if uuid and uuid in (v.uuid, v.source_uuid)), None)
        if match is not None:
            paired[entry.index] = match
            free.remove(match)
    for entry in entries:
        if entry.index not in paired and free:
            paired[entry.index] = free.pop(0)
    return paired


def _rewritten(line: str, entry: _Entry, volume: PreparedVolume) -> str:
    """The line with its source (and a wrong file-system type) replaced, spacing kept."""
    replacements = {0: f"UUID={volume.uuid}"}
    if len(entry.spans) > 2 and entry.fstype not in ("auto", volume.fstype):
        replacements[2] = volume.fstype
    out = line
    for field in sorted(replacements, reverse=True):
        start, end = entry.spans[field]
        out = out[:start] + replacements[field] + out[end:]
    return out


def _added_lines(volume: PreparedVolume) -> list[str]:
    if volume.is_swap:
        return [MARK_ADDED, f"UUID={volume.uuid} none swap sw 0 0"]
    mount_point = volume.mount_point or "/"
    passno = 1 if mount_point == "/" else 2
    options = "umask=0077" if volume.fstype == "vfat" else "defaults"
    fields = (f"UUID={volume.uuid}", encode_mount_point(mount_point), volume.fstype, options)
    return [MARK_ADDED, f"{' '.join(fields)} 0 {passno}"]


def rewrite_fstab(text: str, volumes: Sequence[PreparedVolume]) -> str:
    """`/etc/fstab` by the target's new UUIDs (see the module's description).

    Args:
        text: the fstab as it is.
        volumes: every file system and swap the target has.
    """
    lines = text.splitlines()
    entries = [e for i, line in enumerate(lines) if (e := _parse(i, line)) is not None]
    ours = [e for e in entries if not e.untouchable]
    swaps = _pair_swaps([e for e in ours if e.is_swap], [v for v in volumes if v.is_swap])
    mounts = {v.mount_point: v for v in volumes if v.mount_point and not v.is_swap}
    by_index = {e.index: e for e in ours}
    out: list[str] = []
    covered: set[str] = set()
    for index, line in enumerate(lines):
        entry = by_index.get(index)
        if entry is None:
            out.append(line)
            continue
        volume = swaps.get(index) if entry.is_swap else mounts.get(entry.mount_point)
        if volume is None:
            out.append(line if "noauto" in entry.options else MARK_OFF + line)
            continue
        covered.add(volume.uuid)
        new = _rewritten(line, entry, volume)
        if new != line and not (out and out[-1].startswith(MARK_WAS)):
            out.append(MARK_WAS + line)
        out.append(new)
    for volume in [*mounts.values(), *(v for v in volumes if v.is_swap)]:
        if volume.uuid not in covered:
            out.extend(_added_lines(volume))
    return "\n".join(out) + "\n" if out else ""


def rewrite_resume_conf(text: str, swaps: Sequence[PreparedVolume]) -> str:
    """initramfs-tools' `conf.d/resume`: `RESUME=` names the target's swap by its new UUID.

    The source's swap maps to its new UUID; any other device the target cannot have becomes
    the first swap of the target, or `none` when it has no swap (else the initramfs waits
    for it at every boot). `none` and `auto` stay.
    """
    out: list[str] = []
    for line in text.splitlines():
        match = _RESUME_RE.match(line)
        if match is None:
            out.append(line)
            continue
        try:
            words = shlex.split(match.group(2))
        except ValueError:
            out.append(line)
            continue
        value = words[0] if words else ""
        new = resume_target(value, swaps)
        out.append(line if new == value else f"{match.group(1)}{new}{match.group(3)}")
    return "\n".join(out) + "\n" if out else ""


def resume_target(value: str, swaps: Sequence[PreparedVolume]) -> str:
    """The resume device `value` should name on the target."""
    if value in ("none", "auto", ""):
        return value
    uuid = unquote_spec(value)[len("UUID=") :] if value.startswith("UUID=") else None
    for volume in swaps:
        if uuid is not None and uuid in (volume.uuid, volume.source_uuid):
            return f"UUID={volume.uuid}"
        if value == volume.device:
            return value
    return f"UUID={swaps[0].uuid}" if swaps else "none"
