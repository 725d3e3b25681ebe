"""Which OS the migrated tree holds, and which kernels it can boot (never the helper's own)."""

from __future__ import annotations

import enum
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Final, Optional

from smsagent.target.configure_files import decode
from smsagent.target.configure_report import CONFIGURE_FAILED, ConfigureError
from smsagent.target.tree import TargetTree


class OsFamily(str, enum.Enum):
    DEBIAN = "debian"
    RHEL = "rhel"
    SUSE = "suse"


_DEBIAN_IDS: Final = frozenset({"debian", "ubuntu"})
_RHEL_IDS: Final = frozenset(
    {"rhel", "centos", "rocky", "almalinux", "ol", "fedora", "euleros", "openeuler", "hce"}
)
_SUSE_IDS: Final = frozenset({"sles", "sled", "opensuse", "opensuse-leap", "suse"})
# The directory under the ESP's EFI/ a distribution's GRUB uses when none is found there.
_EFI_IDS: Final = {"rhel": "redhat", "ol": "redhat", "opensuse-leap": "opensuse"}
_VERSION_PART_RE: Final = re.compile(r"\d+|[^\d]+")


@dataclass(frozen=True)
class OsInfo:
    """The migrated OS.

    Attributes:
        family: how it is configured (Debian/Ubuntu tools or RHEL-family tools).
        id: os-release's `ID` (`debian`, `rocky`).
        version_id: os-release's `VERSION_ID`.
        like: os-release's `ID_LIKE` words.
        kernels: the kernel versions with modules and an image in the tree, oldest first.
    """

    family: OsFamily
    id: str
    version_id: str
    like: tuple[str, ...]
    kernels: tuple[str, ...]

    @property
    def efi_id(self) -> str:
        """The distribution's directory name under `EFI/` (GRUB's `--bootloader-id`)."""
        return _EFI_IDS.get(self.id, self.id)


def parse_os_release(text: str) -> dict[str, str]:
    """os-release's `KEY=value` lines (shell quoting undone); other lines are skipped."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or not key.isidentifier():
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        fields[key] = " ".join(words)
    return fields


def os_family(os_id: str, like: tuple[str, ...]) -> Optional[OsFamily]:
    """The family of an os-release `ID` and `ID_LIKE`; None when it is none of ours."""
    for family, ids in (
        (OsFamily.DEBIAN, _DEBIAN_IDS),
        (OsFamily.RHEL, _RHEL_IDS),
        (OsFamily.SUSE, _SUSE_IDS),
    ):
        if os_id in ids:
            return family
    for family, words in (
        (OsFamily.DEBIAN, _DEBIAN_IDS),
        (OsFamily.RHEL, {"rhel", "fedora", "centos"}),
        (OsFamily.SUSE, {"suse", "sles", "opensuse"}),
    ):
        if any(word in words for word in like):
            return family
    return None


def kernel_sort_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Order kernel versions as numbers where they are numbers (`5.10.0-9` < `5.10.0-10`)."""
    return tuple(
        (1, int(part), "") if part.isdigit() else (0, 0, part)
        for part in _VERSION_PART_RE.findall(version)
    )


async def find_kernels(tree: TargetTree) -> tuple[str, ...]:
    """Versions with both `/lib/modules/<v>` and `/boot/vmlinuz-<v>` in the tree, oldest first."""
    modules = {posixpath.basename(p) for p in await tree.glob("/lib/modules/*")}
    images = {posixpath.basename(p)[len("vmlinuz-") :] for p in await tree.glob("/boot/vmlinuz-*")}
    return tuple(sorted(modules & images, key=kernel_sort_key))


async def detect_os(tree: TargetTree) -> OsInfo:
    """The OS in the tree, from its `/etc/os-release` (or `/usr/lib/os-release`).

    Raises:
        ConfigureError: no os-release, an OS of no supported family, or no bootable kernel.
    """
    files = await tree.read_files(["/etc/os-release", "/usr/lib/os-release"])
    data = files["/etc/os-release"] or files["/usr/lib/os-release"]
    if data is None:
        raise ConfigureError(
            CONFIGURE_FAILED, "the migrated tree has no /etc/os-release: its OS is unknown"
        )
    fields = parse_os_release(decode(data))
    os_id = fields.get("ID", "").lower()
    like = tuple(fields.get("ID_LIKE", "").lower().split())
    family = os_family(os_id, like)
    name = fields.get("PRETTY_NAME") or os_id or "an unnamed OS"
    if family is None or family is OsFamily.SUSE:
        raise ConfigureError(
            CONFIGURE_FAILED,
            f"the migrated tree holds {name} (ID={os_id!r}): only Debian/Ubuntu and "
            "RHEL-family systems can be configured",
        )
    kernels = await find_kernels(tree)
    if not kernels:
        raise ConfigureError(
            CONFIGURE_FAILED,
            f"the migrated tree ({name}) has no kernel: no /lib/modules/<version> with a "
            "matching /boot/vmlinuz-<version>",
        )
    return OsInfo(family, os_id, fields.get("VERSION_ID", ""), like, kernels)
