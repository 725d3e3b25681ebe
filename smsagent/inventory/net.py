"""Parse `ip -json addr` and `ip -json route` into the NICs SMS wants, default-route NIC first."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Optional

ADDR_ARGV: Final = ("ip", "-json", "address", "show")
ROUTE4_ARGV: Final = ("ip", "-4", "-json", "route", "show", "default")
ROUTE6_ARGV: Final = ("ip", "-6", "-json", "route", "show", "default")


class IpFormatError(ValueError):
    """`ip -json` printed something that is not its JSON array."""


@dataclass(frozen=True)
class Nic:
    """One interface as SMS describes it (`NetWork`)."""

    name: str
    ip: Optional[str]
    netmask: Optional[str]
    ipv6: Optional[str]
    gateway: Optional[str]
    mtu: Optional[int]
    mac: Optional[str]


@dataclass(frozen=True)
class DefaultRoute:
    device: str
    gateway: Optional[str]


def parse_routes(text: str) -> list[DefaultRoute]:
    """Default routes in kernel order (the first one wins, as in `ip route get`).

    Raises:
        IpFormatError: the text is not `ip -json route` output.
    """
    return [
        DefaultRoute(str(route["dev"]), _optional_text(route.get("gateway")))
        for route in _objects(text)
        if route.get("dev")
    ]


def parse_nics(
    addr_text: str, routes4: Sequence[DefaultRoute], routes6: Sequence[DefaultRoute]
) -> list[Nic]:
    """Interfaces with an address, loopback excluded; the one the default route uses first.

    Raises:
        IpFormatError: the text is not `ip -json address` output.
    """
    nics = [
        _nic(link, routes4, routes6)
        for link in _objects(addr_text)
        if link.get("link_type") != "loopback" and _addresses(link, "inet", "inet6")
    ]
    preferred = [route.device for route in (*routes4, *routes6)]
    rank = {name: preferred.index(name) for name in reversed(preferred)}
    return sorted(nics, key=lambda nic: rank.get(nic.name, len(preferred)))


def _nic(
    link: Mapping[str, Any], routes4: Sequence[DefaultRoute], routes6: Sequence[DefaultRoute]
) -> Nic:
    name = str(link.get("ifname", ""))
    ipv4 = next(iter(_addresses(link, "inet")), None)
    ipv6 = next(iter(_addresses(link, "inet6")), None)
    gateway = next((r.gateway for r in (*routes4, *routes6) if r.device == name), None)
    mtu = link.get("mtu")
    return Nic(
        name=name,
        ip=ipv4[0] if ipv4 else None,
        netmask=str(ipaddress.IPv4Network(f"0.0.0.0/{ipv4[1]}").netmask) if ipv4 else None,
        ipv6=ipv6[0] if ipv6 else None,
        gateway=gateway,
        mtu=mtu if isinstance(mtu, int) else None,
        mac=_optional_text(link.get("address")),
    )


def _addresses(link: Mapping[str, Any], *families: str) -> list[tuple[str, int]]:
    # Link-local and host-scoped addresses cannot reach SMS; only global ones describe the server.
    found = []
    for info in link.get("addr_info") or []:
        if not isinstance(info, dict) or info.get("family") not in families:
            continue
        if info.get("scope", "global") != "global" or not info.get("local"):
            continue
        found.append((str(info["local"]), int(info.get("prefixlen", 0))))
    return found


def _objects(text: str) -> Iterator[Mapping[str, Any]]:
    try:
        document = json.loads(text) if text.strip() else []
    except ValueError as exc:
        msg = f"ip -json output is not JSON: {exc}"
        raise IpFormatError(msg) from exc
    if not isinstance(document, list):
        msg = "ip -json output is not a JSON array"
        raise IpFormatError(msg)
    return (item for item in document if isinstance(item, dict))


def _optional_text(value: Any) -> Optional[str]:
    return str(value) if value else None
