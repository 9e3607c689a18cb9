"""NIC plan: secondary NICs come up and get DHCP; the primary is never touched."""

from __future__ import annotations

import pytest

from guestagent.domain import nics
from guestagent.domain.config import Config, Daemons, NetworkInterfaces
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface
from guestagent.domain.nics import Link, RunDhcp, SetLinkUp

MAC0, MAC1, MAC2 = "42:01:0a:80:00:02", "42:01:0a:81:00:03", "42:01:0a:82:00:04"


def metadata(*macs: str) -> InstanceMetadata:
    return InstanceMetadata("gce", "1", network_interfaces=tuple(NetworkInterface(mac=m) for m in macs))


def plan(md: InstanceMetadata, links: list[Link], dhcp: str = "") -> nics.NicsPlan:
    return nics.plan(md, links, NetworkInterfaces(dhcp_command=dhcp))


def test_primary_nic_is_never_touched_even_when_down_and_unaddressed() -> None:
    assert plan(metadata(MAC0), [Link(2, "eth0", MAC0, up=False)], dhcp="dhclient").actions == ()


def test_down_secondary_nic_is_brought_up_and_given_dhcp() -> None:
    links = [Link(2, "eth0", MAC0, True, ("10.0.0.2",)), Link(3, "eth1", MAC1, False)]
    assert plan(metadata(MAC0, MAC1), links, dhcp="dhclient -v").actions == (
        SetLinkUp("eth1", MAC1),
        RunDhcp("eth1", ("dhclient", "-v", "eth1")),
    )


def test_secondary_nic_that_is_up_with_an_address_needs_nothing() -> None:
    links = [Link(2, "eth0", MAC0, True), Link(3, "ens5", MAC1, True, ("10.1.0.3",))]
    assert plan(metadata(MAC0, MAC1), links, dhcp="dhclient").actions == ()


def test_without_dhcp_command_only_the_link_comes_up() -> None:
    links = [Link(2, "eth0", MAC0, True), Link(3, "eth1", MAC1, False)]
    assert plan(metadata(MAC0, MAC1), links).actions == (SetLinkUp("eth1", MAC1),)


def test_missing_secondary_nic_is_a_note_and_others_still_come_up() -> None:
    links = [Link(2, "eth0", MAC0, True), Link(4, "eth2", MAC2, False)]
    planned = plan(metadata(MAC0, MAC1, MAC2), links)
    assert planned.actions == (SetLinkUp("eth2", MAC2),)
    assert planned.notes == (f"no interface with MAC {MAC1} yet",)


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("dhclient", ("dhclient", "eth1")),
        ("/sbin/dhclient -1 -pf /run/dhclient.{interface}.pid {interface}",
         ("/sbin/dhclient", "-1", "-pf", "/run/dhclient.eth1.pid", "eth1")),
        ("networkctl reconfigure", ("networkctl", "reconfigure", "eth1")),
        ("'/opt/my dhcp' --if", ("/opt/my dhcp", "--if", "eth1")),
        ("", ()),
        ("   ", ()),
    ],
)
def test_dhcp_command_substitution(command: str, argv: tuple[str, ...]) -> None:
    assert nics.dhcp_argv(command, "eth1") == argv


def test_interface_names_never_become_shell_syntax() -> None:
    assert nics.dhcp_argv("dhclient", "eth1;reboot") == ("dhclient", "eth1;reboot")


@pytest.mark.parametrize(
    "config",
    [Config(Daemons=Daemons(network_daemon=False)), Config(NetworkInterfaces=NetworkInterfaces(setup=False))],
)
def test_switches_disable_nic_setup(config: Config) -> None:
    assert nics.nics_enabled(config) is False
    assert nics.nics_enabled(Config()) is True
