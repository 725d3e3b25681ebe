"""What a pass leaves out: the default exclusions, the user's path lists, and rsync filter rules.

User path lists come from the task's configuration settings `MIGRATE_EXCLUDE_DIR`,
`SYNC_EXCLUDE_DIR` and `ONLY_SYNC_DIR` (spec §3.17). Their format:

* entries are separated by commas; blanks around an entry are ignored, empty entries too;
* every entry is an absolute path on the source server (`/var/cache`), never containing `..`,
  a newline or a NUL; a path cannot contain a comma or begin or end with a blank;
* an exclusion may use rsync wildcards (`*`, `?`, `[...]`, `**`); `/dir/*` leaves the directory
  itself on the target but none of its contents, `/dir` leaves out the directory entirely;
* `ONLY_SYNC_DIR` names directories (no wildcards): a sync then visits only those.

All rules are anchored at the source root, which rsync sees as the root of the transfer.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, Optional

# Spec §7.5: left out of the full copy (FAQ §14.17).
MIGRATE_DEFAULT_EXCLUDES: Final = (
    "/proc/*",
    "/sys/*",
    "/lost+found/*",
    "/var/lib/ntp/proc/*",
)

# Spec §7.5: a sync also leaves alone what the target's configuration step rewrote.
SYNC_DEFAULT_EXCLUDES: Final = (
    "/proc/*",
    "/sys/*",
    "/lost+found/*",
    "/tmp/_MEI*",
    "/var/lib/ntp/proc/*",
    "/etc/fstab",
    "/etc/X11/*",
    "/root/initrd_bak/*",
    "/lib/modules/*",
    "/boot/grub2/x86_64-efi/*",
    "/boot/grub2/i386-pc/*",
)

MAX_ENTRIES: Final = 1000
MAX_PATH_BYTES: Final = 4096
_WILDCARDS: Final = frozenset("*?[")


class PathListError(ValueError):
    """A user path list is malformed; the message names the setting and the entry."""


def _check_entry(entry: str, setting: str, *, allow_wildcards: bool) -> str:
    def fail(why: str) -> PathListError:
        return PathListError(f"{setting}: entry {entry!r} {why}")

    if not entry.startswith("/"):
        raise fail("must be an absolute path")
    if "\n" in entry or "\r" in entry or "\0" in entry:
        raise fail("must not contain a newline or a NUL")
    if ".." in entry.split("/"):
        raise fail("must not contain '..'")
    if len(entry.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise fail(f"is longer than {MAX_PATH_BYTES} bytes")
    if not allow_wildcards and _WILDCARDS & set(entry):
        raise fail("must name a directory without wildcards")
    return entry


def parse_path_list(
    value: Optional[str], setting: str, *, allow_wildcards: bool = True
) -> tuple[str, ...]:
    """Parse a comma-separated path list (see the module's docstring for the format).

    Args:
        value: the setting's value; None or blank is an empty list.
        setting: the setting's name, used in error messages.
        allow_wildcards: False for lists that name directories to copy (`ONLY_SYNC_DIR`).

    Raises:
        PathListError: naming the setting and the offending entry.
    """
    if value is None:
        return ()
    entries = [part.strip() for part in value.split(",")]
    entries = [entry for entry in entries if entry]
    if len(entries) > MAX_ENTRIES:
        msg = f"{setting}: {len(entries)} entries, at most {MAX_ENTRIES} are allowed"
        raise PathListError(msg)
    checked = (_check_entry(e, setting, allow_wildcards=allow_wildcards) for e in entries)
    return tuple(dict.fromkeys(checked))


def agent_excludes(source_root: Path, own_paths: Iterable[Path]) -> tuple[str, ...]:
    """The agent's own files (state dir, env file) as rules, when they lie under the source root.

    They hold the agent's credentials and task keys: they are never copied to the target.
    """
    root = posixpath.normpath(str(source_root))
    rules = []
    for own in own_paths:
        path = posixpath.normpath(str(own))
        if path == root or not path.startswith(root.rstrip("/") + "/"):
            continue
        rules.append("/" + posixpath.relpath(path, root))
    return tuple(rules)


def lost_found_excludes(mount_paths: Iterable[str]) -> tuple[str, ...]:
    """`<mount>/lost+found/*` for every copied file system below the source root.

    Args:
        mount_paths: mount points relative to the source root (`""` for the root itself, which
            the defaults already cover).
    """
    return tuple(f"/{path}/lost+found/*" for path in mount_paths if path)


def skipped_mount_excludes(mount_paths: Iterable[str]) -> tuple[str, ...]:
    """`<mount>/*` for every mount below the source root that is not copied.

    Args:
        mount_paths: their mount points relative to the source root.
    """
    return tuple(f"/{path}/*" for path in mount_paths if path)


def filter_rules(excludes: Sequence[str]) -> tuple[str, ...]:
    """rsync `--filter` rules that exclude each path (an excluded path is also never deleted)."""
    return tuple(f"- {path}" for path in dict.fromkeys(excludes))


def migrate_excludes(
    user_value: Optional[str],
    *,
    agent_paths: Sequence[str] = (),
    mount_paths: Sequence[str] = (),
    skipped_mount_paths: Sequence[str] = (),
) -> tuple[str, ...]:
    """Everything a full copy leaves out: the defaults, lost+found of each file system, the
    contents of mounts that are not copied, the agent's own files and the user's list.

    Raises:
        PathListError: `MIGRATE_EXCLUDE_DIR` is malformed.
    """
    user = parse_path_list(user_value, "MIGRATE_EXCLUDE_DIR")
    combined = (
        *MIGRATE_DEFAULT_EXCLUDES,
        *lost_found_excludes(mount_paths),
        *skipped_mount_excludes(skipped_mount_paths),
        *agent_paths,
        *user,
    )
    return tuple(dict.fromkeys(combined))


def sync_excludes(
    user_value: Optional[str],
    *,
    agent_paths: Sequence[str] = (),
    mount_paths: Sequence[str] = (),
    skipped_mount_paths: Sequence[str] = (),
) -> tuple[str, ...]:
    """Everything a sync leaves out (and so also never deletes on the target).

    Raises:
        PathListError: `SYNC_EXCLUDE_DIR` is malformed.
    """
    user = parse_path_list(user_value, "SYNC_EXCLUDE_DIR")
    combined = (
        *SYNC_DEFAULT_EXCLUDES,
        *lost_found_excludes(mount_paths),
        *skipped_mount_excludes(skipped_mount_paths),
        *agent_paths,
        *user,
    )
    return tuple(dict.fromkeys(combined))


def only_sync_sources(user_value: Optional[str]) -> tuple[str, ...]:
    """`ONLY_SYNC_DIR` as rsync sources relative to the source root; empty means "everything".

    A directory inside another listed one is dropped: the outer one already covers it.

    Raises:
        PathListError: `ONLY_SYNC_DIR` is malformed.
    """
    paths = [
        posixpath.normpath(p)
        for p in parse_path_list(user_value, "ONLY_SYNC_DIR", allow_wildcards=False)
    ]
    if "/" in paths:
        return ()
    outermost = [p for p in paths if not any(p != o and p.startswith(o + "/") for o in paths)]
    return tuple(sorted({p.lstrip("/") for p in outermost}))
