"""NIC configuration for new hardware: DHCP everywhere, no pins to the source's MACs or names.

The rewrites are pure (text in, text out) and comment out what they drop with `# smsagent: was:`
(the backup holds the whole original too), so a second run finds nothing left to change:
- ifupdown (`/etc/network/interfaces`, `interfaces.d/*`): `inet static` -> `inet dhcp`,
  `inet6 static` -> `inet6 auto`, their addresses and gateway dropped; `hwaddress` pins dropped;
  `lo` untouched.
- RHEL ifcfg: `BOOTPROTO=dhcp`, addresses, prefixes and gateways dropped; `HWADDR` dropped.
  `UUID` stays: it names the connection, not the hardware, and bond ports refer to it.
- NetworkManager keyfiles: `method=manual` -> `method=auto` with its addresses, gateway and
  routes dropped; an Ethernet profile's `interface-name` and `mac-address` dropped.
- netplan: the source's YAML files are moved aside and one file gives DHCP to every Ethernet
  NIC (parsing YAML is not needed to write this, and no NIC name survives new hardware).
The udev rules that pin NIC names to the source's MACs are moved aside.
"""

from __future__ import annotations

import re
from typing import Final

from smsagent.target.configure_files import edit_files, move_aside, write_if_changed
from smsagent.target.configure_report import Action, ConfigureReport
from smsagent.target.tree import TargetTree

MARK_WAS: Final = "# smsagent: was: "
UDEV_NET_RULES: Final = (
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/udev/rules.d/75-persistent-net-generator.rules",
)
NETPLAN_FILE: Final = "/etc/netplan/50-smsagent.yaml"
_NETPLAN_HEADER: Final = "# Written by smsagent for the migrated server"

_IFACE_RE: Final = re.compile(r"^(\s*iface\s+(\S+)\s+(inet6?)\s+)(\S+)(.*)$")
_STANZA_RE: Final = re.compile(
    r"^\s*(iface|auto|allow-\S+|mapping|source|source-directory|rename|no-auto-down|no-scripts)\b"
)
_STATIC_OPTIONS: Final = frozenset(
    {"address", "netmask", "gateway", "broadcast", "network", "pointopoint", "scope", "metric"}
)
_IFCFG_DROP_RE: Final = re.compile(
    r"^(IPADDR\d*|NETMASK\d*|PREFIX\d*|GATEWAY\d*|NETWORK|BROADCAST|IPV6ADDR|"
    r"IPV6ADDR_SECONDARIES|IPV6_DEFAULTGW)$"
)
_IFCFG_LINE_RE: Final = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_PORT_KEYS: Final = frozenset({"MASTER", "MASTER_UUID", "BRIDGE", "TEAM_MASTER"})
_NM_ADDRESS_RE: Final = re.compile(r"^(address\d*|addresses|gateway|route\d+(_options)?)$")


def _comment(line: str) -> str:
    return MARK_WAS + line.strip()


def rewrite_interfaces(text: str) -> str:
    """ifupdown's interfaces file with DHCP for every static interface but `lo`."""
    out: list[str] = []
    dropping = False  # inside a stanza made dynamic: its static options go
    inside = False  # inside an iface stanza other than lo's
    for line in text.splitlines():
        iface = _IFACE_RE.match(line)
        if iface is not None:
            inside = iface.group(2) != "lo"
            dropping = inside and iface.group(4) == "static"
            if dropping:
                method = "dhcp" if iface.group(3) == "inet" else "auto"
                line = f"{iface.group(1)}{method}{iface.group(5)}"
            out.append(line)
            continue
        if _STANZA_RE.match(line):
            inside = dropping = False
            out.append(line)
            continue
        words = line.split()
        option = words[0] if words and not words[0].startswith("#") else ""
        if inside and (option == "hwaddress" or (dropping and option in _STATIC_OPTIONS)):
            out.append(_comment(line))
        else:
            out.append(line)
    return "\n".join(out) + "\n" if out else ""


def _ifcfg_values(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _IFCFG_LINE_RE.match(line)
        if match is not None:
            values[match.group(2)] = match.group(3).strip().strip("\"'")
    return values


def rewrite_ifcfg(text: str) -> str:
    """A RHEL `ifcfg-*` file with DHCP and no MAC pin (a bond or bridge port: no MAC pin only)."""
    values = _ifcfg_values(text)
    if values.get("DEVICE") == "lo" or values.get("NAME") == "lo":
        return text
    is_port = values.get("SLAVE", "").lower() == "yes" or bool(_PORT_KEYS & values.keys())
    out: list[str] = []
    has_bootproto = False
    for line in text.splitlines():
        match = _IFCFG_LINE_RE.match(line)
        key = match.group(2) if match is not None else ""
        if key == "HWADDR" or (not is_port and _IFCFG_DROP_RE.match(key)):
            out.append(_comment(line))
        elif key == "BOOTPROTO" and not is_port and match is not None:
            has_bootproto = True
            value = match.group(3).strip()
            if value.strip("\"'").lower() in ("dhcp", "bootp"):
                out.append(line)
            else:
                quote = value[0] if value[:1] in ("'", '"') else ""
                out.append(f"{match.group(1)}BOOTPROTO={quote}dhcp{quote}")
        else:
            out.append(line)
    if not is_port and not has_bootproto:
        out.append("BOOTPROTO=dhcp")
    return "\n".join(out) + "\n" if out else ""


def _nm_sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
            sections.setdefault(current, {})
        elif "=" in stripped and not stripped.startswith(("#", ";")):
            key, _, value = stripped.partition("=")
            sections.setdefault(current, {})[key.strip()] = value.strip()
    return sections


def _nm_line(line: str, section: str, manual: set[str], unpin: bool) -> str:
    """One keyfile line, switched to DHCP or commented out."""
    stripped = line.strip()
    if "=" not in stripped or stripped.startswith(("#", ";")):
        return line
    key = stripped.partition("=")[0].strip()
    if section in manual:
        if key == "method":
            return line.replace("manual", "auto", 1)
        if _NM_ADDRESS_RE.match(key):
            return _comment(line)
    if unpin and (
        (section == "connection" and key == "interface-name")
        or (section in ("ethernet", "802-3-ethernet") and key == "mac-address")
    ):
        return _comment(line)
    return line


def rewrite_nmconnection(text: str) -> str:
    """A NetworkManager keyfile with DHCP (`method=auto`) and, for an Ethernet profile that is
    not a bond or bridge port, no pin to an interface name or MAC."""
    sections = _nm_sections(text)
    connection = sections.get("connection", {})
    is_port = "master" in connection or "controller" in connection
    unpin = connection.get("type") in ("ethernet", "802-3-ethernet") and not is_port
    manual = {
        name
        for name in ("ipv4", "ipv6")
        if sections.get(name, {}).get("method") == "manual" and not is_port
    }
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            out.append(line)
        else:
            out.append(_nm_line(line, section, manual, unpin))
    return "\n".join(out) + "\n" if out else ""


def netplan_dhcp(*, network_manager: bool) -> str:
    """The netplan file that replaces the source's: DHCP on every Ethernet NIC."""
    lines = [
        _NETPLAN_HEADER + ": DHCP on every Ethernet NIC.",
        "# The source's files are kept beside as <name>.smsagent.bak.",
        "network:",
        "  version: 2",
    ]
    if network_manager:
        lines.append("  renderer: NetworkManager")
    lines += [
        "  ethernets:",
        "    smsagent-nics:",
        "      match:",
        '        name: "e*"',
        "      dhcp4: true",
    ]
    return "\n".join(lines) + "\n"


async def _move_udev_rules(tree: TargetTree, report: ConfigureReport) -> None:
    for path in UDEV_NET_RULES:
        await move_aside(tree, report, path, "pins NIC names to the source's MACs")


async def _ifupdown(tree: TargetTree, report: ConfigureReport) -> None:
    paths = ["/etc/network/interfaces", *await tree.glob("/etc/network/interfaces.d/*")]
    await edit_files(tree, report, {p: rewrite_interfaces for p in paths}, "DHCP, no MAC pins")


async def _ifcfg(tree: TargetTree, report: ConfigureReport) -> None:
    paths = [
        p
        for p in await tree.glob("/etc/sysconfig/network-scripts/ifcfg-*")
        if not p.endswith(("/ifcfg-lo", ".bak", "~", ".orig", ".rpmsave", ".rpmnew"))
    ]
    await edit_files(tree, report, {p: rewrite_ifcfg for p in paths}, "DHCP, no MAC pins")


async def _network_manager(tree: TargetTree, report: ConfigureReport) -> None:
    paths = await tree.glob("/etc/NetworkManager/system-connections/*")
    await edit_files(
        tree, report, {p: rewrite_nmconnection for p in paths}, "DHCP, no NIC name or MAC pins"
    )


async def _netplan(tree: TargetTree, report: ConfigureReport) -> None:
    sources = [p for p in await tree.glob("/etc/netplan/*.yaml") if p != NETPLAN_FILE]
    ours = (await tree.read_files([NETPLAN_FILE]))[NETPLAN_FILE]
    if not sources and ours is None:
        return
    contents = await tree.read_files(sources)
    texts = [data.decode("utf-8", "replace") for data in contents.values() if data is not None]
    uses_nm = any(re.search(r"^\s*renderer:\s*NetworkManager", t, re.M) for t in texts)
    complex_setup = any(re.search(r"^\s*(bonds|bridges|vlans|wifis):", t, re.M) for t in texts)
    for path in sources:
        await move_aside(tree, report, path, "replaced by " + NETPLAN_FILE)
    if ours is not None and not sources:
        report.add(NETPLAN_FILE, Action.UNCHANGED, "DHCP on every Ethernet NIC")
        return
    detail = "DHCP on every Ethernet NIC"
    if complex_setup:
        detail += "; the source's bonds, bridges, VLANs or Wi-Fi were not carried over"
    # netplan warns about (and newer versions refuse) files others can read.
    text = netplan_dhcp(network_manager=uses_nm)
    await write_if_changed(tree, report, NETPLAN_FILE, ours, text, detail, mode=0o600)


async def configure_network(tree: TargetTree, report: ConfigureReport) -> None:
    """Every NIC configuration of the tree switched to DHCP without hardware pins."""
    await _move_udev_rules(tree, report)
    await _ifupdown(tree, report)
    await _netplan(tree, report)
    await _network_manager(tree, report)
    await _ifcfg(tree, report)
