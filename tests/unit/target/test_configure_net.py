"""The NIC configuration rewrites (pure): DHCP, no MAC or name pins, idempotent."""

from __future__ import annotations

import yaml

from smsagent.target.configure_net import (
    netplan_dhcp,
    rewrite_ifcfg,
    rewrite_interfaces,
    rewrite_nmconnection,
)
from tests.support.configure_trees import DEBIAN_INTERFACES, RHEL_IFCFG, RHEL_NMCONNECTION


class TestInterfaces:
    def test_static_to_dhcp(self) -> None:
        """`inet static` becomes dhcp, its address lines and MAC pin are commented out."""
        assert rewrite_interfaces(DEBIAN_INTERFACES) == (
            "# This file describes the network interfaces available on your system\n"
            "source /etc/network/interfaces.d/*\n"
            "\n"
            "# The loopback network interface\n"
            "auto lo\n"
            "iface lo inet loopback\n"
            "\n"
            "# The primary network interface\n"
            "allow-hotplug ens192\n"
            "iface ens192 inet dhcp\n"
            "# smsagent: was: address 192.168.10.20/24\n"
            "# smsagent: was: gateway 192.168.10.1\n"
            "# smsagent: was: hwaddress ether 00:50:56:aa:bb:cc\n"
            "\tdns-nameservers 192.168.10.1\n"
        )

    def test_idempotent(self) -> None:
        """A second rewrite changes nothing."""
        once = rewrite_interfaces(DEBIAN_INTERFACES)
        assert rewrite_interfaces(once) == once

    def test_inet6_static_and_following_stanza(self) -> None:
        """inet6 static becomes auto; the next stanza's options are its own."""
        text = (
            "iface eth0 inet6 static\n  address 2001:db8::5/64\n  gateway 2001:db8::1\n"
            "iface eth1 inet manual\n  mtu 9000\n"
            "iface lo inet static\n  address 127.0.0.2\n"
        )
        assert rewrite_interfaces(text) == (
            "iface eth0 inet6 auto\n"
            "# smsagent: was: address 2001:db8::5/64\n"
            "# smsagent: was: gateway 2001:db8::1\n"
            "iface eth1 inet manual\n  mtu 9000\n"
            "iface lo inet static\n  address 127.0.0.2\n"
        )


class TestIfcfg:
    def test_static_to_dhcp(self) -> None:
        """BOOTPROTO=dhcp (quoting kept), addresses and HWADDR commented, UUID kept."""
        assert rewrite_ifcfg(RHEL_IFCFG) == (
            "TYPE=Ethernet\n"
            "PROXY_METHOD=none\n"
            'BOOTPROTO="dhcp"\n'
            "DEFROUTE=yes\n"
            "NAME=eth0\n"
            "UUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\n"
            "DEVICE=eth0\n"
            "ONBOOT=yes\n"
            "# smsagent: was: IPADDR=10.20.0.15\n"
            "# smsagent: was: PREFIX=24\n"
            "# smsagent: was: GATEWAY=10.20.0.1\n"
            "DNS1=10.20.0.2\n"
            "# smsagent: was: HWADDR=52:54:00:12:34:56\n"
        )

    def test_idempotent_and_missing_bootproto(self) -> None:
        """Without BOOTPROTO (static by default) one is added; a second run adds nothing."""
        once = rewrite_ifcfg("DEVICE=eth1\nIPADDR0=10.0.0.9\nNETMASK0=255.0.0.0\n")
        assert once == (
            "DEVICE=eth1\n# smsagent: was: IPADDR0=10.0.0.9\n"
            "# smsagent: was: NETMASK0=255.0.0.0\nBOOTPROTO=dhcp\n"
        )
        assert rewrite_ifcfg(once) == once
        assert rewrite_ifcfg(rewrite_ifcfg(RHEL_IFCFG)) == rewrite_ifcfg(RHEL_IFCFG)

    def test_bond_port_loses_only_its_mac(self) -> None:
        """A bond port keeps its role; only its HWADDR pin goes."""
        text = "DEVICE=eth2\nMASTER=bond0\nSLAVE=yes\nBOOTPROTO=none\nHWADDR=52:54:00:00:00:02\n"
        assert rewrite_ifcfg(text) == text.replace("HWADDR=", "# smsagent: was: HWADDR=")

    def test_loopback_untouched(self) -> None:
        """ifcfg-lo is never changed."""
        text = "DEVICE=lo\nIPADDR=127.0.0.1\nNETMASK=255.0.0.0\n"
        assert rewrite_ifcfg(text) == text


class TestNmConnection:
    def test_manual_to_auto(self) -> None:
        """method=auto, addresses commented, interface-name and mac-address pins commented."""
        out = rewrite_nmconnection(RHEL_NMCONNECTION)
        assert out == (
            "[connection]\nid=ens3\nuuid=0d8bbd32-8c1d-4b0a-9d56-9a2fa6b7a2c1\ntype=ethernet\n"
            "# smsagent: was: interface-name=ens3\n\n"
            "[ethernet]\n# smsagent: was: mac-address=52:54:00:AB:CD:EF\n\n"
            "[ipv4]\n# smsagent: was: address1=10.30.0.7/24,10.30.0.1\ndns=10.30.0.2;\n"
            "method=auto\n\n"
            "[ipv6]\naddr-gen-mode=eui64\nmethod=auto\n\n[proxy]\n"
        )
        assert rewrite_nmconnection(out) == out

    def test_bond_port_untouched(self) -> None:
        """A port of a bond keeps its interface name (that is how the bond finds it)."""
        text = "[connection]\ntype=ethernet\ninterface-name=eth2\ncontroller=bond0\n"
        assert rewrite_nmconnection(text) == text

    def test_bond_with_manual_ipv6(self) -> None:
        """A bond's own static IPv6 becomes auto; a bond has no MAC pin to drop."""
        text = (
            "[connection]\ntype=bond\ninterface-name=bond0\n"
            "[ipv6]\nmethod=manual\naddress1=fd00::5/64\ngateway=fd00::1\n"
        )
        assert rewrite_nmconnection(text) == (
            "[connection]\ntype=bond\ninterface-name=bond0\n[ipv6]\nmethod=auto\n"
            "# smsagent: was: address1=fd00::5/64\n# smsagent: was: gateway=fd00::1\n"
        )


class TestNetplan:
    def test_valid_yaml_dhcp_for_every_nic(self) -> None:
        """The netplan file parses as YAML and gives DHCP to every Ethernet NIC."""
        data = yaml.safe_load(netplan_dhcp(network_manager=False))
        assert data == {
            "network": {
                "version": 2,
                "ethernets": {"smsagent-nics": {"match": {"name": "e*"}, "dhcp4": True}},
            }
        }

    def test_network_manager_renderer_kept(self) -> None:
        """A desktop rendered by NetworkManager stays so."""
        data = yaml.safe_load(netplan_dhcp(network_manager=True))
        assert data["network"]["renderer"] == "NetworkManager"
