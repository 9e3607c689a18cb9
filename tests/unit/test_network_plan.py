"""Static networking against an in-memory kernel (FakeNetlink): what metadata wants, the
order of the steps, ownership, healing, and what is held."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestagent.adapters.local_filesystem import LocalFileSystem
from guestagent.adapters.passwd_users import PasswdFiles
from guestagent.domain import network as domain
from guestagent.domain.config import Config, Daemons, Network
from guestagent.domain.metadata import InstanceMetadata, NetworkInterface, Rejection, Route
from guestagent.domain.network import IfAddress, LinkState, StaticRoute
from guestagent.domain.nics import Link
from guestagent.ports.netlink import Netlink, NetlinkFailure
from guestagent.services.context import Context
from guestagent.services.network import DAD_RECHECK, HEAL_INTERVAL, NetworkSubsystem
from guestagent.services.reconcile import Scheduler
from tests.fake_netlink import FakeNetlink
from tests.fakes import FixedClock, RecordingRunner

MAC0, MAC1 = "42:01:0a:80:00:02", "42:01:0a:81:00:03"


@attrs.frozen
class Extras:
    network_skip: bool = False


def nic(
    addresses: tuple[str, ...] = ("10.0.0.2/24", "2001:db8::2/64"),
    gateway: str | None = "10.0.0.1",
    gateway6: str | None = "fe80::1",
    mac: str = MAC0,
    **kw: object,
) -> NetworkInterface:
    return NetworkInterface(mac=mac, static=True, addresses=addresses, gateway=gateway, gateway6=gateway6, **kw)  # type: ignore[arg-type]


def md(*nics: NetworkInterface, skip: bool = False, **kw: object) -> InstanceMetadata:
    return InstanceMetadata("digitalocean", "1", network_interfaces=nics, extras=Extras(skip), **kw)  # type: ignore[arg-type]


def kernel() -> FakeNetlink:
    return FakeNetlink([Link(1, "lo", "00:00:00:00:00:00", True), Link(2, "eth0", MAC0, False),
                        Link(3, "eth1", MAC1, True)])


def context(tmp_path: Path, netlink: Callable[[], Netlink] | None, *, config: Config | None = None,
            clock: FixedClock | None = None, dry_run: bool = False) -> Context:
    fs = LocalFileSystem(str(tmp_path))
    return Context(config=config or Config(), fs=fs, runner=RecordingRunner(), users=PasswdFiles(fs),
                   clock=clock or FixedClock(), netlink=netlink, root=str(tmp_path), dry_run=dry_run)


def record(tmp_path: Path) -> dict[str, list[str]]:
    path = tmp_path / domain.STATE_PATH.lstrip("/")
    return json.loads(path.read_text())["addresses"] if path.exists() else {}


def addresses_on(nl: FakeNetlink, interface: str) -> set[str]:
    return {a.address for a in nl.addresses() if a.interface == interface}


# ---- what metadata wants


def test_desired_reads_static_nics_only_and_canonicalises() -> None:
    want = domain.desired(md(
        nic(("10.0.0.2/24", "2001:DB8::0002/64"), mtu=1400,
            routes=(Route("10.8.0.1/16", "10.0.0.254"), Route("192.168.5.0/24"))),
        NetworkInterface(mac=MAC1, ip="10.1.0.5", prefix_length=24),  # DHCP: not ours
    ))
    assert want.held == ()
    (only,) = want.nics
    assert only.addresses == ("10.0.0.2/24", "2001:db8::2/64")
    assert only.mtu == 1400
    assert only.routes == (
        domain.WantedRoute("0.0.0.0/0", "10.0.0.1"),
        domain.WantedRoute("::/0", "fe80::1"),
        domain.WantedRoute("10.8.0.0/16", "10.0.0.254"),
        domain.WantedRoute("192.168.5.0/24", None),
    )


def test_desired_refuses_bad_values_with_notes_and_keeps_the_rest() -> None:
    want = domain.desired(md(nic(("10.0.0.2/24", "10.0.0.9", "127.0.0.2/8", "169.254.3.3/16", "bogus"),
                                 gateway="2001:db8::1", mtu=40,
                                 routes=(Route("224.0.0.0/4", None), Route("10.9.0.0/16", "2001:db8::1")))))
    (only,) = want.nics
    assert only.addresses == ("10.0.0.2/24",)
    assert only.mtu is None
    assert [r.destination for r in only.routes] == []
    text = "\n".join(want.notes)
    for needle in ("'10.0.0.9'", "loopback", "link-local", "'bogus'", "not an IPv4 address", "224.0.0.0/4",
                   "10.9.0.0/16", "MTU 40"):
        assert needle in text, needle


def test_mtu_below_ipv6_minimum_is_ignored_when_the_nic_has_ipv6() -> None:
    want = domain.desired(md(nic(mtu=1200)))
    assert want.nics[0].mtu is None
    assert any("IPv6 needs at least 1280" in n for n in want.notes)


def test_gateway_outside_every_prefix_is_onlink() -> None:
    want = domain.desired(md(nic(("203.0.113.7/32",), gateway="203.0.113.1", gateway6=None)))
    assert want.nics[0].routes == (domain.WantedRoute("0.0.0.0/0", "203.0.113.1", onlink=True),)


@pytest.mark.parametrize("bad", [
    nic(addresses="10.0.0.2/24"),  # type: ignore[arg-type]  # a string, not a list: never read per character
    nic(mtu="1500"),
    nic(gateway=5),  # type: ignore[arg-type]
    nic(routes=("10.0.0.0/8",)),
    nic(addresses=()),  # no address at all: would strip the NIC
    nic(addresses=("nonsense",)),
])
def test_wrong_typed_or_empty_nic_is_held_not_read_as_empty(bad: NetworkInterface) -> None:
    want = domain.desired(md(bad))
    assert want.nics == ()
    assert want.held == (MAC0,)


def test_held_nic_keeps_the_agents_addresses(tmp_path: Path) -> None:
    nl = kernel()
    sub = NetworkSubsystem()
    ctx = context(tmp_path, lambda: nl)
    assert sub.reconcile(ctx, md(nic())).ok
    nl.calls.clear()
    out = sub.reconcile(ctx, md(nic(addresses="10.0.0.3/24")))  # type: ignore[arg-type]
    assert out.ok
    assert nl.calls == []
    assert "10.0.0.2/24" in addresses_on(nl, "eth0")


def test_rejection_that_holds_network_keeps_everything(tmp_path: Path) -> None:
    nl = kernel()
    calls: list[str] = []

    def factory() -> Netlink:
        calls.append("opened")
        return nl

    held = attrs.evolve(md(nic()), rejections=(
        Rejection("interfaces", "is a string, not an object; network kept", concerns="network", holds=True),
    ))
    (outcome,) = Scheduler([NetworkSubsystem()]).run_due(context(tmp_path, factory), held)
    assert outcome.held and not outcome.actions
    assert calls == []


# ---- first pass, second pass


def test_first_pass_configures_the_nic_and_the_second_does_nothing(tmp_path: Path) -> None:
    nl = kernel()
    clock = FixedClock()
    ctx = context(tmp_path, lambda: nl, clock=clock)
    sub = NetworkSubsystem()
    out = sub.reconcile(ctx, md(nic(mtu=1400, routes=(Route("10.8.0.0/16", "10.0.0.254"),))))
    assert out.ok, out.failures
    assert nl.calls == [
        "mtu eth0 1400",
        "up eth0",
        "addr add 10.0.0.2/24 eth0",
        "addr add 2001:db8::2/64 eth0",
        "route add 10.8.0.0/16 via 10.0.0.254 dev eth0 proto 67",
        "route add default via 10.0.0.1 dev eth0 proto 67",
        "route add default (IPv6) via fe80::1 dev eth0 proto 67",
    ]
    assert record(tmp_path) == {MAC0: ["10.0.0.2/24", "2001:db8::2/64"]}
    assert out.wake_at == clock.now() + HEAL_INTERVAL
    nl.calls.clear()
    again = sub.reconcile(ctx, md(nic(mtu=1400, routes=(Route("10.8.0.0/16", "10.0.0.254"),))))
    assert again.actions == () and again.ok
    assert nl.calls == []
    assert nl.closed == 2


def test_dry_run_changes_nothing_and_records_nothing(tmp_path: Path) -> None:
    nl = kernel()
    out = NetworkSubsystem().reconcile(context(tmp_path, lambda: nl, dry_run=True), md(nic()))
    assert nl.calls == []
    assert "add address 10.0.0.2/24 to eth0" in out.actions
    assert record(tmp_path) == {}


def test_no_static_nic_opens_no_netlink_and_asks_for_no_wake(tmp_path: Path) -> None:
    def never() -> Netlink:
        raise AssertionError("netlink opened")

    dhcp = InstanceMetadata("ec2", "1", network_interfaces=(NetworkInterface(mac=MAC0, ip="10.0.0.2"),))
    out = NetworkSubsystem().reconcile(context(tmp_path, never), dhcp)
    assert out == NetworkSubsystem().reconcile(context(tmp_path, never), dhcp)
    assert out.actions == () and out.wake_at is None


# ---- changes never cut the VM off


class Sampling(FakeNetlink):
    """Records, after every change, the IPv4 addresses and default routes the kernel has."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.samples: list[tuple[frozenset[str], frozenset[str]]] = []

    def _sample(self) -> None:
        v4 = frozenset(a.address for a in self.addresses() if a.interface == "eth0" and a.version == 4)
        defaults = frozenset(r.describe() for r in self.main if r.destination == "0.0.0.0/0")
        self.samples.append((v4, defaults))

    def add_address(self, interface: str, address: str) -> None:
        super().add_address(interface, address)
        self._sample()

    def delete_address(self, interface: str, address: str) -> None:
        super().delete_address(interface, address)
        self._sample()

    def add_route(self, route: StaticRoute) -> None:
        super().add_route(route)
        self._sample()

    def delete_route(self, route: StaticRoute) -> None:
        super().delete_route(route)
        self._sample()

    def set_promote_secondaries(self, interface: str) -> None:
        super().set_promote_secondaries(interface)
        self._sample()


def sampling_kernel() -> Sampling:
    return Sampling([Link(2, "eth0", MAC0, True)])


def test_address_change_in_the_same_subnet_adds_first_and_keeps_the_new_one(tmp_path: Path) -> None:
    nl = sampling_kernel()
    ctx = context(tmp_path, lambda: nl)
    sub = NetworkSubsystem()
    assert sub.reconcile(ctx, md(nic(("10.0.0.2/24",), gateway6=None))).ok
    nl.calls.clear()
    nl.samples.clear()
    out = sub.reconcile(ctx, md(nic(("10.0.0.3/24",), gateway6=None)))
    assert out.ok, out.failures
    # The old address is the subnet's primary: without promote_secondaries the kernel would
    # take the new (secondary) one with it. The plan turns it on first.
    assert nl.calls == ["promote eth0", "addr add 10.0.0.3/24 eth0", "addr del 10.0.0.2/24 eth0"]
    assert all(v4 for v4, _ in nl.samples), nl.samples  # never without an IPv4 address
    assert all(defaults for _, defaults in nl.samples), nl.samples  # nor without a default route
    assert addresses_on(nl, "eth0") == {"10.0.0.3/24"}
    assert record(tmp_path) == {MAC0: ["10.0.0.3/24"]}
    assert sub.reconcile(ctx, md(nic(("10.0.0.3/24",), gateway6=None))).actions == ()


def test_without_the_promote_step_the_fake_kernel_would_cut_the_link_off() -> None:
    """The rule the plan guards against, shown on the fake: it behaves like Linux."""
    nl = sampling_kernel()
    nl.add_address("eth0", "10.0.0.2/24")
    nl.add_address("eth0", "10.0.0.3/24")
    assert [a.secondary for a in nl.addresses()] == [False, True]
    nl.delete_address("eth0", "10.0.0.2/24")
    assert addresses_on(nl, "eth0") == set()


def test_default_route_switch_adds_the_new_one_before_removing_the_old(tmp_path: Path) -> None:
    nl = sampling_kernel()
    ctx = context(tmp_path, lambda: nl)
    sub = NetworkSubsystem()
    assert sub.reconcile(ctx, md(nic(("10.0.0.2/24",), gateway="10.0.0.1", gateway6=None))).ok
    nl.calls.clear()
    nl.samples.clear()
    assert sub.reconcile(ctx, md(nic(("10.0.0.2/24",), gateway="10.0.0.254", gateway6=None))).ok
    assert nl.calls == [
        "route add default via 10.0.0.254 dev eth0 proto 67",
        "route del default via 10.0.0.1 dev eth0 proto 67",
    ]
    assert all(defaults for _, defaults in nl.samples)


def test_a_refused_replacement_keeps_the_old_address_and_route(tmp_path: Path) -> None:
    nl = sampling_kernel()
    ctx = context(tmp_path, lambda: nl)
    sub = NetworkSubsystem()
    assert sub.reconcile(ctx, md(nic(("10.0.0.2/24",), gateway6=None))).ok
    nl.fail_on.update({"10.1.0.2/24", "10.1.0.1"})
    out = sub.reconcile(ctx, md(nic(("10.1.0.2/24",), gateway="10.1.0.1", gateway6=None)))
    assert not out.ok
    assert addresses_on(nl, "eth0") == {"10.0.0.2/24"}
    assert [r.gateway for r in nl.main] == ["10.0.0.1"]
    assert record(tmp_path) == {MAC0: ["10.0.0.2/24"]}  # the refused address is not the agent's


def test_new_ipv6_address_must_pass_dad_before_the_old_goes(tmp_path: Path) -> None:
    nl = kernel()
    nl.dad = True
    clock = FixedClock()
    ctx = context(tmp_path, lambda: nl, clock=clock)
    sub = NetworkSubsystem()
    sub.reconcile(ctx, md(nic(("10.0.0.2/24", "2001:db8::2/64"))))
    nl.finish_dad()
    nl.calls.clear()
    out = sub.reconcile(ctx, md(nic(("10.0.0.2/24", "2001:db8::3/64"))))
    assert nl.calls == ["addr add 2001:db8::3/64 eth0"]
    assert out.wake_at == clock.now() + DAD_RECHECK
    assert sub.reconcile(ctx, md(nic(("10.0.0.2/24", "2001:db8::3/64")))).actions == ()  # still tentative
    nl.finish_dad()
    out = sub.reconcile(ctx, md(nic(("10.0.0.2/24", "2001:db8::3/64"))))
    assert out.actions == ("remove address 2001:db8::2/64 from eth0",)
    assert out.wake_at == clock.now() + HEAL_INTERVAL


def test_prefix_change_ipv4_adds_first_ipv6_swaps(tmp_path: Path) -> None:
    nl = kernel()
    ctx = context(tmp_path, lambda: nl)
    sub = NetworkSubsystem()
    sub.reconcile(ctx, md(nic(("10.0.0.2/24", "2001:db8::2/64"))))
    out = sub.reconcile(ctx, md(nic(("10.0.0.2/16", "2001:db8::2/56"))))
    assert out.ok, out.failures
    # IPv4: Linux holds the address under both prefixes for a moment, so nothing goes away.
    assert out.actions == (
        "add address 10.0.0.2/16 to eth0",
        "remove address 10.0.0.2/24 from eth0",
        "change address 2001:db8::2/64 to 2001:db8::2/56 on eth0",
    )
    assert StaticRoute("0.0.0.0/0", "eth0", "10.0.0.1") in nl.main
    assert record(tmp_path) == {MAC0: ["10.0.0.2/16", "2001:db8::2/56"]}
    assert sub.reconcile(ctx, md(nic(("10.0.0.2/16", "2001:db8::2/56")))).actions == ()


# ---- ownership


def test_only_what_the_agent_added_is_removed(tmp_path: Path) -> None:
    nl = kernel()
    nl.add_address("eth1", "192.168.9.9/24")  # someone else's, on a NIC metadata lists
    nl.main.append(StaticRoute("10.99.0.0/16", "eth0", None, protocol=4))
    nl.add_link(Link(2, "eth0", MAC0, True))
    nl.add_address("eth0", "10.0.0.50/24")  # the image's own, before the agent
    ctx = context(tmp_path, lambda: nl)
    sub = NetworkSubsystem()
    wide = md(nic(), nic(("192.168.9.20/24",), gateway=None, gateway6=None, mac=MAC1))
    assert sub.reconcile(ctx, wide).ok
    assert record(tmp_path) == {MAC0: ["10.0.0.2/24", "2001:db8::2/64"], MAC1: ["192.168.9.20/24"]}
    out = sub.reconcile(ctx, md(nic(("10.0.0.7/24",), gateway=None, gateway6=None),
                                nic(("192.168.9.21/24",), gateway=None, gateway6=None, mac=MAC1)))
    assert out.ok, out.failures
    assert addresses_on(nl, "eth0") == {"10.0.0.50/24", "10.0.0.7/24"}
    assert addresses_on(nl, "eth1") == {"192.168.9.9/24", "192.168.9.21/24"}
    assert nl.main == [StaticRoute("10.99.0.0/16", "eth0", None, protocol=4)]


def test_an_address_someone_else_put_there_first_is_never_the_agents(tmp_path: Path) -> None:
    nl = kernel()
    nl.add_address("eth0", "10.0.0.2/24")
    ctx = context(tmp_path, lambda: nl)
    sub = NetworkSubsystem()
    sub.reconcile(ctx, md(nic()))
    assert record(tmp_path) == {MAC0: ["2001:db8::2/64"]}
    sub.reconcile(ctx, md(nic(("10.0.0.3/24", "2001:db8::2/64"))))
    assert "10.0.0.2/24" in addresses_on(nl, "eth0")


def test_a_foreign_route_for_the_same_destination_stays_in_charge(tmp_path: Path) -> None:
    nl = kernel()
    nl.add_link(Link(2, "eth0", MAC0, True))
    nl.add_address("eth0", "10.0.0.9/24")
    nl.main.append(StaticRoute("0.0.0.0/0", "eth0", "10.0.0.1", protocol=16))  # a DHCP client's
    out = NetworkSubsystem().reconcile(context(tmp_path, lambda: nl), md(nic(gateway6=None)))
    assert out.ok
    assert [r.protocol for r in nl.main if r.destination == "0.0.0.0/0"] == [16]


def test_a_crash_between_recording_and_adding_is_pruned_next_pass(tmp_path: Path) -> None:
    state = tmp_path / domain.STATE_PATH.lstrip("/")
    state.parent.mkdir(parents=True)
    # Recorded ahead, then killed before the kernel got it (and 10.0.0.77 never arrived).
    state.write_text(json.dumps({"version": 1, "addresses": {MAC0: ["10.0.0.77/24"]}}))
    nl = kernel()
    nl.add_link(Link(2, "eth0", MAC0, True))
    sub = NetworkSubsystem()
    assert sub.reconcile(context(tmp_path, lambda: nl), md(nic())).ok
    assert record(tmp_path) == {MAC0: ["10.0.0.2/24", "2001:db8::2/64"]}


def test_an_unreadable_record_owns_nothing(tmp_path: Path) -> None:
    state = tmp_path / domain.STATE_PATH.lstrip("/")
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    nl = kernel()
    nl.add_link(Link(2, "eth0", MAC0, True))
    nl.add_address("eth0", "10.0.0.40/24")
    out = NetworkSubsystem().reconcile(context(tmp_path, lambda: nl), md(nic()))
    assert out.ok
    assert "10.0.0.40/24" in addresses_on(nl, "eth0")


# ---- healing


def test_flushed_routes_and_addresses_come_back_on_the_next_wake(tmp_path: Path) -> None:
    nl = kernel()
    clock = FixedClock()
    ctx = context(tmp_path, lambda: nl, clock=clock)
    scheduler = Scheduler([NetworkSubsystem()])
    snapshot = md(nic(routes=(Route("10.8.0.0/16", "10.0.0.254"),)))
    scheduler.run_due(ctx, snapshot)
    wanted = set(nl.main)
    nl.main.clear()  # a DHCP client restart, `ip route flush`
    assert scheduler.run_due(ctx, snapshot) == []  # nothing changed in metadata: not due yet
    clock.advance(HEAL_INTERVAL.total_seconds())
    (outcome,) = scheduler.run_due(ctx, snapshot)
    assert outcome.ok
    assert set(nl.main) == wanted
    assert [a for a in outcome.actions if a.startswith("add route")] and not [
        a for a in outcome.actions if "address" in a
    ]
    nl.delete_address("eth0", "10.0.0.2/24")  # flushed: its routes go with it, as in Linux
    clock.advance(HEAL_INTERVAL.total_seconds())
    (outcome,) = scheduler.run_due(ctx, snapshot)
    assert "add address 10.0.0.2/24 to eth0" in outcome.actions
    assert set(nl.main) == wanted


def test_a_nic_that_is_not_there_yet_waits(tmp_path: Path) -> None:
    nl = FakeNetlink([Link(1, "lo", "00:00:00:00:00:00", True)])
    clock = FixedClock()
    out = NetworkSubsystem().reconcile(context(tmp_path, lambda: nl, clock=clock), md(nic()))
    assert out.ok and out.actions == ()
    assert out.wake_at is not None and out.wake_at - clock.now() <= timedelta(seconds=60)


def test_netlink_failure_is_reported(tmp_path: Path) -> None:
    def broken() -> Netlink:
        raise NetlinkFailure("cannot open network namespace 'gone'")

    out = NetworkSubsystem().reconcile(context(tmp_path, broken), md(nic()))
    assert out.failures == ("cannot open network namespace 'gone'",)


# ---- switches


@pytest.mark.parametrize(("config", "skip"), [
    (Config(Network=Network(enabled=False)), False),
    (Config(Daemons=Daemons(network_daemon=False)), False),
    (Config(), True),  # the CPIO device's config.toml [network] skip = true
])
def test_switched_off(tmp_path: Path, config: Config, skip: bool) -> None:
    assert NetworkSubsystem().enabled(context(tmp_path, kernel, config=config), md(nic(), skip=skip)) is False


def test_on_by_default_even_without_netlink(tmp_path: Path) -> None:
    # A sandbox root without --netns still gets its DNS files.
    assert NetworkSubsystem().enabled(context(tmp_path, None), md(nic())) is True


# ---- the plan as a pure function


def test_plan_leaves_nics_metadata_does_not_list_alone() -> None:
    links = [LinkState(2, "eth0", MAC0, True, 1500), LinkState(3, "eth1", MAC1, True, 1500)]
    addresses = [IfAddress("eth1", "10.5.0.2/24")]
    routes = [StaticRoute("0.0.0.0/0", "eth1", "10.5.0.1")]
    planned = domain.plan(domain.desired(md(nic(gateway6=None))), links, addresses, routes,
                          {MAC1: frozenset({"10.5.0.2/24"})})
    assert not [a for a in planned.actions if isinstance(a, domain.RemoveAddress | domain.RemoveRoute)]
    assert planned.owned == {MAC1: frozenset({"10.5.0.2/24"})}


# ---- any change, any order: the invariants hold

V4_POOL = ("10.0.0.2/24", "10.0.0.3/24", "10.0.0.4/24", "10.0.0.2/16", "10.0.1.5/24")
V6_POOL = ("2001:db8::2/64", "2001:db8::3/64", "2001:db8:1::9/64")
GW_POOL = (None, "10.0.0.1", "10.0.0.254")

addresses_st = st.tuples(
    st.lists(st.sampled_from(V4_POOL), min_size=1, max_size=3),
    st.lists(st.sampled_from(V6_POOL), max_size=2),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=addresses_st, after=addresses_st, gw_before=st.sampled_from(GW_POOL),
       gw_after=st.sampled_from(GW_POOL), foreign=st.booleans())
def test_any_change_converges_keeps_others_and_never_empties_the_link(
    tmp_path_factory: pytest.TempPathFactory, before: tuple[list[str], list[str]],
    after: tuple[list[str], list[str]], gw_before: str | None, gw_after: str | None, foreign: bool,
) -> None:
    tmp_path = tmp_path_factory.mktemp("net")
    nl = sampling_kernel()
    if foreign:
        nl.add_address("eth0", "10.0.0.99/24")  # the image's own, same subnet as several
    ctx = context(tmp_path, lambda: nl)
    sub = NetworkSubsystem()
    first = md(nic(tuple(before[0] + before[1]), gateway=gw_before, gateway6=None))
    second = md(nic(tuple(after[0] + after[1]), gateway=gw_after, gateway6=None))
    assert sub.reconcile(ctx, first).ok
    nl.samples.clear()
    for _ in range(3):  # new IPv6 addresses first, the old ones a pass later (DAD)
        out = sub.reconcile(ctx, second)
        assert out.ok, out.failures
    want = set(domain.desired(second).nics[0].addresses)
    have = addresses_on(nl, "eth0")
    assert want <= have
    assert have - want <= {"10.0.0.99/24"}  # every old address of the agent's went
    if foreign:
        assert "10.0.0.99/24" in have
    assert all(v4 for v4, _ in nl.samples), nl.samples
    if gw_before and gw_after:
        assert all(defaults for _, defaults in nl.samples), nl.samples
    assert sub.reconcile(ctx, second).actions == ()
    assert set(record(tmp_path).get(MAC0, ())) == want - {"10.0.0.99/24"}
