"""Route computation: what metadata wants against what the kernel has."""

from __future__ import annotations

import ipaddress

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.domain import routes
from guestagent.domain.config import Config, Daemons, IpForwarding, NetworkInterfaces
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface
from guestagent.domain.nics import Link
from guestagent.domain.platforms.gce import GceNic
from guestagent.domain.routes import AddRoute, LocalRoute, RemoveRoute
from tests.fake_netlink import FakeNetlink
from tests.gce_metadata import gce_md

MAC0 = "42:01:0a:80:00:02"
MAC1 = "42:01:0a:81:00:03"
LINKS = [Link(2, "eth0", MAC0, True, ("10.128.0.2",)), Link(3, "eth1", MAC1, True)]
PROTO = 66


def nic(mac: str = MAC0, **fields: tuple[str, ...]) -> GceNic:
    return GceNic(mac=mac, **fields)  # type: ignore[arg-type]


def metadata(*nics: GceNic) -> InstanceMetadata:
    neutral = [NetworkInterface(mac=n.mac, ip="10.128.0.2") for n in nics]
    return gce_md("1", network_interfaces=neutral, nics=nics)


def ours(dst: str, dev: str = "eth0") -> LocalRoute:
    return LocalRoute(dst, dev, PROTO)


def plan_for(md: InstanceMetadata, current: list[LocalRoute], config: Config | None = None) -> routes.RoutesPlan:
    want = routes.desired(md, config or Config())
    return routes.plan(want, LINKS, current, PROTO)


def test_every_kind_of_forwarded_address_becomes_a_local_route() -> None:
    md = metadata(
        nic(
            forwarded_ips=("10.128.0.100",),
            forwarded_ipv6s=("2600:1900:4000:1::5",),
            target_instance_ips=("10.128.0.200",),
            ip_aliases=("10.8.0.0/24",),
        )
    )
    assert plan_for(md, []).actions == (
        AddRoute(ours("10.128.0.100/32")),
        AddRoute(ours("2600:1900:4000:1::5/128")),
        AddRoute(ours("10.128.0.200/32")),
        AddRoute(ours("10.8.0.0/24")),
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (Config(IpForwarding=IpForwarding(target_instance_ips=False)), {"10.128.0.100/32", "10.8.0.0/24"}),
        (Config(IpForwarding=IpForwarding(ip_aliases=False)), {"10.128.0.100/32", "10.128.0.200/32"}),
    ],
)
def test_config_switches_leave_out_target_and_alias_routes(config: Config, expected: set[str]) -> None:
    md = metadata(
        nic(forwarded_ips=("10.128.0.100",), target_instance_ips=("10.128.0.200",), ip_aliases=("10.8.0.0/24",))
    )
    assert {a.route.destination for a in plan_for(md, [], config).actions} == expected


def test_switched_off_target_ips_are_removed_when_already_routed() -> None:
    md = metadata(nic(target_instance_ips=("10.128.0.200",)))
    config = Config(IpForwarding=IpForwarding(target_instance_ips=False))
    assert plan_for(md, [ours("10.128.0.200/32")], config).actions == (RemoveRoute(ours("10.128.0.200/32")),)


@pytest.mark.parametrize(
    "config",
    [
        Config(Daemons=Daemons(network_daemon=False)),
        Config(Daemons=Daemons(ip_forwarding_daemon=False)),
        Config(NetworkInterfaces=NetworkInterfaces(ip_forwarding=False)),
    ],
)
def test_each_switch_disables_routes(config: Config) -> None:
    assert routes.routes_enabled(config) is False


def test_routes_are_enabled_by_default() -> None:
    assert routes.routes_enabled(Config()) is True


def test_existing_routes_are_kept_and_dropped_ones_removed() -> None:
    md = metadata(nic(forwarded_ips=("10.128.0.100",), forwarded_ipv6s=("2600:1900::7",)))
    current = [ours("10.128.0.100/32"), ours("10.128.0.101/32"), ours("2600:1900::6/128")]
    assert plan_for(md, current).actions == (
        RemoveRoute(ours("10.128.0.101/32")),
        RemoveRoute(ours("2600:1900::6/128")),
        AddRoute(ours("2600:1900::7/128")),
    )


def test_routes_with_another_protocol_are_never_removed() -> None:
    foreign = [
        LocalRoute("10.128.0.2/32", "eth0", 2),  # the kernel's route for the NIC's own address
        LocalRoute("10.9.9.9/32", "eth0", 4),  # proto static, made by the admin
        LocalRoute("10.10.0.0/24", "eth0", 3),  # proto boot
    ]
    assert plan_for(metadata(nic()), foreign).actions == ()


def test_a_wanted_destination_someone_else_made_local_is_left_alone() -> None:
    md = metadata(nic(forwarded_ips=("10.9.9.9",)))
    planned = plan_for(md, [LocalRoute("10.9.9.9/32", "eth0", 4)])
    assert planned.actions == ()
    assert any("already local" in n for n in planned.notes)


def test_a_forwarded_ip_moving_between_nics_is_removed_before_it_is_added() -> None:
    md = metadata(nic(), nic(MAC1, forwarded_ips=("10.128.0.100",)))
    assert plan_for(md, [ours("10.128.0.100/32", "eth0")]).actions == (
        RemoveRoute(ours("10.128.0.100/32", "eth0")),
        AddRoute(ours("10.128.0.100/32", "eth1")),
    )


def test_nic_without_a_matching_interface_waits_with_a_note() -> None:
    md = metadata(nic("42:01:0a:99:00:09", forwarded_ips=("10.128.0.100",)))
    planned = plan_for(md, [])
    assert planned.actions == ()
    assert planned.notes == ("no interface with MAC 42:01:0a:99:00:09; 1 routes wait for it",)


def test_our_routes_on_interfaces_metadata_does_not_list_stay() -> None:
    assert plan_for(metadata(nic()), [ours("10.5.5.5/32", "eth1")]).actions == ()


@pytest.mark.parametrize(
    "bad",
    ["0.0.0.0/0", "::/0", "169.254.169.254", "169.254.0.0/16", "127.0.0.1", "224.0.0.1", "ff02::1",
     "fe80::1", "not-an-ip", "10.0.0.0/33", ""],
)
def test_addresses_that_must_not_become_local_are_refused_with_a_note(bad: str) -> None:
    md = metadata(nic(ip_aliases=(bad, "10.8.0.0/24")))
    planned = plan_for(md, [])
    assert planned.actions == (AddRoute(ours("10.8.0.0/24")),)
    assert len(planned.notes) == 1
    assert MAC0 in planned.notes[0]


def test_alias_with_host_bits_means_the_whole_range() -> None:
    assert routes.canonical_destination("10.8.0.1/24") == "10.8.0.0/24"
    assert routes.canonical_destination("2600:1900:0:0::1") == "2600:1900::1/128"


def test_duplicates_across_kinds_give_one_route() -> None:
    md = metadata(nic(forwarded_ips=("10.128.0.100",), target_instance_ips=("10.128.0.100",)))
    assert plan_for(md, []).actions == (AddRoute(ours("10.128.0.100/32")),)


def test_action_descriptions_read_like_ip_route() -> None:
    assert AddRoute(ours("10.8.0.0/24")).describe() == "add route local 10.8.0.0/24 dev eth0 table local proto 66"


# ---- property: apply the plan to a kernel-like fake, and the next plan is empty

# Unicast ranges metadata may carry (RFC 1918 and public), small enough to collide often.
v4 = st.sampled_from(["10.128.0.", "10.8.0.", "192.168.1.", "34.120.7."]).flatmap(
    lambda p: st.integers(1, 254).map(lambda n: ipaddress.ip_address(p + str(n)))
)
v6 = st.integers(1, 2**16 - 1).map(lambda n: ipaddress.ip_address(f"2600:1900:4000::{n:x}"))
networks = st.builds(
    lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)), v4, st.integers(8, 32)
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[InstanceMetadata, list[LocalRoute]]:
    fwd = draw(st.lists(v4.map(str), max_size=4))
    fwd6 = draw(st.lists(v6.map(str), max_size=3))
    aliases = draw(st.lists(networks, max_size=3))
    second = draw(st.lists(v4.map(str), max_size=2))
    md = metadata(nic(forwarded_ips=tuple(fwd), forwarded_ipv6s=tuple(fwd6), ip_aliases=tuple(aliases)),
                  nic(MAC1, forwarded_ips=tuple(second)))
    current = draw(
        st.lists(
            st.builds(
                LocalRoute,
                st.one_of(v4.map(lambda a: f"{a}/32"), v6.map(lambda a: f"{a}/128"), networks),
                st.sampled_from(["eth0", "eth1"]),
                st.sampled_from([PROTO, 2, 4]),
            ),
            max_size=6,
            unique_by=lambda r: r.destination,  # the kernel keys local routes by destination
        )
    )
    return md, current


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_plan_then_apply_converges_and_spares_foreign_routes(case: tuple[InstanceMetadata, list[LocalRoute]]) -> None:
    md, current = case
    kernel = FakeNetlink(LINKS, current)
    for action in plan_for(md, current).actions:
        if isinstance(action, AddRoute):
            kernel.add_local_route(action.route)
        else:
            kernel.delete_local_route(action.route)
    after = kernel.local_routes()
    assert plan_for(md, after).actions == ()
    assert [r for r in current if r.protocol != PROTO] == [r for r in after if r.protocol != PROTO]
    wanted = routes.desired(md, Config()).by_mac
    for mac, dev in ((MAC0, "eth0"), (MAC1, "eth1")):
        for dst in wanted[mac]:
            # Each wanted destination is local afterwards (ours, or someone else's route
            # that was there first, or ours on the other NIC when both NICs want it).
            assert any(r.destination == dst for r in after)
        assert all(r.destination in wanted[mac] for r in after if r.protocol == PROTO and r.interface == dev)


def test_fake_kernel_refuses_a_second_route_for_a_destination() -> None:
    kernel = FakeNetlink(LINKS, [LocalRoute("10.9.9.9/32", "eth0", 4)])
    with pytest.raises(Exception, match="EEXIST"):
        kernel.add_local_route(ours("10.9.9.9/32"))
    assert attrs.evolve(ours("10.9.9.9/32"), protocol=4) in kernel.local_routes()


@given(st.one_of(st.text(max_size=60), networks, v4.map(str), v6.map(str)))
def test_any_metadata_text_is_either_a_safe_destination_or_a_value_error(text: str) -> None:
    try:
        canonical = routes.canonical_destination(text)
    except ValueError:
        return
    network = ipaddress.ip_network(canonical)
    assert str(network) == canonical
    assert network.prefixlen > 0
    assert not (network.is_loopback or network.is_link_local or network.is_multicast)
    assert routes.canonical_destination(canonical) == canonical
