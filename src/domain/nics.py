"""Network interfaces: bring up the secondary NICs metadata lists, DHCP them if asked.

The primary NIC (the first one metadata lists) belongs to the image's own
network configuration (ifupdown, netplan, NetworkManager): it carried the
metadata request this plan is based on, and touching it could cut the agent
off. Secondary NICs hot-added to a VM usually come up unconfigured; the agent
sets their link up and, when `[NetworkInterfaces] dhcp_command` is set, runs
it once for each secondary NIC that has no IPv4 address yet.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import attrs

from guestagent.domain.config import Config
from guestagent.domain.config import NetworkInterfaces as NicsConfig
from guestagent.domain.metadata import InstanceMetadata

INTERFACE_PLACEHOLDER = "{interface}"


@attrs.frozen
class Link:
    """One network interface as the kernel reports it."""

    index: int
    name: str
    mac: str  # lower-case colon form, comparable with NetworkInterface.mac
    up: bool  # administratively up (IFF_UP), whatever the carrier
    ipv4: tuple[str, ...] = ()


@attrs.frozen
class SetLinkUp:
    interface: str
    mac: str

    def describe(self) -> str:
        return f"set link {self.interface} ({self.mac}) up"


@attrs.frozen
class RunDhcp:
    interface: str
    argv: tuple[str, ...]

    def describe(self) -> str:
        return f"run DHCP on {self.interface}: {shlex.join(self.argv)}"


Action = SetLinkUp | RunDhcp


@attrs.frozen
class NicsPlan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # MACs with no interface in the guest (yet)


def nics_enabled(config: Config) -> bool:
    return config.Daemons.network_daemon and config.NetworkInterfaces.setup


def dhcp_argv(command: str, interface: str) -> tuple[str, ...]:
    """The configured command as argv: `{interface}` replaced, else the name appended.

    Split like a shell would split words, but never run through one, so an
    interface name can never become shell syntax. Empty command: no DHCP.
    """
    words = shlex.split(command)
    if not words:
        return ()
    if any(INTERFACE_PLACEHOLDER in word for word in words):
        return tuple(word.replace(INTERFACE_PLACEHOLDER, interface) for word in words)
    return (*words, interface)


def plan(metadata: InstanceMetadata, links: Sequence[Link], config: NicsConfig) -> NicsPlan:
    by_mac = {link.mac: link for link in links}
    actions: list[Action] = []
    notes: list[str] = []
    missing: list[str] = []
    for nic in metadata.network_interfaces[1:]:
        if nic.static:
            continue  # the network subsystem configures it: DHCP would fight it
        link = by_mac.get(nic.mac)
        if link is None:
            missing.append(nic.mac)
            notes.append(f"no interface with MAC {nic.mac} yet")
            continue
        if not link.up:
            actions.append(SetLinkUp(link.name, link.mac))
        if not link.ipv4:
            argv = dhcp_argv(config.dhcp_command, link.name)
            if argv:
                actions.append(RunDhcp(link.name, argv))
    return NicsPlan(tuple(actions), tuple(notes), tuple(missing))
