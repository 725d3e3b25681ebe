"""Parse the JSON reports of `vgs` and `lvs` into volume groups and logical volumes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Optional

_REPORT_OPTIONS: Final = ("--reportformat", "json", "--units", "b", "--nosuffix", "--options")
VGS_ARGV: Final = (
    "vgs",
    *_REPORT_OPTIONS,
    "vg_name,vg_uuid,vg_size,vg_free,pv_name,pv_size,pv_free",
)
LVS_ARGV: Final = (
    "lvs",
    *_REPORT_OPTIONS,
    "vg_name,lv_name,lv_uuid,lv_size,lv_path,lv_dm_path,lv_kernel_major,lv_kernel_minor,lv_attr",
)


class LvmFormatError(ValueError):
    """An LVM report is not the JSON document we asked for."""


@dataclass(frozen=True)
class PhysicalVolumeReport:
    name: str
    size_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class VolumeGroupReport:
    name: str
    uuid: str
    size_bytes: int
    free_bytes: int
    physical_volumes: tuple[PhysicalVolumeReport, ...]


@dataclass(frozen=True)
class LogicalVolumeReport:
    """One LV; `major_minor` is None while the LV is not active (no device to mount or probe)."""

    vg_name: str
    name: str
    uuid: str
    size_bytes: int
    path: str
    dm_path: str
    major_minor: Optional[str]
    attr: str


def parse_vgs(text: str) -> list[VolumeGroupReport]:
    """Group the one-row-per-PV `vgs` report by volume group, in report order.

    Raises:
        LvmFormatError: the text is not an LVM JSON report.
    """
    groups: dict[str, VolumeGroupReport] = {}
    for row in _rows(text, "vg"):
        name = _text(row, "vg_name")
        known = groups.get(name)
        pvs = known.physical_volumes if known else ()
        pv_name = _text(row, "pv_name")
        if pv_name:
            pvs += (PhysicalVolumeReport(pv_name, _int(row, "pv_size"), _int(row, "pv_free")),)
        groups[name] = VolumeGroupReport(
            name=name,
            uuid=_text(row, "vg_uuid"),
            size_bytes=_int(row, "vg_size"),
            free_bytes=_int(row, "vg_free"),
            physical_volumes=pvs,
        )
    return list(groups.values())


def parse_lvs(text: str) -> list[LogicalVolumeReport]:
    """The visible logical volumes of every volume group.

    Raises:
        LvmFormatError: the text is not an LVM JSON report.
    """
    volumes = []
    for row in _rows(text, "lv"):
        major, minor = _int(row, "lv_kernel_major", -1), _int(row, "lv_kernel_minor", -1)
        volumes.append(
            LogicalVolumeReport(
                vg_name=_text(row, "vg_name"),
                name=_text(row, "lv_name"),
                uuid=_text(row, "lv_uuid"),
                size_bytes=_int(row, "lv_size"),
                path=_text(row, "lv_path"),
                dm_path=_text(row, "lv_dm_path"),
                major_minor=f"{major}:{minor}" if major >= 0 and minor >= 0 else None,
                attr=_text(row, "lv_attr"),
            )
        )
    return volumes


def _rows(text: str, kind: str) -> Iterator[Mapping[str, Any]]:
    try:
        reports = json.loads(text)["report"]
        for report in reports:
            yield from (row for row in report.get(kind, []) if isinstance(row, dict))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        msg = f"LVM {kind} report is not JSON with a 'report' list: {exc}"
        raise LvmFormatError(msg) from exc


def _text(row: Mapping[str, Any], key: str) -> str:
    return str(row.get(key) or "").strip()


def _int(row: Mapping[str, Any], key: str, default: int = 0) -> int:
    try:
        return int(str(row.get(key)).strip())
    except ValueError:
        return default
