"""The kernel command line and GRUB's settings for the target's disks (pure: text in, text out).

`root=`, `resume=` and `rd.lvm.*=` name the source's disks. Where GRUB writes `root=` itself
(`/etc/default/grub`'s `GRUB_CMDLINE_LINUX*`, from which grub-mkconfig builds the menu) a stale
one is dropped; where it is kept verbatim (BLS entries, RHEL 8's `kernelopts` in grubenv) it is
set to the target's root. A `resume=` of the source's swap names the target's swap; one of a
device the target lacks is dropped (the initramfs would wait for it), as is an `rd.lvm.*` of a
volume group the target does not have (dracut would wait for it).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Optional

from smsagent.target.prepared import PreparedTarget

MARK_WAS: Final = "# smsagent: was: "
GRUBENV_HEADER: Final = "# GRUB Environment Block\n"
_CMDLINE_VAR_RE: Final = re.compile(
    r"^(\s*(?:export\s+)?(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=)(.*?)(\s*)$"
)
_OS_PROBER_RE: Final = re.compile(r"^\s*(?:export\s+)?GRUB_DISABLE_OS_PROBER=")
_FORCE_PARTUUID_RE: Final = re.compile(r"^\s*(?:export\s+)?GRUB_FORCE_PARTUUID=")
_OPTIONS_RE: Final = re.compile(r"^(\s*options\s+)(.*?)(\s*)$")
OS_PROBER_LINE: Final = "GRUB_DISABLE_OS_PROBER=true"


@dataclass(frozen=True)
class BootIdentity:
    """What the kernel command line may say about the target's disks.

    Attributes:
        root_arg: `root=`'s value for the target (`UUID=...`, or `/dev/mapper/<vg>-<lv>`
            for a root on LVM, as grub-mkconfig writes it).
        uuid_map: the source's file-system UUIDs -> the target's.
        new_uuids: the target's file-system UUIDs.
        swap_uuids: the target's swap UUIDs, in order.
        volume_groups: the target's LVM volume groups.
        lvm_devices: the target's logical volumes, by `/dev/<vg>/<lv>` and mapper path.
    """

    root_arg: str
    uuid_map: Mapping[str, str]
    new_uuids: frozenset[str]
    swap_uuids: tuple[str, ...]
    volume_groups: frozenset[str]
    lvm_devices: frozenset[str]


def mapper_path(device: str, volume_groups: frozenset[str]) -> Optional[str]:
    """`/dev/vg0/root` -> `/dev/mapper/vg0-root` (dashes in names doubled) for an LV."""
    parts = device.split("/")
    if len(parts) == 4 and parts[1] == "dev" and parts[2] in volume_groups:
        vg, lv = parts[2].replace("-", "--"), parts[3].replace("-", "--")
        return f"/dev/mapper/{vg}-{lv}"
    return None


def boot_identity(prepared: PreparedTarget) -> BootIdentity:
    """The target's side of the kernel command line."""
    groups = frozenset(prepared.volume_groups)
    root = prepared.by_mount_point("/")
    root_arg = ""
    if root is not None:
        root_arg = mapper_path(root.device, groups) or f"UUID={root.uuid}"
    lvm: set[str] = set()
    for volume in prepared.volumes:
        mapper = mapper_path(volume.device, groups)
        if mapper is not None:
            lvm.update({volume.device, mapper})
    return BootIdentity(
        root_arg=root_arg,
        uuid_map={v.source_uuid: v.uuid for v in prepared.volumes if v.source_uuid},
        new_uuids=frozenset(v.uuid for v in prepared.volumes),
        swap_uuids=tuple(v.uuid for v in prepared.volumes if v.is_swap),
        volume_groups=groups,
        lvm_devices=frozenset(lvm),
    )


def _resume_arg(value: str, ident: BootIdentity) -> Optional[str]:
    if value.startswith("UUID="):
        uuid = value[len("UUID=") :].strip("\"'")
        if uuid in ident.new_uuids:
            return value
        if uuid in ident.uuid_map:
            return f"UUID={ident.uuid_map[uuid]}"
    elif value in ident.lvm_devices:
        return value
    return f"UUID={ident.swap_uuids[0]}" if ident.swap_uuids else None


def _lvm_arg_kept(value: str, ident: BootIdentity) -> bool:
    return value.split("/", 1)[0] in ident.volume_groups


def _rewrite_word(word: str, ident: BootIdentity, keep_root: bool) -> Optional[str]:
    key, sep, value = word.partition("=")
    if not sep:
        return word
    if key == "root":
        if not keep_root or not ident.root_arg:
            return None
        return f"root={ident.root_arg}"
    if key == "resume":
        new = _resume_arg(value, ident)
        return None if new is None else f"resume={new}"
    if key in ("rd.lvm.lv", "rd.lvm.vg"):
        return word if _lvm_arg_kept(value, ident) else None
    return word


def rewrite_cmdline(cmdline: str, ident: BootIdentity, *, keep_root: bool) -> str:
    """A kernel command line for the target; unchanged text when nothing needs changing.

    Args:
        cmdline: the words (`$var` references are kept as they are).
        ident: the target's disks.
        keep_root: set `root=` to the target's root (else drop it: GRUB adds its own).
    """
    words = cmdline.split()
    new = [w for w in (_rewrite_word(word, ident, keep_root) for word in words) if w is not None]
    return cmdline if new == words else " ".join(new)


def _rewrite_assignment(line: str, ident: BootIdentity) -> str:
    match = _CMDLINE_VAR_RE.match(line)
    if match is None:
        return line
    raw = match.group(3)
    quote = raw[0] if raw[:1] in ("'", '"') else ""
    if quote and not (len(raw) >= 2 and raw.endswith(quote)):
        return line  # spans lines or carries a trailing comment: not ours to guess at
    inner = raw[1:-1] if quote else raw
    if not quote and any(c in inner for c in "\"'\\;"):
        return line
    new = rewrite_cmdline(inner, ident, keep_root=False)
    if new == inner:
        return line
    return f"{match.group(1)}{quote}{new}{quote}{match.group(4)}"


def rewrite_default_grub(text: str, ident: BootIdentity, *, main: bool) -> str:
    """`/etc/default/grub` (`main`) or a `/etc/default/grub.d/*.cfg` for the target.

    The command line loses stale `root=`/`resume=`/`rd.lvm.*`; `GRUB_DISABLE_OS_PROBER` is
    `true` (os-prober would put the helper's disks in the menu), added to the main file if it is
    set nowhere; `GRUB_FORCE_PARTUUID` (Ubuntu cloud images) names the source's partition and is
    commented out. Everything else stays.
    """
    out: list[str] = []
    has_prober = False
    for line in text.splitlines():
        if _OS_PROBER_RE.match(line):
            has_prober = True
            out.append(line if line.strip() == OS_PROBER_LINE else OS_PROBER_LINE)
        elif _FORCE_PARTUUID_RE.match(line):
            out.append(MARK_WAS + line)
        else:
            out.append(_rewrite_assignment(line, ident))
    if main and not has_prober:
        out += ["# smsagent: the helper's disks must not appear in the boot menu", OS_PROBER_LINE]
    return "\n".join(out) + "\n" if out else ""


def rewrite_bls_entry(text: str, ident: BootIdentity) -> str:
    """A BLS entry (`/boot/loader/entries/*.conf`): its `options` by the target's disks.

    `root=` is set only where the entry has one (RHEL 8 entries say `$kernelopts` instead).
    """
    out: list[str] = []
    for line in text.splitlines():
        match = _OPTIONS_RE.match(line)
        if match is None:
            out.append(line)
            continue
        new = rewrite_cmdline(match.group(2), ident, keep_root=True)
        out.append(line if new == match.group(2) else f"{match.group(1)}{new}{match.group(3)}")
    return "\n".join(out) + "\n" if out else ""


def rewrite_grubenv(text: str, ident: BootIdentity) -> str:
    """GRUB's environment block with `kernelopts` by the target's disks, still padded with
    `#` to its size (GRUB reads it as a fixed-size block); unchanged if it would not fit."""
    if not text.startswith(GRUBENV_HEADER):
        return text
    body = text[len(GRUBENV_HEADER) :]
    lines = body.rstrip("#").split("\n")
    changed = False
    for i, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if sep and key == "kernelopts":
            new = rewrite_cmdline(value, ident, keep_root=True)
            changed = changed or new != value
            lines[i] = f"{key}={new}"
    if not changed:
        return text
    content = GRUBENV_HEADER + "\n".join(lines)
    if len(content) > len(text):
        return text
    return content + "#" * (len(text) - len(content))


def rewrite_efi_stub(text: str, ident: BootIdentity, boot_uuid: str) -> str:
    """An ESP's stub `grub.cfg` (it finds the file system holding `grub2/` by UUID and loads
    the real config from there): the UUID of its `search` by the target's.

    Args:
        text: the stub.
        ident: the target's disks.
        boot_uuid: the new UUID of the file system holding `/boot` (`/boot`'s own or `/`'s),
            for a stub naming a UUID the target does not map.
    """
    out: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] != ["search"] or "--fs-uuid" not in words or len(words) < 3:
            out.append(line)
            continue
        uuid = words[-1]
        new = uuid if uuid in ident.new_uuids else ident.uuid_map.get(uuid, boot_uuid)
        out.append(
            line
            if new == uuid
            else line[: line.rindex(uuid)] + new + line[line.rindex(uuid) + len(uuid) :]
        )
    return "\n".join(out) + "\n" if out else ""


def is_efi_stub(text: str) -> bool:
    """Whether an ESP's `grub.cfg` only hands over to the real one (RHEL 9, Fedora)."""
    return "configfile" in text and "menuentry" not in text and "blscfg" not in text


def grub_value(text: str, name: str) -> Optional[str]:
    """The last value `text` (a shell-style settings file) gives `name`, unquoted."""
    value: Optional[str] = None
    pattern = re.compile(rf"^\s*(?:export\s+)?{re.escape(name)}=(.*)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        try:
            words = shlex.split(match.group(1), comments=True)
        except ValueError:
            continue
        value = " ".join(words)
    return value
